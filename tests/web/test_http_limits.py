"""Idle HTTP connections cannot exhaust the node: they are closed after the timeout, one address holds
a few, and the page and the DICOM port keep answering (over real loopback sockets)."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_ai.store import Stores
from dicom_ai.web.server import MAX_PER_ADDRESS
from dicom_ai.web.app import start_web
from tests.conftest import free_port, wait_for
from tests.receive.peers import closed_by_peer, connect, echoscu
from tests.scp_child import ScpChild
from tests.web.console_support import context

IDLE = 300


def _open_idle(port: int) -> list:  # type: ignore[type-arg]
    """IDLE connections that never send a request (fewer if the node stops taking them)."""
    opened = []
    for _ in range(IDLE):
        try:
            opened.append(connect(port, source="127.0.0.2", timeout=3))
        except OSError:
            break
    return opened


def _page(port: int) -> int:
    return int(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).status)


@pytest.fixture
def child(tmp_path: Path) -> Iterator[ScpChild]:
    # A descriptor limit below the number of idle connections: before the caps they took every descriptor.
    running = ScpChild(tmp_path / "node", free_port(), "--http-port", str(free_port()), "--nofile", "256")
    yield running
    running.stop()


def test_idle_connections_are_capped_and_closed_after_the_timeout(tmp_path: Path) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    server = start_web("127.0.0.1", 0, context(store), idle_timeout=1.0)
    port = server.port
    threads = threading.active_count()
    try:
        opened = time.monotonic()
        idle = _open_idle(port)
        assert _page(port) == 200  # another address is served at once
        grew = threading.active_count() - threads
        print(f"{IDLE} idle connections: {grew} more threads, {server.open_connections()} connections held")
        assert grew <= MAX_PER_ADDRESS + 2
        closed = [closed_by_peer(sock, within=15, since=opened) for sock in idle]
        assert all(seconds is not None for seconds in closed), f"{closed.count(None)} idle connections still open"
        wait_for("no connection held", lambda: server.open_connections() == 0, timeout=5)
        for sock in idle:
            sock.close()
    finally:
        server.stop()
        store.close()


def test_idle_page_connections_leave_the_dicom_port_working(child: ScpChild) -> None:
    http_port = int(child.process.args[child.process.args.index("--http-port") + 1])  # type: ignore[union-attr]
    idle = _open_idle(http_port)
    time.sleep(1)  # let the node take them all
    files = child.open_files()
    echo = echoscu(child.port)
    print(f"{len(idle)} idle page connections: the node holds {files} descriptors (limit 256)")
    try:
        assert echo.returncode == 0, echo.stderr
        assert _page(http_port) == 200
    finally:
        for sock in idle:
            sock.close()
