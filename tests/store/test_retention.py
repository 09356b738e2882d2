"""Retention: finished studies lose their files after retention_days; nothing else ever does."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from dicom_ai.domain import Carrier, Code, Finding, FindingRow, OutboxEntry, Priority, PriorityDecision, StudyState
from dicom_ai.store import Spool, Stores
from dicom_ai.domain import ReceivedInstance, ResultFile
from dicom_ai.store.retention import DAY, purge_expired, sweep_purged

FINDING = Finding("Consolidation", Code("95436008", "SCT", "Lung consolidation"), 0.9, 0.5)


def _receive(store: Stores, spool: Spool, study: str, sop: str) -> Path:
    path = spool.instance_path(study, study + ".1", sop)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 1000)
    store.studies.record_instance(ReceivedInstance(
        sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.1", series_instance_uid=study + ".1",
        study_instance_uid=study, modality="CR", transfer_syntax_uid="1.2.840.10008.1.2.1", path=path, size=1000,
        calling_aet="ORTHANC", patient_id="P1"))
    return path


def _finished(store: Stores, spool: Spool, study: str, *, sent: bool = True) -> list[Path]:
    """A study received, processed, its SR written and (if `sent`) delivered."""
    source = _receive(store, spool, study, study + ".1.1")
    store.studies.complete_quiet_studies(time.time())
    assert store.studies.claim_complete_study() == study
    result = spool.result_path(study, study + ".9")
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_bytes(b"\0" * 500)
    store.studies.save_outcome(study, rules=["chest"], models=["m@1"], findings=[FindingRow(study + ".1.1", "m", "1", FINDING)],
                       results=[ResultFile(study + ".9", study + ".8", "SR", "m", "1", result)],
                       priority=PriorityDecision(Priority.URGENT, 0.9, ("x",)),
                       outbox=[OutboxEntry(Carrier.DICOM, study + ".9", "PACS@127.0.0.1:4242", str(result))])
    if sent:
        for item in store.outbox.due_outbox(now=time.time() + 1):
            if item.study_instance_uid == study:
                store.outbox.mark_sent(item)
    return [source, result]


def _store(tmp_path: Path) -> tuple[Stores, Spool]:
    return Stores.open(tmp_path / "db.sqlite"), Spool(tmp_path / "spool")


def test_a_finished_delivered_study_loses_its_files_after_retention_not_before(tmp_path: Path) -> None:
    store, spool = _store(tmp_path)
    files = _finished(store, spool, "1.2.3")
    assert purge_expired(store.studies, spool, retention_days=7, now=time.time() + 6 * DAY).studies == 0
    assert all(f.exists() for f in files)
    report = purge_expired(store.studies, spool, retention_days=7, now=time.time() + 8 * DAY)
    assert (report.studies, report.files, report.bytes_freed) == (1, 2, 1500)
    assert not any(f.exists() for f in files)
    assert not (spool.studies / "1.2.3").exists() and not (spool.results / "1.2.3").exists()
    [row] = store.reports.studies()
    assert row.state == StudyState.DONE and row.purged_at is not None and row.priority == "URGENT"
    assert store.studies.instances_of("1.2.3") == []
    assert store.studies.requeue("1.2.3", by="admin") is False  # nothing left to process
    assert [e["kind"] for e in store.reports.events("1.2.3")][0] == "study_purged"


def test_studies_still_in_flight_keep_their_files(tmp_path: Path) -> None:
    store, spool = _store(tmp_path)
    pending = _finished(store, spool, "1.2.3", sent=False)  # its SR has not reached the PACS
    receiving = _receive(store, spool, "1.2.4", "1.2.4.1.1")
    assert purge_expired(store.studies, spool, retention_days=1, now=time.time() + 30 * DAY).studies == 0
    assert all(f.exists() for f in [*pending, receiving])


def test_a_late_instance_reopens_a_purged_study_and_is_kept(tmp_path: Path) -> None:
    store, spool = _store(tmp_path)
    _finished(store, spool, "1.2.3")
    purge_expired(store.studies, spool, retention_days=1, now=time.time() + 2 * DAY)
    late = _receive(store, spool, "1.2.3", "1.2.3.1.2")
    [row] = store.reports.studies()
    assert row.state == StudyState.RECEIVING and row.purged_at is None
    assert sweep_purged(store.studies, spool) == 0 and late.exists()
    assert [i.sop_instance_uid for i in store.studies.instances_of("1.2.3")] == ["1.2.3.1.2"]


def test_files_left_by_a_crash_mid_purge_are_swept_at_start(tmp_path: Path) -> None:
    store, spool = _store(tmp_path)
    files = _finished(store, spool, "1.2.3")
    assert store.studies.forget_files("1.2.3", time.time() + 1) is not None  # the crash: files not yet deleted
    assert all(f.exists() for f in files)
    assert sweep_purged(store.studies, spool) == 1
    assert not any(f.exists() for f in files)


def test_purge_waits_while_the_scp_holds_the_study(tmp_path: Path) -> None:
    store, spool = _store(tmp_path)
    files = _finished(store, spool, "1.2.3")
    lock = spool.study_lock("1.2.3")
    lock.acquire()  # as the SCP does between keeping an instance and recording it
    purging = threading.Thread(target=purge_expired, args=(store.studies, spool, 1, time.time() + 2 * DAY))
    purging.start()
    purging.join(0.3)
    assert purging.is_alive() and all(f.exists() for f in files)
    lock.release()
    purging.join(10)
    assert not purging.is_alive() and not any(f.exists() for f in files)


def test_retry_of_a_purged_study_says_to_send_it_again(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dicom_ai.cli import main

    store, spool = Stores.open(tmp_path / "dicom-ai.sqlite"), Spool(tmp_path / "spool")
    _finished(store, spool, "1.2.3")
    purge_expired(store.studies, spool, retention_days=1, now=time.time() + 2 * DAY)
    store.close()
    outcome = CliRunner().invoke(main, ["retry", "1.2.3"], env={"DICOM_AI_HOME": str(tmp_path)})
    assert outcome.exit_code == 1
    assert "its files were deleted on" in outcome.output and "send the study again from the PACS" in outcome.output
    listing = CliRunner().invoke(main, ["studies"], env={"DICOM_AI_HOME": str(tmp_path)})
    assert "files deleted" in listing.output
