from __future__ import annotations

from pathlib import Path

from dicom_ai.domain import Carrier, Code, Finding, FindingRow, OutboxEntry, Priority, PriorityDecision, StudyState
from dicom_ai.domain import ReceivedInstance, ResultFile
from dicom_ai.store import Stores


def _instance(study: str = "1.2.3", sop: str = "1.2.3.1.1", series: str = "1.2.3.1") -> ReceivedInstance:
    return ReceivedInstance(
        sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.1", series_instance_uid=series,
        study_instance_uid=study, modality="CR", transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=Path(f"/spool/{sop}.dcm"), size=10, calling_aet="ORTHANC", patient_id="P1",
    )


def _state(store: Stores, study: str = "1.2.3") -> str:
    return next(row.state for row in store.reports.studies() if row.study_instance_uid == study)


def test_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    Stores.open(tmp_path / "db.sqlite").close()
    store = Stores.open(tmp_path / "db.sqlite")  # a second open applies nothing twice
    rows = store.database.query("select name from _sqlite_migrations")
    assert sorted(row["name"] for row in rows) == ["001_initial", "002_priority_override", "003_studies_by_arrival",
                                                   "004_retention", "005_hardening", "006_studies_by_patient",
                                                   "007_validation", "008_rule_versions", "009_waiting_for_window",
                                                   "010_console_accounts", "011_model_switches", "012_study_claims",
                                                   "013_console_speed"]


def test_quiet_study_completes_and_late_instance_reopens(tmp_path: Path) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    assert store.studies.record_instance(_instance(), now=100.0).is_new is True
    assert store.studies.complete_quiet_studies(quiet_since=99.0) == []
    assert store.studies.complete_quiet_studies(quiet_since=100.0) == ["1.2.3"]
    assert _state(store) == StudyState.COMPLETE
    assert store.studies.claim_complete_study() == "1.2.3"
    assert store.studies.claim_complete_study() is None  # a claim is exclusive
    assert store.studies.finish_without_results("1.2.3", StudyState.NO_MATCH, "no rule matched")
    assert store.studies.record_instance(_instance(sop="1.2.3.1.2"), now=200.0).is_new is True
    assert _state(store) == StudyState.RECEIVING
    assert store.reports.studies()[0].instance_count == 2


def test_repeated_instance_is_counted_not_duplicated(tmp_path: Path) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    store.studies.record_instance(_instance(), now=1.0)
    store.studies.complete_quiet_studies(quiet_since=1.0)
    assert store.studies.record_instance(_instance(), now=2.0).is_new is False
    assert store.reports.receive_counts("1.2.3") == {"1.2.3.1.1": 2}
    assert _state(store) == StudyState.COMPLETE  # a repeat does not re-open a finished study
    assert store.reports.studies()[0].instance_count == 1


def test_crash_during_processing_is_recovered(tmp_path: Path) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    store.studies.record_instance(_instance(), now=1.0)
    store.studies.complete_quiet_studies(quiet_since=1.0)
    store.studies.claim_complete_study()
    store.close()
    reopened = Stores.open(tmp_path / "db.sqlite")
    assert reopened.studies.recover_interrupted() == ["1.2.3"]
    assert reopened.studies.claim_complete_study() == "1.2.3"


def _outcome(store: Stores, payload: str = "/r/sr.dcm") -> bool:
    finding = Finding("Consolidation", Code("95436008", "SCT", "Lung consolidation"), 0.9, 0.5)
    return store.studies.save_outcome(
        "1.2.3",
        rules=["chest"],
        models=["m@1"],
        findings=[FindingRow("1.2.3.1.1", "m", "1", finding)],
        results=[ResultFile("9.9.1", "9.9", "SR", "m", "1", Path(payload))],
        priority=PriorityDecision(Priority.URGENT, 0.9, ("Consolidation 90%",)),
        outbox=[OutboxEntry(Carrier.DICOM, "9.9.1", "PACS@127.0.0.1:4242", payload)],
    )


def test_outcome_is_atomic_and_rerun_does_not_resend(tmp_path: Path) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    store.studies.record_instance(_instance(), now=1.0)
    store.studies.complete_quiet_studies(quiet_since=1.0)
    store.studies.claim_complete_study()
    assert _outcome(store)
    row = store.reports.studies()[0]
    assert (row.state, row.priority, row.results, row.pending_sends) == ("done", "URGENT", 1, 1)
    [item] = store.outbox.due_outbox()
    store.outbox.mark_sent(item)
    assert store.outbox.due_outbox() == []
    # the same study processed again (a late repeat, a restart) yields the same result UID
    store.studies.record_instance(_instance(sop="1.2.3.1.9"), now=5.0)
    store.studies.complete_quiet_studies(quiet_since=5.0)
    store.studies.claim_complete_study()
    assert _outcome(store)
    assert store.outbox.due_outbox() == []  # same UID and payload, already sent: not sent twice
    assert len(store.reports.outbox_rows("1.2.3")) == 1


def test_outcome_of_a_reopened_study_is_discarded(tmp_path: Path) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    store.studies.record_instance(_instance(), now=1.0)
    store.studies.complete_quiet_studies(quiet_since=1.0)
    store.studies.claim_complete_study()
    store.studies.record_instance(_instance(sop="1.2.3.1.5"), now=2.0)  # arrives while the model runs
    assert _outcome(store) is False
    assert _state(store) == StudyState.RECEIVING
    assert store.outbox.due_outbox() == []


def test_failed_attempts_back_off_then_give_up(tmp_path: Path) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    store.studies.record_instance(_instance(), now=1.0)
    store.studies.complete_quiet_studies(quiet_since=1.0)
    store.studies.claim_complete_study()
    _outcome(store)
    [item] = store.outbox.due_outbox()
    store.outbox.mark_failed_attempt(item, "refused", retry_at=10**12)
    assert store.outbox.due_outbox() == []
    [item] = store.outbox.due_outbox(now=10**12)
    assert item.attempts == 1
    store.outbox.mark_failed_attempt(item, "refused again", retry_at=None)
    assert store.outbox.due_outbox(now=10**13) == []
    assert store.reports.outbox_rows("1.2.3")[0]["state"] == "failed"


def test_requeue_only_finished_studies_and_audit_it(tmp_path: Path) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    store.studies.record_instance(_instance(), now=1.0)
    assert store.studies.requeue("1.2.3", by="admin") is False  # still receiving
    store.studies.complete_quiet_studies(quiet_since=1.0)
    store.studies.claim_complete_study()
    store.studies.finish_without_results("1.2.3", StudyState.FAILED, "model broken")
    assert store.studies.requeue("1.2.3", by="admin") is True
    assert store.studies.claim_complete_study() == "1.2.3"
    assert [e["kind"] for e in store.reports.events("1.2.3", limit=2)] == ["study_requeued", "study_failed"]


def test_one_study_by_uid(tmp_path: Path) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    store.studies.record_instance(_instance(), now=1.0)
    store.studies.record_instance(_instance(study="4.5.6", sop="4.5.6.1"), now=2.0)
    row = store.reports.study("1.2.3")
    assert row is not None and row.study_instance_uid == "1.2.3" and row.instance_count == 1
    assert store.reports.study("9.9.9") is None
    assert [r.study_instance_uid for r in store.reports.studies(state="receiving", study_uid="4.5.6")] == ["4.5.6"]
