"""Our SCP over real loopback sockets: pynetdicom and dcmtk clients, good and bad input."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_ai.receive import status
from dicom_ai.receive.scp import start_scp
from dicom_ai.store import Spool, Stores
from tests.conftest import copy_as_new_study, free_port, require_binary, sample


class Node:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.store = Stores.open(root / "db.sqlite")
        self.spool = Spool(root / "spool")
        self.server = start_scp("DICOM_AI", "127.0.0.1", self.port, 131072, self.spool, self.store.studies)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    running = Node(tmp_path / "node")
    yield running
    running.server.shutdown()
    running.store.close()


def _send(port: int, dataset, transfer_syntax: str = "1.2.840.10008.1.2.1") -> int:  # type: ignore[no-untyped-def]
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(dataset.SOPClassUID, transfer_syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_AI")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(dataset).Status)
    finally:
        assoc.release()


def test_success_means_on_disk_and_in_database(node: Node, tmp_path: Path) -> None:
    path = copy_as_new_study(sample("RG1_UNCR.dcm"), tmp_path / "in")
    sent = dcmread(path)
    assert _send(node.port, sent) == status.SUCCESS
    # the response is out, so both must already be true
    stored = node.spool.instance_path(sent.StudyInstanceUID, sent.SeriesInstanceUID, sent.SOPInstanceUID)
    assert stored.exists()
    copy = dcmread(stored)
    assert copy.PixelData == sent.PixelData
    assert copy.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    [row] = node.store.reports.studies()
    assert (row.study_instance_uid, row.state, row.instance_count) == (sent.StudyInstanceUID, "receiving", 1)
    assert list(node.spool.incoming.iterdir()) == []  # no temporaries left behind


def test_repeat_is_stored_once(node: Node, tmp_path: Path) -> None:
    sent = dcmread(copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in"))
    assert _send(node.port, sent) == status.SUCCESS
    assert _send(node.port, sent) == status.SUCCESS
    assert node.store.reports.receive_counts(sent.StudyInstanceUID) == {sent.SOPInstanceUID: 2}


def test_missing_study_uid_is_refused_with_a_named_tag(node: Node, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    sent = dcmread(copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in"))
    del sent.StudyInstanceUID
    assert _send(node.port, sent) == status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "(0020,000D) StudyInstanceUID is missing" in caplog.text
    assert node.store.reports.studies() == []


def test_unsafe_uid_is_refused(node: Node, tmp_path: Path) -> None:
    sent = dcmread(copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in"))
    sent.SeriesInstanceUID = "../../etc"
    assert _send(node.port, sent) == status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert not (node.spool.root.parent / "etc").exists()


def test_unwritable_spool_answers_out_of_resources(node: Node, tmp_path: Path) -> None:
    sent = dcmread(copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in"))
    node.spool.studies.chmod(0o500)
    try:
        if os.geteuid() == 0:  # root ignores permissions: make the target path a file instead
            node.spool.studies.chmod(0o700)
            (node.spool.studies / sent.StudyInstanceUID).write_text("not a folder")
        assert _send(node.port, sent) == status.OUT_OF_RESOURCES
    finally:
        node.spool.studies.chmod(0o700)
    assert node.store.reports.studies() == []


def test_c_echo(node: Node) -> None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_AI")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_dcmtk_storescu_sends_uncompressed_and_jpeg2000(node: Node, tmp_path: Path) -> None:
    storescu = require_binary("storescu")
    study = generate_uid()
    plain = copy_as_new_study(sample("RG1_UNCR.dcm"), tmp_path / "in", StudyInstanceUID=study)
    j2k = copy_as_new_study(sample("RG1_J2KR.dcm"), tmp_path / "in", StudyInstanceUID=study)
    for path, syntax_flag in ((plain, "-xe"), (j2k, "-xv")):
        done = subprocess.run(
            [storescu, syntax_flag, "-aec", "DICOM_AI", "-aet", "STORESCU", "127.0.0.1", str(node.port), str(path)],
            capture_output=True, text=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"},
        )
        assert done.returncode == 0, done.stderr
    [row] = node.store.reports.studies()
    assert row.instance_count == 2
    stored = dcmread(node.spool.instance_path(study, *[dcmread(j2k).SeriesInstanceUID, dcmread(j2k).SOPInstanceUID]))
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"  # kept as received
    assert stored.pixel_array.shape == (1955, 1841)


def test_dcmtk_echoscu(node: Node) -> None:
    echoscu = require_binary("echoscu")
    done = subprocess.run([echoscu, "-aec", "DICOM_AI", "127.0.0.1", str(node.port)], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_only_allowed_calling_ae_titles_may_associate(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    store = Stores.open(tmp_path / "db.sqlite")
    server = start_scp("DICOM_AI", "127.0.0.1", port, 0, Spool(tmp_path / "spool"), store.studies, allowed_calling=["ORTHANC"])
    try:
        sent = dcmread(copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in"))
        for calling, accepted in (("INTRUDER", False), ("ORTHANC", True)):
            ae = AE(ae_title=calling)
            ae.add_requested_context(sent.SOPClassUID, "1.2.840.10008.1.2.1")
            assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_AI")
            assert assoc.is_established is accepted and assoc.is_rejected is not accepted
            if accepted:
                assert int(assoc.send_c_store(sent).Status) == status.SUCCESS
                assoc.release()
        assert "refused an association from INTRUDER" in caplog.text
        assert store.reports.receive_counts(sent.StudyInstanceUID) == {sent.SOPInstanceUID: 1}
    finally:
        server.shutdown()
        store.close()
