"""The node's HTTP server: uvicorn in a thread of its own, serving one ASGI app, that idle, slow or
many connections cannot exhaust (descriptors, memory, the DICOM port beside it).

uvicorn (h11) bounds what it parses (h11_max_incomplete_event_size) and closes a kept-alive
connection after `timeout_keep_alive`, but it lets a connection that never sends a request stay
open for ever, and its `limit_concurrency` only answers 503 once a request has arrived: a thousand
silent connections would still hold a thousand descriptors. So the connections are counted where
they are accepted (`BoundedH11Protocol.connection_made`): one address holds at most
`max_per_address` and all together `max_connections`; a connection over a cap is answered 503 at
once and closed. And a connection is closed when it keeps us waiting for `idle_timeout` seconds:
for its request line and headers (from its opening or its previous answer; trickling bytes does not
extend it), between two pieces of a request body, or while it does not take our answer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from typing import ClassVar

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 10.0  # seconds a connection may keep us waiting for its request, its body or taking our answer
MAX_CONNECTIONS = 64
MAX_PER_ADDRESS = 8
MAX_HEADER_BYTES = 16 * 1024  # request line and headers: h11's incomplete-event limit (431/400 beyond)
START_TIMEOUT = 10.0  # seconds uvicorn gets to start serving
STOP_GRACE = 5.0  # seconds requests in progress get to finish at stop
_BUSY_TEXT = b"too many connections to this page at once: try again in a moment\n"
BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(_BUSY_TEXT), _BUSY_TEXT))


class ConnectionCaps:
    """The open connections of one server, per address; used on its event loop only (no lock)."""

    def __init__(self, max_connections: int, max_per_address: int, idle_timeout: float) -> None:
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.idle_timeout = idle_timeout
        self.open: Counter[str] = Counter()
        self.total = 0  # read from other threads (an int: no torn read)

    def admit(self, address: str) -> bool:
        if self.total >= self.max_connections or self.open[address] >= self.max_per_address:
            return False
        self.open[address] += 1
        self.total += 1
        return True

    def release(self, address: str) -> None:
        self.total -= 1
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]


class _Flow(FlowControl):
    """uvicorn's flow control, telling the protocol when reading resumes: time the app was behind
    (reading paused) is not time the peer kept us waiting."""

    def __init__(self, transport: asyncio.Transport, protocol: BoundedH11Protocol) -> None:
        super().__init__(transport)
        self._protocol = protocol

    def resume_reading(self) -> None:
        if self.read_paused:
            self._protocol._last_read = time.monotonic()
        super().resume_reading()


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the caps and the idle timeout of the module docstring."""

    caps: ClassVar[ConnectionCaps]  # set on the subclass each server makes (see `protocol_class`)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if peer else "?"
        self._admitted = self.caps.admit(self._address)
        if not self._admitted:
            log.debug("web: refused a connection from %s (too many open)", self._address)
            transport.write(BUSY)
            transport.close()
            return
        super().connection_made(transport)
        self.flow = _Flow(transport, self)
        self._waiting_since = self._last_read = time.monotonic()  # for a request; for body data
        self._write_stalled_since: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._watch(self.caps.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self.caps.release(self._address)
        if self._watchdog is not None:
            self._watchdog.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        self._last_read = time.monotonic()
        super().data_received(data)

    def on_response_complete(self) -> None:
        self._waiting_since = time.monotonic()  # the next request's headers have idle_timeout from now
        super().on_response_complete()

    def pause_writing(self) -> None:
        self._write_stalled_since = time.monotonic()
        super().pause_writing()

    def resume_writing(self) -> None:
        self._write_stalled_since = None
        super().resume_writing()

    def _stalled_since(self) -> float | None:
        """Since when the peer keeps us waiting, or None while we are the ones working."""
        if self._write_stalled_since is not None:
            return self._write_stalled_since
        if self.conn.their_state is h11.IDLE:
            return self._waiting_since
        if self.conn.their_state is h11.SEND_BODY:
            return None if self.flow.read_paused else self._last_read  # paused: the app is behind, not the peer
        return None

    def _watch(self, delay: float) -> None:
        self._watchdog = self.loop.call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        if self.transport.is_closing():
            return
        since = self._stalled_since()
        idle = self.caps.idle_timeout
        waited = 0.0 if since is None else time.monotonic() - since
        if waited >= idle:
            log.debug("web: closed a connection from %s idle for %.0f s", self._address, waited)
            self.transport.close()
            return
        self._watch(max(idle - waited, 0.05))


def protocol_class(caps: ConnectionCaps) -> type[BoundedH11Protocol]:
    """The protocol class of one server: its connections share `caps`."""
    return type("ServerH11Protocol", (BoundedH11Protocol,), {"caps": caps})


class WebServer:
    """One ASGI app served by uvicorn on a thread of its own; `port`, `open_connections()`, `stop()`."""

    def __init__(self, app: ASGIApp, host: str, port: int, idle_timeout: float = IDLE_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS, max_per_address: int = MAX_PER_ADDRESS,
                 tls: ssl.SSLContext | None = None) -> None:
        self.caps = ConnectionCaps(max_connections, max_per_address, idle_timeout)
        # Bound here, so a port in use fails start-up with an OSError naming it, and port 0 gets its number.
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError:
            self._socket.close()
            raise
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            app, http=protocol_class(self.caps), ws="none", lifespan="off", log_config=None, log_level="warning",
            access_log=False, server_header=False, timeout_keep_alive=max(int(idle_timeout), 1),
            timeout_graceful_shutdown=int(STOP_GRACE), h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            backlog=MAX_CONNECTIONS * 2)
        if tls is not None:  # HTTPS: uvicorn wraps the sockets it is given with config.ssl once loaded
            config.load()
            config.ssl = tls
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="web", daemon=True)
        self._failure: BaseException | None = None

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # noqa: BLE001: reported by start() or logged; a thread cannot raise
            self._failure = exc
            log.error("the web server stopped: %s", exc)

    def start(self) -> WebServer:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if self._failure is not None or not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the web server on port {self.port} did not start: {self._failure or 'timed out'}")
            time.sleep(0.01)
        return self

    def open_connections(self) -> int:
        return self.caps.total

    def stop(self) -> None:
        """Stop taking connections, give requests in progress STOP_GRACE seconds, and wait for the thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(STOP_GRACE + 5)
        self._socket.close()
