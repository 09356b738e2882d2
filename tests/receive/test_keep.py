"""keep_file, the one way both receivers (C-STORE SCP, STOW-RS) keep or refuse a received file: what the
STOW-RS path asks of it beyond the SCP's (a Part 10 file's own transfer syntax, the study the request
named), and what every path guarantees (nothing left in incoming/, a named status, one line)."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_ai.domain import Priority, PriorityDecision, ResultFile
from dicom_ai.receive import status
from dicom_ai.receive.keep import keep_file
from dicom_ai.store import Spool, Stores
from tests.conftest import copy_as_new_study, sample


@pytest.fixture
def node(tmp_path: Path) -> tuple[Spool, Stores]:
    return Spool(tmp_path / "spool"), Stores.open(tmp_path / "db.sqlite")


def _incoming(spool: Spool, source: Path) -> Path:
    temporary = spool.incoming / "upload.dcm"
    shutil.copyfile(source, temporary)
    return temporary


def test_a_part10_file_is_kept_with_its_own_transfer_syntax(node: tuple[Spool, Stores], tmp_path: Path) -> None:
    spool, store = node
    source = copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in")
    header = dcmread(source, stop_before_pixels=True)
    kept = keep_file(_incoming(spool, source), spool, store.studies, calling_aet="STOW-RS", sender="STOW-RS 127.0.0.1")
    assert kept.ok and kept.sop_instance_uid == header.SOPInstanceUID and kept.study_instance_uid == header.StudyInstanceUID
    [instance] = store.studies.instances_of(str(header.StudyInstanceUID))
    assert instance.path.read_bytes() == source.read_bytes()
    [row] = store.database.query("select transfer_syntax_uid, calling_aet from instances")
    assert row == {"transfer_syntax_uid": str(header.file_meta.TransferSyntaxUID), "calling_aet": "STOW-RS"}
    assert list(spool.incoming.iterdir()) == []


def test_refusals_are_named_and_leave_nothing_behind(node: tuple[Spool, Stores], tmp_path: Path) -> None:
    spool, store = node
    source = copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in")
    other_study = keep_file(_incoming(spool, source), spool, store.studies, calling_aet="STOW-RS", sender="s",
                            expected_study_uid="1.2.3")
    assert other_study.status == status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert other_study.error is not None and other_study.error.startswith("(0020,000D) StudyInstanceUID")
    assert "differs from the study the request was addressed to, 1.2.3" in other_study.error

    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a DICOM file")
    broken = keep_file(_incoming(spool, junk), spool, store.studies, calling_aet="STOW-RS", sender="s")
    assert broken.status == status.CANNOT_UNDERSTAND and "\n" not in str(broken.error)

    full = keep_file(_incoming(spool, source), spool, store.studies, calling_aet="STOW-RS", sender="s",
                     write_error=OSError(errno.ENOSPC, "No space left on device"))
    assert full.status == status.OUT_OF_RESOURCES and "No space left on device" in str(full.error)
    assert list(spool.incoming.iterdir()) == [] and store.reports.studies() == []


def test_our_own_result_sent_back_is_acknowledged_and_not_taken_as_input(node: tuple[Spool, Stores],
                                                                         tmp_path: Path) -> None:
    """A PACS or VNA that forwards what it receives (Orthanc's plugin does, for what arrives by STOW-RS)
    would otherwise re-open the study with our own SR, process it again, and send again: a loop."""
    spool, store = node
    source = copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in")
    header = dcmread(source, stop_before_pixels=True)
    study = str(header.StudyInstanceUID)
    assert keep_file(_incoming(spool, source), spool, store.studies, calling_aet="PACS", sender="PACS").ok
    store.studies.complete_quiet_studies(quiet_since=9e9)
    store.studies.claim_complete_study()
    result = copy_as_new_study(sample("CT_small.dcm"), tmp_path / "results", StudyInstanceUID=study)
    result_uid = str(dcmread(result).SOPInstanceUID)
    assert store.studies.save_outcome(study, rules=["r"], models=["m@1"], findings=[],
                                      results=[ResultFile(result_uid, "9", "SC", "m", "1", result)],
                                      priority=PriorityDecision(Priority.ROUTINE, 0.1, ()), outbox=[])

    came_back = keep_file(_incoming(spool, result), spool, store.studies, calling_aet="PACS", sender="PACS")
    assert came_back.ok and came_back.sop_instance_uid == result_uid
    assert [i.sop_instance_uid for i in store.studies.instances_of(study)] == [str(header.SOPInstanceUID)]
    [row] = store.reports.studies(study_uid=study)
    assert row.state == "done"  # not re-opened
    assert list(spool.incoming.iterdir()) == []
