"""The validation loop's commands: `dicom-ai feedback` records a judgement (audited) or refuses one naming
the unknown study, model or label, in one line."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from dicom_ai.cli import main
from dicom_ai.config import Settings
from dicom_ai.store import Stores
from tests.validation_support import LABEL, MODEL, processed_study


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"DICOM_AI_HOME": str(home), "DICOM_AI_PACS": "PACS@127.0.0.1:4242"})


def test_feedback_records_a_judgement_and_queues_the_assessment(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, pacs="PACS@127.0.0.1:4242")  # type: ignore[arg-type]
    stores = Stores.open(settings.database_path)
    study = processed_study(stores, settings, accession="A1", probability=0.9)
    result = run(tmp_path, "feedback", study, "--model", MODEL, "--finding", LABEL, "--truth", "absent",
                 "--comment", "atelectasis, not consolidation", "--by", "dr.who")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{study}: {MODEL} {LABEL} judged absent by dr.who; assessment SR 2.25.")
    [row] = stores.feedback.history(study)
    assert (row["truth"], row["by"], row["comment"], row["source"]) == (
        "absent", "dr.who", "atelectasis, not consolidation", "radiologist")
    assert run(tmp_path, "study", study).output.count("judged") == 1  # in the audit trail


def test_feedback_refuses_unknown_study_model_or_label_naming_it(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    stores = Stores.open(settings.database_path)
    study = processed_study(stores, settings, accession="A1", probability=0.9)
    cases = [
        (("9.9.9", "--model", MODEL, "--finding", LABEL), "Error: no study 9.9.9 on this node"),
        ((study, "--model", "nope", "--finding", LABEL), f"Error: model 'nope' has no result on study {study}"),
        ((study, "--model", MODEL, "--finding", "Effusion"), f"Error: model '{MODEL}' has no finding 'Effusion'"),
    ]
    for args, expected in cases:
        result = run(tmp_path, "feedback", *args, "--truth", "present")
        assert result.exit_code == 1 and result.output.startswith(expected), result.output
        assert len(result.output.strip().splitlines()) == 1
    assert run(tmp_path, "feedback", study, "--model", MODEL, "--finding", LABEL, "--truth", "maybe").exit_code == 2
    assert stores.feedback.history(study) == []
