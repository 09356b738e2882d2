"""History: a new positive after a prior negative is news; a known positive is follow-up."""

from __future__ import annotations

from pathlib import Path

from dicom_ai.domain import Code, Finding, FindingRow, PriorFinding, Priority, PriorityDecision
from dicom_ai.prioritize.history import apply_history
from dicom_ai.domain import ReceivedInstance
from dicom_ai.store import Stores

CODE = Code("95436008", "SCT", "Lung consolidation")
PRESENT = [Finding("Consolidation", CODE, 0.8, 0.5)]


def prior(present: bool, at: float = 1.0, study: str = "9.1") -> PriorFinding:
    return PriorFinding(study, at, "Consolidation", 0.9 if present else 0.1, present)


def test_new_positive_after_prior_negative_rises_one_level() -> None:
    decision = apply_history(PriorityDecision(Priority.URGENT, 0.8, ("Consolidation 80%",)), PRESENT, [prior(False)])
    assert decision.level == Priority.STAT
    assert decision.reasons[-1].startswith("new Consolidation: absent on prior study of ")


def test_known_positive_is_follow_up_but_stat_stays() -> None:
    urgent = apply_history(PriorityDecision(Priority.URGENT, 0.8, ()), PRESENT, [prior(True)])
    assert urgent.level == Priority.ROUTINE
    assert "known Consolidation: present on prior study" in urgent.reasons[-1]
    stat = apply_history(PriorityDecision(Priority.STAT, 0.95, ()), PRESENT, [prior(True)])
    assert stat.level == Priority.STAT


def test_latest_prior_decides_and_absent_now_changes_nothing() -> None:
    priors = [prior(True, at=1.0, study="9.1"), prior(False, at=2.0, study="9.2")]
    assert apply_history(PriorityDecision(Priority.URGENT, 0.8, ()), PRESENT, priors).level == Priority.STAT
    absent = [Finding("Consolidation", CODE, 0.1, 0.5)]
    unchanged = apply_history(PriorityDecision(Priority.ROUTINE, 0.1, ("r",)), absent, priors)
    assert unchanged == PriorityDecision(Priority.ROUTINE, 0.1, ("r",))


def _done(store: Stores, study: str, patient: str, at: float, p: float) -> None:
    store.studies.record_instance(
        ReceivedInstance(sop_instance_uid=study + ".1", sop_class_uid="1.2", series_instance_uid=study + ".0",
                         study_instance_uid=study, modality="CR", transfer_syntax_uid="1.2.840.10008.1.2.1",
                         path=Path("/x"), size=1, calling_aet="X", patient_id=patient),
        now=at,
    )
    store.studies.complete_quiet_studies(quiet_since=at)
    store.studies.claim_complete_study()
    store.studies.save_outcome(study, rules=["r"], models=["m@1"], results=[], outbox=[],
                       findings=[FindingRow(study + ".1", "m", "1", Finding("Consolidation", CODE, p, 0.5))],
                       priority=PriorityDecision(Priority.ROUTINE, p, ()))


def test_store_finds_earlier_results_of_the_same_patient_only(tmp_path: Path) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    _done(store, "1.1", "P1", at=10.0, p=0.2)
    _done(store, "1.2", "P2", at=11.0, p=0.9)  # another patient
    _done(store, "1.3", "P1", at=12.0, p=0.9)
    _done(store, "1.4", "", at=13.0, p=0.9)  # no PatientID: no history
    assert store.studies.prior_findings("1.3") == [PriorFinding("1.1", 10.0, "Consolidation", 0.2, False)]
    assert store.studies.prior_findings("1.1") == []
    assert store.studies.prior_findings("1.4") == []
