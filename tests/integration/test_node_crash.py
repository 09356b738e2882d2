"""The node as a process, over real sockets, killed at awkward moments: nothing lost, nothing twice.

The PACS here is a second real DICOM SCP (our own receiver with its own database), so every
C-STORE the node makes is counted (tests/integration/node_process.py).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.conftest import copy_as_new_study, sample
from tests.integration.node_process import CLI, NodeProcess, Pacs, settled


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    running = Pacs(tmp_path / "pacs")
    yield running
    running.stop()


def send(port: int, files: list[Path]) -> None:
    done = subprocess.run([str(CLI), "send", f"DICOM_AI@127.0.0.1:{port}", *map(str, files)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_kill_after_acknowledge_then_restart_sends_results_once(tmp_path: Path, pacs: Pacs) -> None:
    study = generate_uid()
    files = [copy_as_new_study(sample("RG1_UNCR.dcm"), tmp_path / "in", StudyInstanceUID=study)]
    # A long quiet time: the node is killed while the study is still assembling.
    node = NodeProcess(tmp_path / "node", pacs, stable_after=30).start()
    send(node.port, files)
    node.kill()
    store = node.store()  # acknowledged means durable: row and file are there
    [instance] = store.studies.instances_of(study)
    assert instance.path.exists() and dcmread(instance.path).SOPInstanceUID == dcmread(files[0]).SOPInstanceUID
    store.close()

    node.env["DICOM_AI_STABLE_AFTER"] = "0.5"
    node.start()
    try:
        node.wait_until("results sent", lambda: len(pacs.received(study)) >= 2 and settled(node, [study]), 120)
        # Kill again once results went out (SR + heatmap SC), restart, and check nothing is sent twice.
        node.kill()
        node.start()
        time.sleep(3)
        counts = pacs.received(study)
        assert set(counts.values()) == {1}, counts
        kinds = {dcmread(instance.path).Modality for instance in pacs.store.studies.instances_of(study)}
        assert "SR" in kinds
    finally:
        node.stop()


def test_kill_during_processing_reprocesses_without_duplicates(tmp_path: Path, pacs: Pacs) -> None:
    study = generate_uid()
    files = [copy_as_new_study(sample("RG1_UNCR.dcm"), tmp_path / "in", StudyInstanceUID=study)]
    node = NodeProcess(tmp_path / "node", pacs, stable_after=0.2).start()
    send(node.port, files)
    node.wait_until("the study complete", lambda: "complete (quiet" in node.log(), 30)
    node.kill()  # most likely mid-inference
    node.start()
    try:
        node.wait_until("results sent", lambda: len(pacs.received(study)) >= 2 and settled(node, [study]), 120)
        time.sleep(2)
        assert set(pacs.received(study).values()) == {1}
        store = node.store()
        [row] = store.reports.studies()
        assert row.state == "done" and row.pending_sends == 0
        store.close()
    finally:
        node.stop()
