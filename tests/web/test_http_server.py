"""The node's HTTP server (uvicorn + web/server.py's connection guard) against slow and greedy peers over
real loopback sockets: a connection that keeps it waiting is closed after the idle timeout, whatever it
trickles, while a slow but steady upload is served; a connection over the caps gets 503 at once."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_ai.store import Spool, Stores
from dicom_ai.web.app import start_web
from dicom_ai.web.server import MAX_PER_ADDRESS, WebServer
from dicom_ai.web.stow import StowReceive
from tests.conftest import copy_as_new_study, sample
from tests.receive.peers import closed_by_peer, connect, trickle
from tests.web.test_stow_receive import _CONTENT_TYPE, _multipart, _part10
from tests.web.console_support import context

IDLE = 1.0


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[WebServer, Spool, Stores]]:
    store, spool = Stores.open(tmp_path / "db.sqlite"), Spool(tmp_path / "spool")
    server = start_web("127.0.0.1", 0, context(store), idle_timeout=IDLE,
                       stow_receive=StowReceive(spool, store.studies, 10**9))
    yield server, spool, store
    server.stop()
    store.close()


def test_request_headers_trickled_byte_by_byte_are_cut_off_after_the_idle_timeout(node: tuple[WebServer, Spool, Stores]) -> None:
    server, _, _ = node
    sock = connect(server.port)
    seconds = trickle(sock, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200, interval=0.2, within=10)
    sock.close()
    assert seconds is not None and seconds < IDLE + 2, f"still open after {seconds} s of trickling"


def test_an_upload_that_stalls_is_closed_and_its_partial_file_removed(node: tuple[WebServer, Spool, Stores],
                                                                      tmp_path: Path) -> None:
    server, spool, store = node
    body = _multipart([_part10(dcmread(copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in")))])
    sock = connect(server.port)
    sock.sendall(f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {_CONTENT_TYPE}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:20000])
    assert closed_by_peer(sock, within=IDLE + 3) is not None
    sock.close()
    deadline = time.monotonic() + 5
    while list(spool.incoming.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(spool.incoming.iterdir()) == [] and store.reports.studies() == []


def test_a_slow_but_steady_upload_is_served(node: tuple[WebServer, Spool, Stores], tmp_path: Path) -> None:
    server, _, store = node
    body = _multipart([_part10(dcmread(copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in")))])
    sock = connect(server.port)
    sock.sendall(f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {_CONTENT_TYPE}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode())
    pieces = [body[i:i + len(body) // 5 + 1] for i in range(0, len(body), len(body) // 5 + 1)]
    for piece in pieces:  # 5 pieces, each after IDLE / 2: longer than IDLE in all
        time.sleep(IDLE / 2)
        sock.sendall(piece)
    sock.settimeout(10)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    sock.close()
    assert len(store.reports.studies()) == 1


def test_a_connection_over_the_per_address_cap_gets_503_at_once(node: tuple[WebServer, Spool, Stores]) -> None:
    server, _, _ = node
    held = [connect(server.port, source="127.0.0.3") for _ in range(MAX_PER_ADDRESS)]
    time.sleep(0.2)
    extra = connect(server.port, source="127.0.0.3")
    extra.settimeout(5)
    assert extra.recv(65536).startswith(b"HTTP/1.0 503 Service Unavailable")
    other = socket.create_connection(("127.0.0.1", server.port), timeout=5)  # another address is served
    other.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert other.recv(65536).startswith(b"HTTP/1.1 200 ")
    for sock in (*held, extra, other):
        sock.close()
