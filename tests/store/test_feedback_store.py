"""Judgements are kept, never overwritten: the latest of a source counts, a radiologist's outranks a report's;
an unknown study, model or label is refused by name; every judgement is an audit event."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from dicom_ai.config import Settings
from dicom_ai.domain import Judgement, Truth, TruthSource
from dicom_ai.store import Stores
from dicom_ai.store.feedback import FeedbackError
from tests.validation_support import LABEL, MODEL, processed_study


@pytest.fixture
def stores(tmp_path: Path) -> Stores:
    return Stores.open(tmp_path / "db.sqlite")


def judge(study: str, truth: Truth, source: TruthSource = TruthSource.RADIOLOGIST, by: str = "jdoe") -> Judgement:
    return Judgement(study, MODEL, LABEL, truth, source, by)


def test_latest_radiologist_judgement_counts_and_history_is_kept(
        stores: Stores, make_settings: Callable[..., Settings]) -> None:
    study = processed_study(stores, make_settings(), accession="A1", probability=0.9)
    stores.feedback.record_judgement(judge(study, Truth.ABSENT), now=1.0)
    stores.feedback.record_judgement(judge(study, Truth.PRESENT, by="asmith"), now=2.0)
    effective = stores.feedback.effective(study, MODEL)[LABEL]
    assert (effective.truth, effective.by) == (Truth.PRESENT, "asmith")
    assert [row["truth"] for row in stores.feedback.history(study)] == ["absent", "present"]
    events = [e for e in stores.reports.events(study) if e["kind"] == "judged"]
    assert [json.loads(e["detail"])["by"] for e in events] == ["asmith", "jdoe"]  # newest first, who and what


@pytest.mark.parametrize("radiologist_first", [True, False])
def test_a_radiologist_outranks_a_report_whatever_the_order(
        stores: Stores, make_settings: Callable[..., Settings], radiologist_first: bool) -> None:
    study = processed_study(stores, make_settings(), accession="A1", probability=0.9)
    judgements = [judge(study, Truth.PRESENT), judge(study, Truth.ABSENT, TruthSource.REPORT, by="RIS")]
    for judgement in judgements if radiologist_first else reversed(judgements):
        stores.feedback.record_judgement(judgement)
    effective = stores.feedback.effective(study, MODEL)[LABEL]
    assert (effective.truth, effective.source) == (Truth.PRESENT, TruthSource.RADIOLOGIST)
    assert stores.feedback.effective_for_model(MODEL)[(study, LABEL)].truth == Truth.PRESENT


def test_report_truth_counts_when_no_radiologist_judged(stores: Stores, make_settings: Callable[..., Settings]) -> None:
    study = processed_study(stores, make_settings(), accession="A1", probability=0.9)
    stores.feedback.record_judgement(judge(study, Truth.ABSENT, TruthSource.REPORT, by="RIS"))
    assert stores.feedback.effective(study, MODEL)[LABEL].source == TruthSource.REPORT


def test_unknown_study_model_or_label_is_refused_by_name(stores: Stores, make_settings: Callable[..., Settings]) -> None:
    study = processed_study(stores, make_settings(), accession="A1", probability=0.9)
    with pytest.raises(FeedbackError, match="no study 9.9.9 on this node"):
        stores.feedback.record_judgement(Judgement("9.9.9", MODEL, LABEL, Truth.PRESENT, TruthSource.RADIOLOGIST, "x"))
    with pytest.raises(FeedbackError, match=f"model 'brain-mr-demo' has no result on study {study}.*{MODEL}"):
        stores.feedback.record_judgement(Judgement(study, "brain-mr-demo", LABEL, Truth.PRESENT,
                                                   TruthSource.RADIOLOGIST, "x"))
    with pytest.raises(FeedbackError, match="no finding 'Effusion'.*its findings: Consolidation"):
        stores.feedback.record_judgement(Judgement(study, MODEL, "Effusion", Truth.PRESENT, TruthSource.RADIOLOGIST, "x"))
    assert stores.feedback.history(study) == []


def test_reports_are_found_by_accession_else_patient_and_date(
        stores: Stores, make_settings: Callable[..., Settings]) -> None:
    study = processed_study(stores, make_settings(), accession="ACC-1", probability=0.9, patient_id="P7",
                            study_date="20240301")
    assert stores.feedback.studies_for_report(["NOPE", "ACC-1"], "", "") == [study]
    assert stores.feedback.studies_for_report([], "P7", "20240301") == [study]
    assert stores.feedback.studies_for_report(["NOPE"], "P7", "20240302") == []
