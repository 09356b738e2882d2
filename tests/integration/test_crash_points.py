"""The node killed (SIGKILL, as a power cut would) at each boundary between two durable steps, and
restarted: no acknowledged instance is lost, every study is done exactly once, and the PACS gets each
result under the same UID, a repeat only where the PACS had acknowledged an object the node had not yet
recorded as sent (at most one per crash)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_ai.crashpoints import POINTS
from dicom_ai.train.phantom_dicom import write_brain_mr_study
from tests.conftest import require_binary
from tests.integration.node_process import NodeProcess, Pacs, current_result_uids, done_events, settled, storescu

# The crash happens at this hit of the point. For the receive points, in the second file (so the
# first one was acknowledged before the crash: one write each for preamble, prefix, file meta and
# data); for send.after_ack at the second acknowledgement, so a node that marked a whole batch at
# its end (instead of each object as it is acknowledged) would send the first object twice too.
NTH = {"receive.mid_transfer": 6, "receive.after_rename": 2, "receive.after_commit": 2, "send.after_ack": 2}


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    running = Pacs(tmp_path / "pacs")
    yield running
    running.stop()


@pytest.mark.parametrize("point", POINTS)
def test_a_crash_at_each_boundary_loses_nothing_and_sends_each_result_once(point: str, tmp_path: Path,
                                                                            pacs: Pacs) -> None:
    require_binary("storescu")
    files = write_brain_mr_study(tmp_path / "study", seed=11, finding=True, slices=3, size=(96, 96))
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    node = NodeProcess(tmp_path / "node", pacs, stable_after=1.0)
    node.start(crash_at=f"{point}@{NTH.get(point, 1)}")
    acknowledged = []
    for path in files:  # one association per file: we know exactly which ones were acknowledged
        if not storescu(node.port, [path]):
            break
        acknowledged.append(path)
    node.wait_until(f"the node to crash at {point}", node.died, 60)
    node.kill()

    store = node.store()
    try:  # acknowledged means durable: each row and file survived the crash
        for path in acknowledged:
            sop = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            held = store.studies.stored_copy(sop)
            assert held is not None and held.path.exists(), f"acknowledged {sop} was lost at {point}"
    finally:
        store.close()

    node.start()
    try:
        assert storescu(node.port, files)  # the sender retries what failed (repeats are counted, not re-opened)
        node.wait_until("the study to be done and sent", lambda: settled(node, [study_uid])
                        and len(pacs.received(study_uid)) >= 4, 120)
        store = node.store()
        try:
            assert len(store.studies.instances_of(study_uid)) == 3
            assert done_events(store, study_uid) == 1
            results = current_result_uids(store, study_uid)
        finally:
            store.close()
        counts = pacs.received(study_uid)
        assert set(counts) == results  # SR + 3 heatmaps, always under the same UIDs
        repeats = sum(n - 1 for n in counts.values())
        print(f"{point}: {len(acknowledged)} of 3 acknowledged before the crash, {repeats} repeated delivery(ies)")
        if point.startswith("receive."):
            assert len(acknowledged) == 1  # the crash came in the second file
        assert repeats == (1 if point == "send.after_ack" else 0), counts
        assert "Traceback" not in node.log()
    finally:
        node.stop()


def test_a_study_cut_in_half_by_a_crash_waits_for_its_rest(tmp_path: Path, pacs: Pacs) -> None:
    """The time the node was down is not quiet time: after a restart the study waits stable_after again,
    so the sender's retry completes it and it gets one SR on all its images, not one on each half."""
    require_binary("storescu")
    files = write_brain_mr_study(tmp_path / "study", seed=12, finding=False, slices=4, size=(96, 96))
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    node = NodeProcess(tmp_path / "node", pacs, stable_after=4.0)
    node.start()
    assert storescu(node.port, files[:2])
    node.kill()  # the node dies while the study is arriving...
    time.sleep(5.0)  # ...and stays down longer than stable_after
    node.start()
    try:
        time.sleep(2.0)  # a PACS retries after a while, well within stable_after
        assert storescu(node.port, files[2:])  # the sender delivers the rest once the node is back
        node.wait_until("the study to be done and sent", lambda: settled(node, [study_uid]), 120)
        store = node.store()
        try:
            assert done_events(store, study_uid) == 1
            assert "quiet_clock_restarted" in {e["kind"] for e in store.reports.events(study_uid, limit=1000)}
        finally:
            store.close()
        srs = [uid for uid in pacs.received(study_uid)
               if dcmread(pacs.store.studies.stored_copy(uid).path, stop_before_pixels=True).Modality == "SR"]
        assert len(srs) == 1
        sr = dcmread(pacs.store.studies.stored_copy(srs[0]).path)
        assert len(sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
                   .ReferencedSOPSequence) == 4  # all four images, not the first half
    finally:
        node.stop()
