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


def test_evaluate_prints_numbers_equal_to_a_direct_computation_and_writes_the_report(tmp_path: Path) -> None:
    from dicom_ai.domain import Judgement, Truth, TruthSource

    settings = Settings(home=tmp_path)
    stores = Stores.open(settings.database_path)
    truths, scores = [], []
    for i in range(24):
        present = i % 2 == 0
        score = (0.55 + 0.4 * i / 24) if present != (i % 5 == 0) else (0.05 + 0.25 * i / 24)
        study = processed_study(stores, settings, accession=f"E{i}", probability=score)
        stores.feedback.record_judgement(Judgement(study, MODEL, LABEL, Truth.PRESENT if present else Truth.ABSENT,
                                                   TruthSource.RADIOLOGIST, "jdoe"))
        truths.append(present)
        scores.append(score)
    out = tmp_path / "report"
    result = run(tmp_path, "evaluate", MODEL, "--out", str(out))
    assert result.exit_code == 0, result.output
    tp = sum(s >= 0.35 and t for s, t in zip(scores, truths))
    fn = sum(s < 0.35 and t for s, t in zip(scores, truths))
    tn = sum(s < 0.35 and not t for s, t in zip(scores, truths))
    fp = sum(s >= 0.35 and not t for s, t in zip(scores, truths))
    pairs = [(p > q) + 0.5 * (p == q) for p, t in zip(scores, truths) if t for q, u in zip(scores, truths) if not u]
    assert f"confusion: TP {tp}  FP {fp}  TN {tn}  FN {fn}" in result.output
    assert f"sensitivity {tp / (tp + fn):.2f}" in result.output and f"specificity {tn / (tn + fp):.2f}" in result.output
    assert f"AUROC {sum(pairs) / len(pairs):.3f} (" in result.output
    for name in ("roc", "calibration", "scores", "subgroups"):
        assert (out / f"{name}-consolidation.png").is_file() and str(out / f"{name}-consolidation.png") in result.output
    assert (out / "index.html").is_file()
    assert run(tmp_path, "evaluate", "nope").output.startswith(
        f"Error: no predictions of model 'nope' in the period on this node (models with predictions: {MODEL})")
    future = run(tmp_path, "evaluate", MODEL, "--since", "2999-01-01")
    assert future.exit_code == 1 and "no predictions" in future.output
    assert run(tmp_path, "evaluate", MODEL, "--since", "yesterday").exit_code == 2


def test_evaluate_on_a_dataset_runs_the_node_inference_path(tmp_path: Path) -> None:
    """Chest phantoms as the Kaggle pneumonia layout's JPEG-free PNGs: the report's AUROC is the one the model's
    own preprocessing of each picture gives."""
    import json

    import numpy as np
    import torch
    from PIL import Image

    from dicom_ai.infer.card import load_card
    from dicom_ai.infer.preprocess import preprocess
    from dicom_ai.infer.runner import LoadedModel
    from dicom_ai.metrics import auroc
    from dicom_ai.train.phantoms import chest_phantom

    repo = Path(__file__).resolve().parents[2]
    root = tmp_path / "data"
    pictures, labels = [], []
    for i in range(24):
        finding = i % 2 == 0
        image = chest_phantom(np.random.default_rng(50 + i), finding=finding, size=224).image
        folder = root / "chest_xray" / "test" / ("PNEUMONIA" if finding else "NORMAL")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"person{i}_bacteria_{i}.png" if finding else f"IM-{i:04d}-0001.png"
        Image.fromarray(image).save(folder / name)
        pictures.append(image)
        labels.append(int(finding))
    (root / "chest_xray" / "train" / "NORMAL").mkdir(parents=True)
    model = LoadedModel.load(repo / "models" / "chest-xray-demo", load_card(repo / "models" / "chest-xray-demo" / "model.yaml"))
    direct = model.probabilities(torch.stack([preprocess(p, model.card.input) for p in pictures]))[:, 0]
    out = tmp_path / "report"
    result = run(tmp_path, "evaluate", "chest-xray-demo", "--dataset", str(root), "--layout", "pneumonia",
                 "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    overall = metrics["labels"][LABEL]["overall"]
    assert overall["judged"] == 24
    assert overall["auroc"] == round(auroc(direct, np.array(labels)), 4)
    # The scores themselves: the picture wrapped as DICOM and read back is the picture the model saw directly.
    assert overall["brier"] == round(float(np.mean((direct - np.array(labels)) ** 2)), 4)
    assert (out / "roc-consolidation.png").is_file()


def test_export_seismometer_writes_the_folder_and_says_how_to_open_it(tmp_path: Path) -> None:
    from dicom_ai.domain import Judgement, Truth, TruthSource

    settings = Settings(home=tmp_path)
    stores = Stores.open(settings.database_path)
    for i in range(6):
        study = processed_study(stores, settings, accession=f"X{i}", probability=0.1 + 0.15 * i, patient_id=f"SECRET{i}")
        if i < 4:
            stores.feedback.record_judgement(Judgement(study, MODEL, LABEL, Truth.PRESENT if i % 2 else Truth.ABSENT,
                                                       TruthSource.RADIOLOGIST, "jdoe"))
    out = tmp_path / "seismo"
    result = run(tmp_path, "export", "seismometer", MODEL, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"wrote 4 judged study(ies) of {MODEL} to {out} (2 left out" in result.output
    assert "seismometer.run_startup(config_path='.')" in result.output
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "config.yml", "dictionary.yml", "metadata.json", "predictions.parquet", "usage_config.yml"]
    assert b"SECRET" not in (out / "predictions.parquet").read_bytes()
    assert (tmp_path / "pseudonym.key").is_file()
    missing = run(tmp_path, "export", "seismometer", "nope", "--out", str(tmp_path / "x"))
    assert missing.exit_code == 1 and "no predictions of model 'nope'" in missing.output
