"""The SCP's association server: pynetdicom's, with admission at accept and bounded reads per connection.

What it changes (pynetdicom's `AE.make_server` takes a server class for this):
- each accepted connection is admitted or refused by address before a thread is started
  (receive/limits.py), and counted until its association thread has ended;
- the PDU reader of receive/pdu_guard.py bounds what and how long a peer may send;
- a TLS handshake runs in the connection's own thread within negotiation_timeout (pynetdicom does it
  in the accept loop, where one silent TLS peer would stop every other connection);
- a listen backlog of LISTEN_BACKLOG instead of 5, so bursts of connects are not dropped and retried;
- a shorter idle sleep in each association's DUL loop (DUL_POLL_S).
Our own associations (results, C-FIND) use pynetdicom's client side and are not affected.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import evt
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from dicom_ai.receive.limits import Admission, ConnectionLimits, ThrottledLog, Ticket
from dicom_ai.receive.pdu_guard import PduReader

if TYPE_CHECKING:
    from pynetdicom import AE
    from pynetdicom.events import Event

log = logging.getLogger("dicom_ai.receive.scp")

LISTEN_BACKLOG = 128
# pynetdicom's DUL thread sleeps this long whenever it found nothing to do (its default: 1 ms). Each
# C-STORE waits for that loop twice (the last PDU in, the response out): 0.1 ms measured +21% on CT
# instances (docs/benchmarks.md); the cost is a busier idle loop while an association is open.
DUL_POLL_S = 0.0001


class GuardedRequestHandler(RequestHandler):
    """One accepted connection, in its own thread until its association has ended."""

    server: GuardedServer

    def handle(self) -> None:
        server = self.server
        opened = time.monotonic()
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        reader: PduReader | None = None
        try:
            if isinstance(self.request, ssl.SSLSocket) and not self._handshake(peer):
                return
            assoc = self._create_association()
            assoc.dul._run_loop_delay = DUL_POLL_S
            reader = PduReader(assoc, self.request, peer, server.limits, server.max_pdu, opened,
                               lambda kind, message: server.warnings.warning(self.client_address[0], kind, message))
            assert assoc.dul.socket is not None
            assoc.dul.socket.recv = reader.recv  # type: ignore[method-assign]
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            assoc.join()
        finally:
            server.release(self.request)
        if reader is not None and not reader.associate_received and reader.ended_by is None \
                and time.monotonic() - opened >= server.limits.negotiation_timeout:
            server.warnings.warning(self.client_address[0], "silent",
                                    f"peer {peer} sent no A-ASSOCIATE-RQ within {server.limits.negotiation_timeout:g} s "
                                    f"(negotiation_timeout): connection closed")

    def _handshake(self, peer: str) -> bool:
        sock = self.request
        try:
            sock.settimeout(self.server.limits.negotiation_timeout)
            sock.do_handshake()
            sock.settimeout(None)
            return True
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.server.warnings.warning(self.client_address[0], "tls",
                                         f"TLS handshake with {peer} failed: {exc}: connection closed")
            return False


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server with connection admission (see the module docstring)."""

    daemon_threads = True  # connection threads live as long as their association; never wait for them on close
    block_on_close = False
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, ae: AE, address: tuple[str, int], ae_title: str, contexts: list[Any],
                 ssl_context: ssl.SSLContext | None = None, evt_handlers: list[Any] | None = None, *,
                 admission: Admission, max_pdu: int) -> None:
        self.admission = admission
        self.limits: ConnectionLimits = admission.limits
        self.max_pdu = max_pdu
        self.warnings = ThrottledLog(log)
        self._tickets: dict[socket.socket, Ticket] = {}
        self._tickets_lock = threading.Lock()
        super().__init__(ae, address, ae_title, contexts, ssl_context, evt_handlers=evt_handlers,
                         request_handler=GuardedRequestHandler)
        self.bind(evt.EVT_ESTABLISHED, self._learn)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        if self.socket is None:
            raise OSError("the DICOM server socket is closed")
        client, address = self.socket.accept()
        if self.ssl_context:  # the handshake happens in the connection's thread (GuardedRequestHandler)
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        address = str(client_address[0])
        outcome = self.admission.admit(address)
        if isinstance(outcome, str):
            self.warnings.warning(address, "refused", f"refused a connection from {address}: {outcome}")
            return False
        with self._tickets_lock:
            self._tickets[request] = outcome
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread: the connection is closed by the caller, give its slot back
            self.release(request)
            raise

    def release(self, request: Any) -> None:
        with self._tickets_lock:
            ticket = self._tickets.pop(request, None)
        if ticket is not None:
            self.admission.release(ticket)
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("unexpected error on the DICOM connection from %s", client_address[0])

    def _learn(self, event: Event) -> None:
        """EVT_ESTABLISHED: a trusted calling AE title teaches us its address (reserved slots, no per-address caps)."""
        requestor = event.assoc.requestor
        calling = requestor.ae_title.strip()
        if self.admission.learn(str(requestor.address), calling):
            log.info("%s is a known sender from now on (calling AE %s): it may use the reserved DICOM slots",
                     requestor.address, calling)


class SharedPortServer(GuardedServer):
    """The guarded server on a port that other processes listen on too (SO_REUSEPORT): the kernel spreads
    the incoming connections over them (the node's `receivers` setting)."""

    def server_bind(self) -> None:  # pynetdicom's server_bind ignores socketserver's allow_reuse_port
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def serve(ae: AE, address: tuple[str, int], evt_handlers: list[Any], tls: ssl.SSLContext | None,
          admission: Admission, max_pdu: int, shared_port: bool = False) -> GuardedServer:
    """Start the guarded server in a background thread, as AE.start_server(block=False) does."""
    server_class = SharedPortServer if shared_port else GuardedServer
    server = cast(GuardedServer, ae.make_server(address, evt_handlers=evt_handlers, ssl_context=tls,
                                                server_class=server_class, admission=admission, max_pdu=max_pdu))
    threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True).start()
    ae._servers.append(server)  # as start_server does: server.shutdown() removes it
    return server
