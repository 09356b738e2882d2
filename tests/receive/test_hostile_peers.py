"""Peers that try to starve the node, against the real SCP in its own process and real dcmtk senders:
a declared PDU length cannot make it buffer, a flood of connections from one address or of connect/close
cycles does not keep a real sender out."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import copy_as_new_study, free_port, require_binary, sample
from tests.receive.peers import connect, declare_and_stream, echoscu
from tests.scp_child import ScpChild

ATTACK_BYTES = 150 * 2**20  # per hostile connection; three at once: 450 MB would be buffered without a ceiling
MAX_GROWTH_MB = 50


@pytest.fixture
def child(tmp_path: Path) -> Iterator[ScpChild]:
    running = ScpChild(tmp_path / "node", free_port())
    yield running
    running.stop()


def _storescu(port: int, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("storescu"), "-to", "10", "-ta", "10", "-aet", "PACS", "-aec", "DICOM_AI",
                           "127.0.0.1", str(port), str(path)], capture_output=True, text=True, timeout=60, check=False)


def test_a_huge_declared_pdu_is_refused_and_memory_stays_flat(child: ScpChild, tmp_path: Path) -> None:
    before = child.memory_mb()
    during_file = copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in")
    with ThreadPoolExecutor(4) as pool:
        attacks = [pool.submit(declare_and_stream, child.port, ATTACK_BYTES) for _ in range(3)]
        during = pool.submit(_storescu, child.port, during_file)
        outcomes = [attack.result(timeout=120) for attack in attacks]
        sender = during.result(timeout=120)
    growth = child.memory_mb() - before
    print(f"PDU attack: peak RSS {before:.0f} -> {child.memory_mb():.0f} MB (+{growth:.0f}); "
          f"sent before close: {[round(sent / 2**20, 1) for sent, _ in outcomes]} MB in "
          f"{[round(seconds, 2) for _, seconds in outcomes]} s")
    assert all(sent < ATTACK_BYTES for sent, _ in outcomes), "a hostile connection was not closed"
    assert growth < MAX_GROWTH_MB, f"peak memory grew {growth:.0f} MB under the attack"
    assert sender.returncode == 0, sender.stderr
    after = _storescu(child.port, copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in"))
    assert after.returncode == 0, after.stderr
    warnings = [line for line in child.log().splitlines() if "declared an A-ASSOCIATE-RQ of 4294967280 bytes" in line]
    assert warnings and "over the limit of 262144" in warnings[0] and "127.0.0.1" in warnings[0]
    assert "Traceback" not in child.log()


def test_a_flood_of_silent_connections_does_not_keep_a_real_sender_out(child: ScpChild, tmp_path: Path) -> None:
    flood = []
    for _ in range(100):
        try:
            flood.append(connect(child.port, source="127.0.0.2"))
        except OSError:
            break
    time.sleep(0.5)  # let the node take them all
    started = time.monotonic()
    sent = _storescu(child.port, copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in"))
    waited = time.monotonic() - started
    echo = echoscu(child.port)
    print(f"flood of {len(flood)} silent connections: a real storescu took {waited:.2f} s")
    for sock in flood:
        sock.close()
    assert sent.returncode == 0, sent.stderr  # at the first attempt: dcmtk does not retry
    assert echo.returncode == 0, echo.stderr


def test_connect_close_cycles_leave_no_slot_taken(child: ScpChild) -> None:
    started = time.monotonic()
    for _ in range(200):
        connect(child.port, source="127.0.0.2").close()
    cycles = time.monotonic() - started
    started = time.monotonic()
    echo = echoscu(child.port)
    print(f"200 connect/close cycles in {cycles:.1f} s; then echoscu answered in {time.monotonic() - started:.2f} s")
    assert echo.returncode == 0, echo.stderr
