"""Ground truth in, in-process over a real database and spool: a judgement (CLI path) or a final report
(HL7 path) is recorded and an assessment SR of the AI's SR is queued for the PACS, dciodvfy-clean and
deterministic; an unknown accession is answered AE and kept until its study has been processed; a
malformed message gets AR."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_ai.config import Settings
from dicom_ai.domain import Judgement, Truth, TruthSource
from dicom_ai.encode.assessment import AGREES, DISAGREES
from dicom_ai.store import Stores
from dicom_ai.validation import match_pending_reports, receive_report, record_feedback
from tests.encode.encode_support import assert_valid
from tests.validation_support import LABEL, MODEL, RULES, oru, processed_study

PACS = "ORTHANC@127.0.0.1:4242"
PRIVATE_SCHEME_WARNING = "Unrecognized defined term <99DICOMAI>"  # our documented private codes


@pytest.fixture
def setup(tmp_path: Path, make_settings: Callable[..., Settings]) -> tuple[Stores, Settings]:
    settings = make_settings(pacs=PACS)
    return Stores.open(settings.database_path), settings


def codes_in(path: Path) -> set[str]:
    return {str(item.CodeValue) for element in dcmread(path).iterall() if element.keyword in ("ConceptCodeSequence", "ConceptNameCodeSequence")
            for item in element.value}


def assessment_rows(stores: Stores, study: str) -> list[dict]:  # type: ignore[type-arg]
    return stores.database.query("select * from results where study_instance_uid = ? and kind = 'AS' order by created_at",
                                 [study])


def test_a_judgement_queues_an_assessment_sr_that_references_the_ai_sr(setup: tuple[Stores, Settings]) -> None:
    stores, settings = setup
    study = processed_study(stores, settings, accession="A1", probability=0.9)
    ai_sr = stores.feedback.current_sr(study, MODEL)
    assert ai_sr is not None
    uid = record_feedback(stores, settings, Judgement(study, MODEL, LABEL, Truth.PRESENT, TruthSource.RADIOLOGIST,
                                                      "jdoe", "dense RLL consolidation"))
    [row] = assessment_rows(stores, study)
    assert row["sop_instance_uid"] == uid
    path = Path(row["path"])
    assert_valid(path, also_known=(PRIVATE_SCHEME_WARNING,))
    sr = dcmread(path)
    assert sr.StudyInstanceUID == study
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]\
        .ReferencedSOPInstanceUID == ai_sr.sop_instance_uid
    assert {AGREES.value, "52101004", "95436008", "121008"} <= codes_in(path)  # agrees, Present, the finding, a person
    queued = [r for r in stores.reports.outbox_rows(study) if r["key"] == uid]
    assert [(r["kind"], r["destination"], r["state"]) for r in queued] == [("dicom", PACS, "pending")]
    # The same judgement again is the same SR: nothing new is queued.
    again = record_feedback(stores, settings, Judgement(study, MODEL, LABEL, Truth.PRESENT, TruthSource.RADIOLOGIST,
                                                        "jdoe", "dense RLL consolidation"))
    assert again == uid and len(assessment_rows(stores, study)) == 1


def test_a_revised_judgement_makes_a_new_sr_that_supersedes_the_first(setup: tuple[Stores, Settings]) -> None:
    stores, settings = setup
    study = processed_study(stores, settings, accession="A1", probability=0.9)
    first = record_feedback(stores, settings, Judgement(study, MODEL, LABEL, Truth.PRESENT, TruthSource.RADIOLOGIST, "jdoe"))
    stores.database.connect().execute("update outbox set state = 'sent' where key = ?", [first])  # the PACS has it
    second = record_feedback(stores, settings, Judgement(study, MODEL, LABEL, Truth.ABSENT, TruthSource.RADIOLOGIST, "jdoe"))
    assert second != first
    rows = {r["sop_instance_uid"]: r for r in assessment_rows(stores, study)}
    assert rows[first]["superseded_by"] == second
    sr = dcmread(rows[second]["path"])
    assert sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]\
        .ReferencedSOPInstanceUID == first
    assert DISAGREES.value in codes_in(Path(rows[second]["path"]))


def test_a_final_report_is_matched_by_accession_and_derived_truth_recorded(setup: tuple[Stores, Settings]) -> None:
    stores, settings = setup
    study = processed_study(stores, settings, accession="ACC-9", probability=0.2)
    answer = receive_report(stores, settings, RULES, oru("ACC-9", "Dense consolidation in the right lower lobe."))
    assert "MSA|AA|MSG1|Consolidation present (chest-xray-demo); study " in answer
    effective = stores.feedback.effective(study, MODEL)[LABEL]
    assert (effective.truth, effective.source, effective.by) == (Truth.PRESENT, TruthSource.REPORT, "RIS^HOSP")
    [row] = assessment_rows(stores, study)
    assert_valid(Path(row["path"]), also_known=(PRIVATE_SCHEME_WARNING,))
    assert {DISAGREES.value, "AIRA-REPORT", "121012"} <= codes_in(Path(row["path"]))  # AI said absent; a device observer


def test_a_report_never_overrides_a_radiologist(setup: tuple[Stores, Settings]) -> None:
    stores, settings = setup
    study = processed_study(stores, settings, accession="ACC-9", probability=0.9)
    record_feedback(stores, settings, Judgement(study, MODEL, LABEL, Truth.PRESENT, TruthSource.RADIOLOGIST, "jdoe"))
    receive_report(stores, settings, RULES, oru("ACC-9", "No consolidation."))
    assert stores.feedback.effective(study, MODEL)[LABEL].source == TruthSource.RADIOLOGIST
    assert [row["source"] for row in stores.feedback.history(study)] == ["radiologist", "report"]  # both kept


def test_unknown_accession_is_answered_ae_and_matched_once_the_study_is_processed(setup: tuple[Stores, Settings]) -> None:
    stores, settings = setup
    answer = receive_report(stores, settings, RULES, oru("LATE-1", "No consolidation.", control_id="K1"))
    assert "MSA|AE|K1|no study with accession LATE-1 yet: kept, matched when it arrives" in answer
    assert match_pending_reports(stores, settings, RULES) == 0
    study = processed_study(stores, settings, accession="LATE-1", probability=0.7)
    assert match_pending_reports(stores, settings, RULES) == 1
    assert stores.feedback.effective(study, MODEL)[LABEL].truth == Truth.ABSENT
    assert stores.feedback.pending_reports() == []
    assert match_pending_reports(stores, settings, RULES) == 0  # matched once


def test_malformed_and_preliminary_reports(setup: tuple[Stores, Settings]) -> None:
    stores, settings = setup
    assert "MSA|AR||not HL7" in receive_report(stores, settings, RULES, "this is not HL7")
    assert "MSA|AR|X1|MSH-9 is ADT A01" in receive_report(  # delimiters in the text become spaces
        stores, settings, RULES, "MSH|^~\\&|RIS||||2024||ADT^A01|X1|P|2.5\rPID|1\r")
    preliminary = receive_report(stores, settings, RULES, oru("A1", "Consolidation.", status="P", control_id="P1"))
    assert "MSA|AA|P1|result status P is not final" in preliminary
    assert stores.feedback.pending_reports() == []  # nothing kept


def test_the_assessment_goes_where_the_ai_sr_went_whoever_records_it(tmp_path: Path) -> None:
    node_settings = Settings(home=tmp_path, pacs=PACS)  # type: ignore[arg-type]
    stores = Stores.open(node_settings.database_path)
    study = processed_study(stores, node_settings, accession="A1", probability=0.9)
    cli_settings = Settings(home=tmp_path)  # a CLI run without the node's PACS setting
    uid = record_feedback(stores, cli_settings, Judgement(study, MODEL, LABEL, Truth.ABSENT, TruthSource.RADIOLOGIST, "x"))
    assert [(r["kind"], r["destination"]) for r in stores.reports.outbox_rows(study) if r["key"] == uid] == [("dicom", PACS)]
