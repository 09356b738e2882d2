"""Hostile and clumsy DICOM peers over raw sockets, for the connection-limit tests."""

from __future__ import annotations

import socket
import struct
import subprocess
import time

from tests.conftest import require_binary

HUGE = 0xFFFFFFF0


def connect(port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    """A TCP connection from `source` (any 127.x.y.z is this machine: a second 'peer address')."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(timeout)
    try:
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    sock.settimeout(None)
    return sock


def declare_and_stream(port: int, total: int, pdu_type: int = 0x01, source: str = "127.0.0.1") -> tuple[int, float]:
    """Declare a PDU of HUGE bytes and stream up to `total` bytes of it: (bytes sent, seconds until the
    node closed the connection, or until all was sent)."""
    sock = connect(port, source)
    chunk = b"\0" * 65536
    sent = 0
    started = time.monotonic()
    try:
        sock.sendall(struct.pack(">BBL", pdu_type, 0, HUGE))
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    finally:
        sock.close()
    return sent, time.monotonic() - started


def closed_by_peer(sock: socket.socket, within: float, since: float | None = None) -> float | None:
    """Seconds from `since` (default: now) until the node closes `sock` (EOF or reset; anything it sent
    first is read and dropped), or None if it is still open `within` seconds after `since`."""
    started = time.monotonic() if since is None else since
    deadline = started + within
    while (remaining := deadline - time.monotonic()) > -1:  # once more after the deadline: closed meanwhile?
        sock.settimeout(max(remaining, 0.01))
        try:
            if not sock.recv(65536):
                return time.monotonic() - started
        except TimeoutError:
            return None
        except OSError:
            return time.monotonic() - started
    return None


def trickle(sock: socket.socket, data: bytes, interval: float, within: float) -> float | None:
    """Send `data` one byte every `interval` s until the node closes the connection: seconds until then,
    or None if it is still open after `within` seconds."""
    started = time.monotonic()
    sock.settimeout(interval)
    for byte in data:
        if time.monotonic() - started > within:
            return None
        try:
            sock.sendall(bytes([byte]))
            if not sock.recv(65536):
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return None


def echoscu(port: int, calling: str = "PACS", timeout: int = 10) -> subprocess.CompletedProcess[str]:
    """dcmtk's echoscu, once (it does not retry)."""
    return subprocess.run([require_binary("echoscu"), "-to", str(timeout), "-ta", str(timeout), "-aet", calling,
                           "-aec", "DICOM_AI", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=timeout * 3, check=False)
