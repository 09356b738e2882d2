"""The inbound MLLP server (setting hl7_listen): each framed message in, one ACK out.

Built on the hl7 package's asyncio MLLP streams, in a thread of its own so a slow RIS never holds
the scheduler. Bounded like the DICOM SCP: at most MAX_CONNECTIONS connections at once, a message
at most MAX_MESSAGE_BYTES long, and a connection that sends no complete message for IDLE_TIMEOUT
seconds is closed. The handler (node.py wires validation.receive_report) turns the message text
into the ACK; it runs in a worker thread, since it writes to the database.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from hl7.mllp import InvalidBlockError, start_hl7_server
from hl7.mllp.streams import HL7StreamReader, HL7StreamWriter

from dicom_ai.feedback.hl7_report import REJECT, ack, control_id_of

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 16
MAX_MESSAGE_BYTES = 1 << 20  # a radiology report is a few kB; a megabyte is someone else's problem
IDLE_TIMEOUT = 30.0
START_TIMEOUT = 10.0

Handler = Callable[[str], str]


class Hl7Listener:
    """An MLLP server on host:port answering each message with `handle(text)`; start() then stop()."""

    def __init__(self, host: str, port: int, handle: Handler, *, max_connections: int = MAX_CONNECTIONS,
                 idle_timeout: float = IDLE_TIMEOUT, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.host, self.port = host, port
        self.handle = handle
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.max_message_bytes = max_message_bytes
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hl7-listener", daemon=True)
        self._workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hl7-handler")
        self._server: asyncio.Server | None = None
        self._connections = 0

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the port the system chose when 0 was asked for)."""
        if self._server is None or not self._server.sockets:
            return self.host, self.port
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Listen; raises OSError when the address is taken or cannot be bound."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start_hl7_server(self._client, self.host, self.port, limit=self.max_message_bytes), self._loop)
        try:
            self._server = future.result(START_TIMEOUT)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_TIMEOUT)
            self._workers.shutdown(wait=False)
            raise
        log.info("HL7 listener on %s:%d (MLLP): final reports in, ACKs out", *self.address)

    def stop(self) -> None:
        if self._server is not None:
            server = self._server

            async def close() -> None:
                server.close()
                await server.wait_closed()

            try:
                asyncio.run_coroutine_threadsafe(close(), self._loop).result(START_TIMEOUT)
            except Exception as exc:  # stopping must not fail the node's stop
                log.warning("HL7 listener did not close cleanly: %s", exc)
            self._server = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_TIMEOUT)
        self._workers.shutdown(wait=True)

    async def _client(self, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self._connections >= self.max_connections:
            log.warning("HL7 connection from %s refused: %d connections already open", peer, self._connections)
            writer.close()
            return
        self._connections += 1
        try:
            await self._serve(reader, writer, peer)
        finally:
            self._connections -= 1
            writer.close()

    async def _serve(self, reader: HL7StreamReader, writer: HL7StreamWriter, peer: object) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                block = await asyncio.wait_for(reader.readblock(), self.idle_timeout)
            except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                return  # closed by the peer, or silent for idle_timeout
            except InvalidBlockError:
                log.warning("HL7 from %s: a block without the MLLP start character; answered AR and closed", peer)
                await self._answer(writer, ack("", REJECT, "not an MLLP frame (no start block character)"))
                return
            except ValueError:
                log.warning("HL7 from %s: a message over %d bytes; answered AR and closed", peer, self.max_message_bytes)
                await self._answer(writer, ack("", REJECT, f"message over {self.max_message_bytes} bytes"))
                return
            text = _decode(bytes(block))
            try:
                answer = await loop.run_in_executor(self._workers, self.handle, text)
            except Exception as exc:  # the handler must answer; a bug gets an AE, not a dropped connection
                log.exception("HL7 from %s: the report could not be handled", peer)
                answer = ack(control_id_of(text), "AE", f"internal error: {type(exc).__name__}")
            await self._answer(writer, answer)

    @staticmethod
    async def _answer(writer: HL7StreamWriter, answer: str) -> None:
        writer.writeblock(answer.encode("utf-8"))
        try:
            await writer.drain()
        except ConnectionError:
            pass


def _decode(block: bytes) -> str:
    """UTF-8 (what MSH-18 "UNICODE UTF-8" senders and our own RIS carrier use), else Latin-1 (8859/1)."""
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        return block.decode("latin-1")
