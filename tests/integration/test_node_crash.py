"""The node as a process, over real sockets, killed at awkward moments: nothing lost, nothing twice.

The PACS here is a second real DICOM SCP (our own receiver with its own database), so every
C-STORE the node makes is counted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_ai.receive.scp import start_scp
from dicom_ai.store import Spool, Stores
from tests.conftest import copy_as_new_study, free_port, sample, wait_for

CLI = Path(sys.executable).parent / "dicom-ai"


class Pacs:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.store = Stores.open(root / "pacs.sqlite")
        self.server = start_scp("PACS", "127.0.0.1", self.port, 0, Spool(root / "spool"), self.store.studies)

    def received(self, study_uid: str) -> dict[str, int]:
        return self.store.reports.receive_counts(study_uid)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    running = Pacs(tmp_path / "pacs")
    yield running
    running.server.shutdown()
    running.store.close()


def start_node(home: Path, port: int, pacs: Pacs, stable_after: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DICOM_AI_HOME": str(home), "DICOM_AI_HOST": "127.0.0.1", "DICOM_AI_PORT": str(port),
           "DICOM_AI_PACS": f"PACS@127.0.0.1:{pacs.port}", "DICOM_AI_STABLE_AFTER": str(stable_after), "DICOM_AI_HTTP_PORT": "0"}
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "node.log", "ab")
    process = subprocess.Popen([str(CLI), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while b"dicom-ai ready" not in (home / "node.log").read_bytes().split(b"dicom-ai stopped")[-1]:
        assert process.poll() is None and time.monotonic() < deadline, (home / "node.log").read_text()
        time.sleep(0.1)
    return process


def send(port: int, files: list[Path]) -> None:
    done = subprocess.run([str(CLI), "send", f"DICOM_AI@127.0.0.1:{port}", *map(str, files)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def wait_until(check: Callable[[], Any], timeout: float, log: Path) -> None:
    wait_for("the node", check, timeout, lambda: log.read_text()[-3000:])


def pending(home: Path, study: str) -> int:
    store = Stores.open(home / "dicom-ai.sqlite")
    try:
        rows = [r for r in store.reports.studies() if r.study_instance_uid == study]
        return 1 if not rows or rows[0].state != "done" else rows[0].pending_sends
    finally:
        store.close()


def test_kill_after_acknowledge_then_restart_sends_results_once(tmp_path: Path, pacs: Pacs) -> None:
    home, port = tmp_path / "node", free_port()
    study = generate_uid()
    files = [copy_as_new_study(sample("RG1_UNCR.dcm"), tmp_path / "in", StudyInstanceUID=study)]
    # A long quiet time: the node is killed while the study is still assembling.
    node = start_node(home, port, pacs, stable_after=30)
    send(port, files)
    node.send_signal(signal.SIGKILL)
    node.wait()
    store = Stores.open(home / "dicom-ai.sqlite")  # acknowledged means durable: row and file are there
    [instance] = store.studies.instances_of(study)
    assert instance.path.exists() and dcmread(instance.path).SOPInstanceUID == dcmread(files[0]).SOPInstanceUID
    store.close()

    node = start_node(home, port, pacs, stable_after=0.5)
    try:
        wait_until(lambda: len(pacs.received(study)) >= 2 and not pending(home, study), 120, home / "node.log")
        # Kill again once results went out (SR + heatmap SC), restart, and check nothing is sent twice.
        # (A kill between a C-STORE response and its bookkeeping re-sends the same SOP Instance UID,
        # which a PACS stores once: at-least-once with deterministic UIDs.)
        node.send_signal(signal.SIGKILL)
        node.wait()
        node = start_node(home, port, pacs, stable_after=0.5)
        time.sleep(3)
        counts = pacs.received(study)
        assert set(counts.values()) == {1}, counts
        kinds = {dcmread(p).Modality for p in (pacs.store.studies.instances_of(study)[i].path for i in range(len(counts)))}
        assert "SR" in kinds
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=30)


def test_kill_during_processing_reprocesses_without_duplicates(tmp_path: Path, pacs: Pacs) -> None:
    home, port = tmp_path / "node", free_port()
    study = generate_uid()
    files = [copy_as_new_study(sample("RG1_UNCR.dcm"), tmp_path / "in", StudyInstanceUID=study)]
    node = start_node(home, port, pacs, stable_after=0.2)
    send(port, files)
    log = home / "node.log"
    wait_until(lambda: b"complete (quiet" in log.read_bytes(), 30, log)
    node.send_signal(signal.SIGKILL)  # most likely mid-inference
    node.wait()
    node = start_node(home, port, pacs, stable_after=0.2)
    try:
        wait_until(lambda: len(pacs.received(study)) >= 2 and not pending(home, study), 120, log)
        time.sleep(2)
        assert set(pacs.received(study).values()) == {1}
        store = Stores.open(home / "dicom-ai.sqlite")
        [row] = store.reports.studies()
        assert row.state == "done" and row.pending_sends == 0
        store.close()
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=30)
