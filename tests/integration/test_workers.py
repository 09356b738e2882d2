"""The node as processes (dicom_ai/procs/): a torch-free receiver, several workers that never process a
study twice, and a clean stop of every process. The PACS counts every C-STORE (node_process.Pacs)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_ai.procs.supervisor import role_pids
from dicom_ai.train.phantom_dicom import write_brain_mr_study
from tests.conftest import require_binary, wait_for
from tests.integration.node_process import NodeProcess, Pacs, current_result_uids, done_events, settled, storescu

RECEIVER_RSS_LIMIT_MB = 150
STUDIES = 10


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    running = Pacs(tmp_path / "pacs")
    yield running
    running.stop()


def _status(pid: int, key: str) -> int:
    """A /proc/PID/status value in kB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for pid {pid}")


def _maps_torch(pid: int) -> bool:
    """Whether torch's shared library is mapped into the process (what `import torch` does)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def test_two_workers_share_the_studies_and_none_is_processed_twice(tmp_path: Path, pacs: Pacs) -> None:
    require_binary("storescu")
    studies = [write_brain_mr_study(tmp_path / f"study{n}", seed=100 + n, finding=n % 2 == 0, slices=3, size=(96, 96))
               for n in range(STUDIES)]
    uids = [str(dcmread(files[0]).StudyInstanceUID) for files in studies]
    node = NodeProcess(tmp_path / "node", pacs, stable_after=0.5, DICOM_AI_WORKERS="2").start()
    try:
        assert node.process is not None
        roles = role_pids(node.process.pid)
        assert sorted(roles) == ["receiver", "sender", "worker"] and len(roles["worker"]) == 2, roles
        for files in studies:
            assert storescu(node.port, files)
        node.wait_until("every study done and sent", lambda: settled(node, uids)
                        and all(len(pacs.received(uid)) >= 4 for uid in uids), 240)
        store = node.store()
        try:
            for uid in uids:
                assert done_events(store, uid) == 1, uid
                assert set(pacs.received(uid)) == current_result_uids(store, uid)
                assert set(pacs.received(uid).values()) == {1}, pacs.received(uid)  # each result sent once
            marks = ", ".join("?" * len(uids))
            claimants = {row["claimed_by"].split(":")[0] for row in store.database.query(
                f"select claimed_by from studies where study_instance_uid in ({marks})", uids)}
        finally:
            store.close()
        assert claimants == {"worker-1", "worker-2"}  # both took studies

        receiver = roles["receiver"][0]
        assert not _maps_torch(receiver)  # no torch in the receiving process ...
        assert all(_maps_torch(pid) for pid in roles["worker"])  # ... and the check does see it where it is
        assert _status(receiver, "VmHWM") / 1024 < RECEIVER_RSS_LIMIT_MB
        # The workers yield the CPU to the receiver (worker_nice, default 19); the others keep the node's priority.
        assert all(os.getpriority(os.PRIO_PROCESS, pid) == 19
                   for pid in roles["worker"])
        assert os.getpriority(os.PRIO_PROCESS, receiver) == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        node.stop()
    assert node.process.returncode == 0, node.log()[-3000:]
    for pids in roles.values():  # SIGTERM stopped every role process too
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid
    assert "Traceback" not in node.log()


def test_a_killed_worker_is_replaced_and_its_study_processed_once(tmp_path: Path, pacs: Pacs) -> None:
    require_binary("storescu")
    files = write_brain_mr_study(tmp_path / "study", seed=7, finding=True, slices=3, size=(96, 96))
    uid = str(dcmread(files[0]).StudyInstanceUID)
    node = NodeProcess(tmp_path / "node", pacs, stable_after=0.5, DICOM_AI_WORKERS="2").start()
    try:
        assert node.process is not None
        store = node.store()
        try:
            def holder() -> str | None:
                rows = store.database.query("select state, claimed_by from studies where study_instance_uid = ?", [uid])
                return rows[0]["claimed_by"] if rows and rows[0]["state"] == "processing" else None

            # Freeze every worker as soon as the study is claimed, so it is caught mid-study, then kill its holder.
            workers = role_pids(node.process.pid)["worker"]
            assert storescu(node.port, files)
            claimant = wait_for("the study claimed", holder, 60, lambda: node.log()[-3000:], poll=0.002)
            for pid in workers:
                os.kill(pid, signal.SIGSTOP)
            assert holder() == claimant, "the worker finished the study before it was frozen: a faster poll is needed"
            victim = next(pid for pid in workers if claimant.encode() in Path(f"/proc/{pid}/cmdline").read_bytes())
            os.kill(victim, signal.SIGKILL)
            for pid in workers:
                if pid != victim:
                    os.kill(pid, signal.SIGCONT)
            node.wait_until("the study done and sent", lambda: settled(node, [uid]) and len(pacs.received(uid)) >= 4, 180)
            assert done_events(store, uid) == 1
            released = [e for e in store.reports.events(uid, limit=100) if e["kind"] == "study_released"]
            results = current_result_uids(store, uid)
        finally:
            store.close()
        assert len(released) == 1 and claimant in released[0]["detail"]  # the dead worker's study went back
        assert set(pacs.received(uid)) == results and set(pacs.received(uid).values()) == {1}
        node.wait_until("a new worker", lambda: len(role_pids(node.process.pid).get("worker", [])) == 2, 120)
        assert victim not in role_pids(node.process.pid)["worker"]
    finally:
        node.stop()
    assert "died (signal SIGKILL)" in node.log() and "Traceback" not in node.log()
