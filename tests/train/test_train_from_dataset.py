"""`dicom-ai train dataset` trains on a tiny fake copy of each seed layout and writes a usable model.

Each run is one capped epoch on 32x32 images (8x24x24 volumes resized to 16x24x24): it checks the whole chain (read,
split by patient, decode, preprocess, fit, evaluate, write) and that `models check` accepts the
result, not that the model is any good.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from dicom_ai.cli import main
from dicom_ai.infer.card import CodeSpec
from dicom_ai.infer.check import check_model_folder
from dicom_ai.train.from_dataset import DatasetTraining, TrainingError, known_code, train_from_dataset
from tests.train import fake_datasets as fake

BRAIN_NEOPLASM = CodeSpec(value="126952004", scheme="SCT", meaning="Neoplasm of brain")
# KAU's "BI-RADS 4-6" has no default code, so --code is required there
BREAST_CANCER = CodeSpec(value="254837009", scheme="SCT", meaning="Malignant neoplasm of breast")
MODEL_FILES = {"model.pt", "model.yaml", "README.md"}

# layout, builder, options, code (None: known for the layout), size, expected gate, a note the reader must make
Case = tuple[str, Callable[[Path], Path], tuple[tuple[str, Any], ...], CodeSpec | None, tuple[int, ...], list[str], str]
CASES: list[Case] = [
    ("pneumonia", fake.make_pneumonia, (), None, (32, 32), ["CR", "DX"], "(the nested chest_xray/chest_xray copy) dropped"),
    ("kvasir", fake.make_kvasir, (("positive", ("polyps",)),), None, (32, 32), ["ES"], "no patient ids"),
    ("msd", fake.make_msd, (), BRAIN_NEOPLASM, (16, 24, 24), ["MR"], "contains label 2 (enhancing tumour)"),
    ("rsna-mammo", fake.make_rsna, (), None, (32, 32), ["MG"], "1 images listed in train.csv not found"),
    ("kau", fake.make_kau, (), BREAST_CANCER, (32, 32), ["MG"], "grouped by file-name patient prefix"),
    ("dicom-csv", fake.make_dicom_csv, (), None, (32, 32), ["CR", "DX"], "matched by path; group = PatientID"),
]


def request(root: Path, out: Path, layout: str = "auto", **changes: Any) -> DatasetTraining:
    settings: dict[str, Any] = {"size": (32, 32), "epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "progress": False}
    return DatasetTraining(root=root, out=out, layout=layout, **(settings | changes))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Two threads on two busy cores run ~15x slower than one; training inherits torch's setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def kvasir_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake.make_kvasir(tmp_path_factory.mktemp("kvasir"))


@pytest.mark.parametrize(("layout", "build", "options", "code", "size", "gate", "note"), CASES, ids=[case[0] for case in CASES])
def test_each_layout_trains_into_a_model_that_models_check_accepts(
    tmp_path: Path, layout: str, build: Callable[[Path], Path], options: tuple[tuple[str, Any], ...],
    code: CodeSpec | None, size: tuple[int, ...], gate: list[str], note: str,
) -> None:
    root, out = build(tmp_path / "data"), tmp_path / "model"
    report = train_from_dataset(request(root, out, layout, options=options, code=code, size=size))

    assert {p.name for p in out.iterdir()} == MODEL_FILES  # no checkpoints/ left behind
    check = check_model_folder(out)
    assert check.ok, check.problems
    card = check.card
    assert card is not None and card.gate == {"Modality": gate}
    assert card.input.size == size and card.input.channels == (3 if layout == "kvasir" else 1)
    assert card.not_for_clinical_use and "NOT FOR CLINICAL USE" in (out / "README.md").read_text()
    metrics, training = card.metrics, card.training
    assert report["metrics"] == metrics
    for key in ("auroc", "auroc_95ci_bootstrap", "sensitivity", "specificity", "calibration"):
        assert key in metrics, key
    assert metrics["auroc"] is not None and len(metrics["auroc_95ci_bootstrap"]) == 2
    assert {"brier", "ece"} <= set(metrics["calibration"])
    assert card.labels[0].threshold == metrics["threshold"]
    assert card.labels[0].code == (code or known_code(layout, card.labels[0].name))
    assert training["threads"] == 1
    assert training["dataset"]["layout"] == layout and training["data"].startswith(f"{layout} layout at ")
    assert any(note in line for line in training["dataset"]["notes"]), training["dataset"]["notes"]
    assert f"--layout {layout}" in training["command"] and training["epochs_run"] == 1
    for split in ("train", "val", "test"):  # patient-level splitting kept both classes everywhere
        counts = training["counts"][split]
        assert 0 < counts["positives"] < counts["images"], (split, counts)
    pointing = metrics["pointing_game"]
    if layout == "msd":  # label volumes give finding masks
        assert card.gradcam is not None and pointing["gradcam_layer"] == card.gradcam.target_layer
        assert pointing["n"] >= 1 and pointing["hit_rate"] is not None and pointing["split"] == "test positives"
    else:
        assert "not_measured" in pointing


def test_cli_trains_kvasir_polyps(tmp_path: Path, kvasir_root: Path) -> None:
    out = tmp_path / "polyps"
    result = CliRunner().invoke(
        main,
        ["train", "dataset", str(kvasir_root), "--out", str(out), "--size", "32x32", "--epochs", "1",
         "--max-steps-per-epoch", "2", "--option", "positive=polyps"],
        env={"DICOM_AI_HOME": str(tmp_path)},
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["training"]["dataset"]["classes"] == ["other", "polyps"]
    assert "--option positive=polyps" in report["training"]["command"]
    assert check_model_folder(out).ok and {p.name for p in out.iterdir()} == MODEL_FILES


def test_cli_multiclass_without_positive_says_to_pass_it(tmp_path: Path, kvasir_root: Path) -> None:
    result = CliRunner().invoke(main, ["train", "dataset", str(kvasir_root), "--out", str(tmp_path / "m")],
                                env={"DICOM_AI_HOME": str(tmp_path)})
    assert result.exit_code == 1 and "--option positive=" in result.output
    assert not (tmp_path / "m").exists()


def test_multiclass_layout_without_positive_fails(tmp_path: Path, kvasir_root: Path) -> None:
    with pytest.raises(TrainingError, match=r"3 classes \(esophagitis, normal-cecum, polyps\).*--option positive="):
        train_from_dataset(request(kvasir_root, tmp_path / "m"))


@pytest.mark.parametrize("case", ["msd-liver-cancer", "numeric-labels"])
def test_unknown_positive_class_asks_for_a_code(tmp_path: Path, case: str) -> None:
    if case == "msd-liver-cancer":  # "cancer" means breast cancer for RSNA only, not for a liver task
        root = fake.make_msd(tmp_path / "data", task="Task03_Liver", modality="CT", labels=fake.MSD_LIVER_LABELS, cases=4)
        wanted, options = "'cancer'", ()
    else:
        root = fake.make_dicom_csv(tmp_path / "data", patients=4)
        wanted, options = "'1'", (("label_column", "finding"),)
    with pytest.raises(TrainingError, match=rf"no code known for the positive class {wanted}: pass --code"):
        train_from_dataset(request(root, tmp_path / "m", options=options))
    assert not (tmp_path / "m").exists()


def test_kept_checkpoints_let_a_rerun_resume(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, out = fake.make_dicom_csv(tmp_path / "data"), tmp_path / "model"
    first = train_from_dataset(request(root, out, "dicom-csv", keep_checkpoints=True))
    last = out / "checkpoints" / "last.pt"
    assert last.is_file() and (out / "checkpoints" / "best.pt").is_file() and check_model_folder(out).ok
    written = last.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="dicom_ai.train.engine"):
        again = train_from_dataset(request(root, out, "dicom-csv", keep_checkpoints=True))  # same settings: resumes
    assert "training already finished at epoch 1" in caplog.text and last.stat().st_mtime_ns == written
    assert again["training"]["epochs_run"] == 1 and again["training"]["steps"] == first["training"]["steps"]
    assert again["metrics"]["auroc"] == first["metrics"]["auroc"] and check_model_folder(out).ok


def test_an_input_size_the_network_cannot_pool_fails_before_training(tmp_path: Path) -> None:
    root = fake.make_msd(tmp_path / "data", cases=4)
    with pytest.raises(TrainingError, match=r"--size 8x24x24 is too small for the small network: .* at least 16"):
        train_from_dataset(request(root, tmp_path / "m", code=BRAIN_NEOPLASM, size=(8, 24, 24)))
    assert not (tmp_path / "m").exists()


def test_an_empty_split_is_named(tmp_path: Path) -> None:
    from dicom_ai.infer.card import InputSpec
    from dicom_ai.train.from_dataset import _tensors
    from dicom_ai.train.layouts import LabelledSet

    dataset = LabelledSet("folders", tmp_path, ("no", "yes"), (), dims=2, channels=1, modality="OT")
    with pytest.raises(TrainingError, match="the test split is empty: the dataset is too small to split by patient"):
        _tensors([], dataset, InputSpec(size=(32, 32)), None, "test")
