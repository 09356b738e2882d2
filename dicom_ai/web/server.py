"""A threading HTTP server that idle or many connections cannot exhaust (threads, file descriptors).

http.server's ThreadingHTTPServer starts a thread per connection and waits on each without a time
limit: a thousand idle connections held a thousand threads and descriptors, until the DICOM port
could not accept any more. Here every connection gets IDLE_TIMEOUT seconds per read and write, one
address may hold MAX_PER_ADDRESS connections and all together MAX_CONNECTIONS; a connection over a
cap is answered 503 at once and closed. Small on purpose: the page is to become an ASGI app.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 10.0  # seconds a connection may take to send its request or take our answer
MAX_CONNECTIONS = 64
MAX_PER_ADDRESS = 8
_BUSY_TEXT = b"too many connections to this page at once: try again in a moment\n"
BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(_BUSY_TEXT), _BUSY_TEXT))


class BoundedHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with the caps of the module docstring; handlers must set `timeout`."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 max_connections: int = MAX_CONNECTIONS, max_per_address: int = MAX_PER_ADDRESS) -> None:
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()
        super().__init__(address, handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        address = str(client_address[0])
        with self._lock:
            admitted = sum(self._open.values()) < self.max_connections and self._open[address] < self.max_per_address
            if admitted:
                self._open[address] += 1
        if not admitted:
            log.debug("web: refused a connection from %s (too many open)", address)
            try:
                request.settimeout(0.5)
                request.sendall(BUSY)
            except OSError:
                pass
        return admitted

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(client_address)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(client_address)

    def open_connections(self) -> int:
        with self._lock:
            return sum(self._open.values())

    def _release(self, client_address: Any) -> None:
        address = str(client_address[0])
        with self._lock:
            self._open[address] -= 1
            if self._open[address] <= 0:
                del self._open[address]

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("web: connection from %s ended with an error", client_address[0], exc_info=True)
