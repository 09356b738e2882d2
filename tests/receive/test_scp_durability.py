"""What the SCP keeps when things go wrong around it: a locked database, the same SOP Instance UID
with other content or in another study, new folders after a power cut, a transfer cut off mid-way."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE

from dicom_ai.receive import status
from dicom_ai.receive.scp import start_scp
from dicom_ai.store import Spool, Stores
from dicom_ai.store import spool as spool_module
from tests.conftest import copy_as_new_study, free_port, sample


class Node:
    def __init__(self, root: Path, busy_timeout: float = 30.0, max_pdu: int = 131072) -> None:
        self.port = free_port()
        self.store = Stores.open(root / "db.sqlite", busy_timeout=busy_timeout)
        self.spool = Spool(root / "spool")
        self.server = start_scp("DICOM_AI", "127.0.0.1", self.port, max_pdu, self.spool, self.store.studies)

    def stop(self) -> None:
        self.server.shutdown()
        self.store.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    running = Node(tmp_path / "node")
    yield running
    running.stop()


def _send(port: int, dataset: Dataset) -> int:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(dataset.SOPClassUID, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_AI")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(dataset).Status)
    finally:
        assoc.release()


class WriteLock:
    """Another writer (a CLI command, say) holding the database's write lock for a while."""

    def __init__(self, database: Path, hold: float) -> None:
        self.conn = sqlite3.connect(str(database), isolation_level=None, check_same_thread=False)
        self.conn.execute("BEGIN IMMEDIATE")
        self.timer = threading.Timer(hold, self.release)
        self.timer.start()

    def release(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


def _series_files(spool: Spool, ds: Dataset) -> list[Path]:
    return sorted((spool.studies / ds.StudyInstanceUID / ds.SeriesInstanceUID).iterdir())


def test_sqlite_runs_with_wal_and_synchronous_full(tmp_path: Path) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    assert store.database.pragma("synchronous") == 2  # FULL: a commit is on disk before Success leaves
    assert store.database.pragma("journal_mode") == "wal"
    store.close()


def test_a_writer_holding_the_lock_makes_the_scp_wait_not_refuse(node: Node, tmp_path: Path) -> None:
    sent = dcmread(copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in"))
    lock = WriteLock(node.store.path, hold=1.5)
    try:
        assert _send(node.port, sent) == status.SUCCESS  # waited for the lock (busy timeout), then committed
    finally:
        lock.timer.cancel()
        lock.release()
    assert node.store.reports.receive_counts(sent.StudyInstanceUID) == {sent.SOPInstanceUID: 1}


def test_a_failed_commit_keeps_the_acknowledged_copy_intact(tmp_path: Path) -> None:
    node = Node(tmp_path / "node", busy_timeout=0.5)
    try:
        first = dcmread(copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in"))
        assert _send(node.port, first) == status.SUCCESS
        [kept] = _series_files(node.spool, first)
        acknowledged = kept.read_bytes()
        changed = dcmread(kept)
        changed.PixelData = bytes(len(changed.PixelData))  # same SOP Instance UID, other pixels
        lock = WriteLock(node.store.path, hold=3.0)
        try:
            assert _send(node.port, changed) == status.OUT_OF_RESOURCES  # lock held past the busy timeout
        finally:
            lock.timer.cancel()
            lock.release()
        assert _series_files(node.spool, first) == [kept]  # the new copy is gone, the old one untouched
        assert kept.read_bytes() == acknowledged
        held = node.store.studies.stored_copy(first.SOPInstanceUID)
        assert held is not None and held.path == kept
        assert list(node.spool.incoming.iterdir()) == []
    finally:
        node.stop()


def test_same_uid_with_other_content_replaces_and_reopens_with_a_new_revision(node: Node, tmp_path: Path) -> None:
    first = dcmread(copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in"))
    assert _send(node.port, first) == status.SUCCESS
    assert _send(node.port, first) == status.SUCCESS  # byte-identical repeat: counted, nothing changes
    assert node.store.studies.study_revision(first.StudyInstanceUID) == 0
    node.store.studies.complete_quiet_studies(time.time() + 1)
    changed = dcmread(_series_files(node.spool, first)[0])
    changed.PixelData = bytes(len(changed.PixelData))
    assert _send(node.port, changed) == status.SUCCESS
    [kept] = _series_files(node.spool, first)  # one file: the newest copy
    assert dcmread(kept).PixelData == changed.PixelData
    assert node.store.studies.stored_copy(first.SOPInstanceUID).path == kept
    assert node.store.studies.study_revision(first.StudyInstanceUID) == 1  # results on it get new UIDs
    [row] = node.store.reports.studies()
    assert (row.state, row.instance_count) == ("receiving", 1)  # re-opened, still one instance
    assert node.store.studies.trash() == []
    kinds = [e["kind"] for e in node.store.reports.events(first.StudyInstanceUID)]
    assert "instance_replaced" in kinds and kinds.count("instance_received_again") == 1


def test_an_instance_moved_to_another_study_leaves_the_old_one_reprocessable(node: Node, tmp_path: Path) -> None:
    first = dcmread(copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in"))
    other = dcmread(copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in", StudyInstanceUID=first.StudyInstanceUID))
    assert _send(node.port, first) == status.SUCCESS
    assert _send(node.port, other) == status.SUCCESS
    node.store.studies.complete_quiet_studies(time.time() + 1)
    moved = dcmread(_series_files(node.spool, first)[0])
    moved.StudyInstanceUID = generate_uid()  # the PACS split the study: same instance, new study
    assert _send(node.port, moved) == status.SUCCESS
    rows = {row.study_instance_uid: row for row in node.store.reports.studies()}
    assert rows[first.StudyInstanceUID].instance_count == 1 and rows[first.StudyInstanceUID].state == "receiving"
    assert rows[moved.StudyInstanceUID].instance_count == 1
    assert node.store.studies.study_revision(first.StudyInstanceUID) == 1
    held = node.store.studies.stored_copy(first.SOPInstanceUID)
    assert held is not None and held.study_instance_uid == moved.StudyInstanceUID and held.path.exists()
    assert not (node.spool.studies / first.StudyInstanceUID / first.SeriesInstanceUID / f"{first.SOPInstanceUID}.dcm").exists()
    assert [i.sop_instance_uid for i in node.store.studies.instances_of(first.StudyInstanceUID)] == [other.SOPInstanceUID]


def test_new_study_and_series_folders_are_fsynced(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    real = spool_module.fsync_directory
    monkeypatch.setattr(spool_module, "fsync_directory", lambda path: (synced.append(Path(path)), real(path)))
    sent = dcmread(copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in"))
    assert _send(node.port, sent) == status.SUCCESS
    study = node.spool.studies / sent.StudyInstanceUID
    # each new folder's entry is durable in its parent, and the file's entry in the series folder
    assert {node.spool.studies, study, study / sent.SeriesInstanceUID} <= set(synced)


def test_a_transfer_cut_off_midway_leaves_no_partial_file(tmp_path: Path) -> None:
    node = Node(tmp_path / "node", max_pdu=16384)  # many PDUs: the transfer takes a while
    try:
        big = dcmread(copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in"))
        big.PixelData = bytes(64 * 1024 * 1024)  # 64 MB of pixels, sent in 16 KB PDUs
        big.Rows, big.Columns = 4096, 8192
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(big.SOPClassUID, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_AI")
        assert assoc.is_established
        sender = threading.Thread(target=lambda: assoc.send_c_store(big), daemon=True)
        sender.start()
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size > 1_000_000 for p in node.spool.incoming.iterdir()):
            assert time.monotonic() < deadline, "the transfer never started"
            time.sleep(0.05)
        assoc.abort()  # the sender goes away mid-dataset
        sender.join(timeout=30)
        deadline = time.monotonic() + 10
        while list(node.spool.incoming.iterdir()):
            assert time.monotonic() < deadline, f"partial upload left: {list(node.spool.incoming.iterdir())}"
            time.sleep(0.05)
        assert node.store.reports.studies() == []  # never acknowledged, never recorded
    finally:
        node.stop()
