"""Every plug-in format loads and runs: state_dict, TorchScript, ONNX, MONAI bundle; 3-D volumes;
the ONNX fast path and its safety check; `models check` and `models export` from the CLI."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import yaml
from click.testing import CliRunner
from monai.networks.nets import DenseNet
from pydicom.uid import generate_uid

from dicom_ai.cli import main
from dicom_ai.infer import ModelError, load_card
from dicom_ai.infer.check import check_model_folder
from dicom_ai.infer.export import export_onnx
from dicom_ai.infer.runner import LoadedModel
from tests.conftest import sample
from tests.infer.infer_support import TINY_ARCHITECTURE, instance_for, valid_card



def _cr() -> Path:
    return sample("RG1_UNCR.dcm")


def _load(folder: Path, **kwargs: object) -> LoadedModel:
    return LoadedModel.load(folder, load_card(folder / "model.yaml"), **kwargs)  # type: ignore[arg-type]


def _write_card(folder: Path, card: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.yaml").write_text(yaml.safe_dump(card, sort_keys=False), encoding="utf-8")


def test_export_gives_a_dynamic_batch_fast_path_that_matches_torch(write_model: Callable[..., Path]) -> None:
    folder = write_model()
    result = export_onnx(folder)
    assert result.path == folder / "model.onnx" and result.max_difference < 1e-4
    assert load_card(folder / "model.yaml").onnx == "model.onnx"
    fast, slow = _load(folder), _load(folder, fast_path=False)
    assert (fast.backend, slow.backend) == ("onnxruntime", "torch")
    batch = torch.randn(5, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    assert np.abs(fast.probabilities(batch) - slow.probabilities(batch)).max() < 1e-4
    [result] = fast.predict([instance_for(_cr())], heatmaps="all")
    assert result.heatmap is not None and result.heatmap.shape == result.display.shape  # Grad-CAM still on torch


def test_a_stale_onnx_copy_is_dropped_not_trusted(write_model: Callable[..., Path], caplog: pytest.LogCaptureFixture) -> None:
    folder = write_model()
    export_onnx(folder)
    torch.manual_seed(42)
    torch.save(DenseNet(**TINY_ARCHITECTURE).state_dict(), folder / "model.pt")  # new weights, old ONNX
    with caplog.at_level(logging.WARNING):
        model = _load(folder)
    assert model.backend == "torch"
    assert "differs from torch" in caplog.text and "models export tiny-chest" in caplog.text


def test_onnx_only_model_runs_without_torch_weights(write_model: Callable[..., Path], tmp_path: Path) -> None:
    source = write_model()
    export_onnx(source)
    card = valid_card() | {"name": "onnx-only", "format": "onnx", "weights": "net.onnx"}
    del card["architecture"], card["gradcam"]
    folder = tmp_path / "models" / "onnx-only"
    _write_card(folder, card)
    (folder / "net.onnx").write_bytes((source / "model.onnx").read_bytes())
    model = _load(folder)
    assert model.backend == "onnxruntime" and model.network is None
    [result] = model.predict([instance_for(_cr())], heatmaps="all")
    assert result.heatmap is None and 0.0 <= result.findings[0].probability <= 1.0


def test_torchscript_model_runs(tmp_path: Path) -> None:
    card = valid_card() | {"name": "scripted", "format": "torchscript", "weights": "model.ts"}
    del card["architecture"], card["gradcam"]
    folder = tmp_path / "scripted"
    _write_card(folder, card)
    torch.jit.script(DenseNet(**TINY_ARCHITECTURE).eval()).save(str(folder / "model.ts"))
    model = _load(folder)
    assert model.backend == "torchscript"
    assert len(model.predict([instance_for(_cr())], heatmaps="none")) == 1


def _bundle(folder: Path, *, weights_key: str | None = "model") -> None:
    """A small MONAI bundle as MONAI's own tools lay it out (configs/, models/model.pt)."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1.0", "name": "tiny bundle"}))
    inference = {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "network_def": {"_target_": "DenseNet", **TINY_ARCHITECTURE},
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "ScaleIntensityd", "keys": "image"},
                {"_target_": "Resized", "keys": "image", "spatial_size": [64, 64]},
            ],
        },
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    torch.manual_seed(0)
    state = DenseNet(**TINY_ARCHITECTURE).state_dict()
    torch.save({weights_key: state} if weights_key else state, folder / "models" / "model.pt")
    card = valid_card() | {"name": "tiny-bundle", "format": "monai_bundle", "weights": "models/model.pt"}
    del card["architecture"]
    card["input"] = {"size": [64, 64], "channels": 1, "normalize": "none"}
    _write_card(folder, card)


def test_monai_bundle_loads_offline_and_uses_its_preprocessing(tmp_path: Path) -> None:
    folder = tmp_path / "tiny-bundle"
    _bundle(folder)
    model = _load(folder)
    assert model.backend == "torch"
    display = np.zeros((80, 120), dtype=np.uint8)
    display[:, :60] = 200  # left half bright: in our orientation, columns are the last axis
    prepared = model.prepare(display)
    assert prepared.shape == (1, 64, 64)
    assert float(prepared.max()) == pytest.approx(1.0) and float(prepared.min()) == pytest.approx(0.0)  # ScaleIntensityd ran
    assert prepared[0, :, :30].mean() > 0.9 and prepared[0, :, 34:].mean() < 0.1  # orientation restored
    [result] = model.predict([instance_for(_cr())], heatmaps="all")
    assert result.heatmap is not None and result.heatmap.shape == result.display.shape
    export = export_onnx(folder)  # bundles get the fast path too
    assert _load(folder).backend == "onnxruntime" and export.max_difference < 1e-4


def test_bundle_with_a_missing_network_is_refused_clearly(tmp_path: Path) -> None:
    folder = tmp_path / "tiny-bundle"
    _bundle(folder, weights_key=None)
    config = json.loads((folder / "configs" / "inference.json").read_text())
    del config["network_def"]
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"inference.json has no 'network_def' entry"):
        _load(folder)


def _ct_series(folder: Path, slices: int = 6) -> list[Path]:
    """A real CT slice (pydicom's CT_small) restacked as a series with positions in reverse file order."""
    template = pydicom.dcmread(sample("CT_small.dcm"))
    series_uid = generate_uid()
    paths = []
    for i in range(slices):
        ds = template.copy()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(-5 * i)]  # file order runs feet-first
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        pixels = ds.pixel_array.copy()
        pixels[10 + i * 5 : 20 + i * 5, 20:40] = pixels.max()
        ds.PixelData = pixels.tobytes()
        path = folder / f"slice{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_volume_model_reads_a_series_and_heatmaps_its_most_salient_slices(tmp_path: Path) -> None:
    card = valid_card() | {"name": "tiny-ct", "gate": {"Modality": "CT"}}
    card["architecture"] = {"name": "DenseNet", "kwargs": TINY_ARCHITECTURE | {"spatial_dims": 3}}
    card["input"] = {"size": [8, 32, 32], "channels": 1, "window": [40, 400]}
    card["gradcam"] = {"target_layer": "features.denseblock1", "slices": 2}
    folder = tmp_path / "tiny-ct"
    _write_card(folder, card)
    torch.manual_seed(0)
    torch.save(DenseNet(**card["architecture"]["kwargs"]).state_dict(), folder / "model.pt")
    model = _load(folder)
    paths = _ct_series(tmp_path)
    results = model.predict([instance_for(p) for p in paths], heatmaps="all")
    assert len(results) == 2  # the two most salient slices, one probability for the volume
    assert len({r.findings[0].probability for r in results}) == 1
    assert all(r.heatmap is not None and r.heatmap.shape == r.display.shape for r in results)
    assert all(0.0 <= float(r.heatmap.min()) and float(r.heatmap.max()) <= 1.0 for r in results)
    assert len({r.source.sop_instance_uid for r in results}) == 2
    quiet = model.predict([instance_for(p) for p in paths], heatmaps="none")
    assert len(quiet) == 1 and quiet[0].heatmap is None  # the middle slice carries the finding


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def test_a_torchvision_style_model_gets_three_channels_with_imagenet_statistics(
    write_model: Callable[..., Path],
) -> None:
    """What a hospital often brings: 3 input channels (grayscale repeated), fixed per-channel mean/std."""
    card = valid_card()
    card["architecture"]["kwargs"] = TINY_ARCHITECTURE | {"in_channels": 3}
    card["input"] = {"size": [64, 64], "channels": 3, "normalize": "meanstd", "mean": IMAGENET_MEAN,
                     "std": IMAGENET_STD}
    folder = write_model(card=card, weights=False)
    torch.manual_seed(0)
    torch.save(DenseNet(**(TINY_ARCHITECTURE | {"in_channels": 3})).state_dict(), folder / "model.pt")
    model = _load(folder)
    x = model.prepare(np.full((32, 48), 128, dtype=np.uint8))  # a grey display image
    assert x.shape == (3, 64, 64)
    expected = [(128 / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-4)
    [result] = model.predict([instance_for(_cr())], heatmaps="all")
    assert 0.0 <= result.findings[0].probability <= 1.0 and result.heatmap is not None


def test_an_unreported_class_is_never_a_finding_nor_explained(write_model: Callable[..., Path]) -> None:
    """A 2-class softmax model ("no finding", "Consolidation"): only Consolidation is reported, and
    the heatmap explains it, whatever "no finding" scores."""
    card = valid_card()
    card["output"] = "softmax"
    card["labels"] = [{"name": "No finding", "report": False}, *card["labels"]]
    card["architecture"]["kwargs"] = TINY_ARCHITECTURE | {"out_channels": 2}
    folder = write_model(card=card, weights=False)
    torch.manual_seed(0)
    torch.save(DenseNet(**(TINY_ARCHITECTURE | {"out_channels": 2})).state_dict(), folder / "model.pt")
    model = _load(folder)
    assert model.card.reported == [1] and list(model.card.codes) == ["Consolidation"]
    [result] = model.predict([instance_for(_cr())], heatmaps="all")
    assert [f.label for f in result.findings] == ["Consolidation"] and result.heatmap is not None
    probs = model.probabilities(model.prepare(result.display)[None])[0]
    assert abs(float(probs.sum()) - 1.0) < 1e-5 and abs(result.findings[0].probability - float(probs[1])) < 1e-5
    assert model._group_by_label([0], probs[None], [list(result.findings)]) == {1: [0]}
    outcome = CliRunner().invoke(main, ["models", "check", str(folder)])
    assert outcome.exit_code == 0 and "No finding (not reported), Consolidation (SCT 95436008)" in outcome.output


def test_image_selection_takes_only_the_listed_views(write_model: Callable[..., Path]) -> None:
    card = valid_card() | {"select": {"ViewPosition": ["CC", "MLO"]}}
    model = _load(write_model(card=card))
    header = pydicom.Dataset()
    header.ViewPosition = "MLO"
    assert model.selects(header)[0]
    header.ViewPosition = "ML"
    ok, why = model.selects(header)
    assert not ok and "ViewPosition ML" in why and "CC, MLO" in why


def test_chest_model_gate_refuses_a_ct() -> None:
    model = _load(Path(__file__).resolve().parents[2] / "models" / "chest-xray-demo")
    ok, why = model.accepts(pydicom.dcmread(sample("CT_small.dcm"), stop_before_pixels=True))
    assert not ok and "Modality CT is not accepted by chest-xray-demo" in why


def test_models_check_reports_good_and_broken_folders(write_model: Callable[..., Path], tmp_path: Path) -> None:
    good = write_model()
    broken = write_model("broken", card=valid_card() | {"name": "broken"}, weights=False)
    (broken / "model.pt").write_bytes(b"not a checkpoint")
    report = check_model_folder(broken)
    assert not report.ok and "cannot read state_dict" in report.problems[0] and str(broken / "model.pt") in report.problems[0]
    outcome = CliRunner().invoke(main, ["models", "check", str(good), str(broken)], env={"DICOM_AI_HOME": str(tmp_path)})
    assert outcome.exit_code == 1
    assert "ok  tiny-chest 0.0.1" in outcome.output and "ms per 2-D input" in outcome.output
    assert "BROKEN  broken 0.0.1" in outcome.output and "cannot read state_dict" in outcome.output


def test_models_export_cli(write_model: Callable[..., Path], tmp_path: Path) -> None:
    folder = write_model()
    outcome = CliRunner().invoke(main, ["models", "export", str(folder)], env={"DICOM_AI_HOME": str(tmp_path)})
    assert outcome.exit_code == 0, outcome.output
    assert (folder / "model.onnx").is_file() and "max probability difference" in outcome.output
    unknown = CliRunner().invoke(main, ["models", "export", "nosuch"],
                                 env={"DICOM_AI_HOME": str(tmp_path), "DICOM_AI_MODELS_DIR": str(folder.parent)})
    assert unknown.exit_code == 1
    assert "no model 'nosuch'" in unknown.output and f"(there: {folder.name})" in unknown.output


def test_models_list_shows_every_shipped_demo_with_its_format(tmp_path: Path) -> None:
    repo_models = Path(__file__).resolve().parents[2] / "models"
    outcome = CliRunner().invoke(main, ["models", "list"], env={"DICOM_AI_HOME": str(tmp_path),
                                                               "DICOM_AI_MODELS_DIR": str(repo_models)})
    assert outcome.exit_code == 0, outcome.output
    for name in ("chest-xray-demo", "mammography-demo", "brain-mr-demo", "ct-head-demo", "endoscopy-demo"):
        assert f"{name} 1.0.0  NOT FOR CLINICAL USE" in outcome.output
    assert "input 32x96x96 (3-D)" in outcome.output and 'select {"ViewPosition": ["CC", "MLO"]}' in outcome.output


@pytest.mark.parametrize(
    ("wrap", "key_map"),
    [
        (lambda s: {"module." + k: v for k, v in s.items()}, []),  # DataParallel
        (lambda s: {"epoch": 3, "optimizer": {}, "state_dict": s}, []),  # a training checkpoint dict
        (lambda s: {"model_state_dict": {"net.backbone." + k: v for k, v in s.items()}},
         [{"pattern": r"^net\.backbone\.", "replace": ""}]),  # someone's own wrapper: the card's key_map
    ],
    ids=["dataparallel", "checkpoint-dict", "key-map"],
)
def test_state_dict_checkpoints_load_as_saved(write_model: Callable[..., Path], wrap: Callable[[dict], object], key_map: list) -> None:
    card = valid_card()
    card["architecture"]["key_map"] = key_map
    folder = write_model(card=card, weights=False)
    torch.manual_seed(5)
    source = DenseNet(**TINY_ARCHITECTURE).eval()
    torch.save(wrap(source.state_dict()), folder / "model.pt")
    batch = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = torch.sigmoid(source(batch)).numpy()
    np.testing.assert_allclose(_load(folder, fast_path=False).probabilities(batch), expected, atol=1e-6)
