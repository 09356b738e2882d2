"""ModelRegistry and LoadedModel: broken folders are reported, good models gate and predict."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import DenseNet
from pydicom import dcmread

from dicom_ai.domain import ImageResult, Instance
from dicom_ai.infer import ModelError, ModelRegistry, PixelError
from dicom_ai.infer.card import derive_device_uid
from tests.conftest import sample
from tests.infer.infer_support import TINY_ARCHITECTURE, instance_for, valid_card

WriteModel = Callable[..., Path]


@pytest.fixture(scope="module")
def rg1() -> Instance:
    return instance_for(sample("RG1_UNCR.dcm"))


def test_broken_folders_are_listed_and_the_good_one_works(write_model: WriteModel, rg1: Instance) -> None:
    good = write_model("tiny-chest")
    bad_card = valid_card()
    bad_card["labels"][0]["threshold"] = 7
    write_model("bad-card", card=bad_card)
    no_weights = valid_card() | {"name": "no-weights"}
    write_model("no-weights", card=no_weights, weights=False)
    garbage = write_model("garbage", card=valid_card() | {"name": "garbage"}, weights=False)
    (garbage / "model.pt").write_bytes(b"this is not a checkpoint")
    mismatch = valid_card() | {"name": "mismatch"}
    mismatch["architecture"] = {"name": "DenseNet", "kwargs": TINY_ARCHITECTURE | {"growth_rate": 8}}
    write_model("mismatch", card=mismatch)
    (good.parent / "empty-folder").mkdir()

    registry = ModelRegistry(good.parent)
    assert registry.names() == ["garbage", "mismatch", "tiny-chest"]
    problems = registry.problems()
    assert set(problems) == {"bad-card", "no-weights", "empty-folder"}
    assert "field 'labels[0].threshold'" in problems["bad-card"]
    assert "weights file" in problems["no-weights"] and "not found" in problems["no-weights"]
    assert "no model.yaml" in problems["empty-folder"]

    with pytest.raises(ModelError, match="cannot read state_dict"):
        registry.get("garbage")
    with pytest.raises(ModelError, match="does not fit architecture DenseNet"):
        registry.get("mismatch")
    assert {"garbage", "mismatch"} <= set(registry.problems())  # load failures are reported too
    with pytest.raises(ModelError, match=r"no usable model named 'nope'.*available: garbage, mismatch, tiny-chest"):
        registry.get("nope")
    with pytest.raises(ModelError, match="folder bad-card has a problem"):
        registry.get("bad-card")

    results = registry.get("tiny-chest").predict([rg1], heatmaps="all")
    assert len(results) == 1 and results[0].heatmap is not None


def test_missing_models_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        ModelRegistry(tmp_path / "absent")


def test_duplicate_names_keep_the_first_folder(write_model: WriteModel) -> None:
    first = write_model("a-folder")
    write_model("b-folder")  # same card name "tiny-chest"
    registry = ModelRegistry(first.parent)
    assert registry.names() == ["tiny-chest"]
    assert registry.folder("tiny-chest") == first
    assert "already used by" in registry.problems()["b-folder"]


def test_get_loads_once_across_threads(write_model: WriteModel) -> None:
    registry = ModelRegistry(write_model().parent)
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(registry.get("tiny-chest"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 4 and all(model is seen[0] for model in seen)


def test_info_carries_card_facts_and_a_derived_uid(write_model: WriteModel) -> None:
    folder = write_model()
    info = ModelRegistry(folder.parent).get("tiny-chest").info
    assert (info.name, info.version, info.manufacturer) == ("tiny-chest", "0.0.1", "dicom-ai tests")
    assert info.not_for_clinical_use is True
    assert info.device_uid == derive_device_uid(folder / "model.pt")


def test_explicit_device_uid_wins(write_model: WriteModel) -> None:
    folder = write_model(card=valid_card() | {"device_uid": "1.2.826.0.1.3680043.10.1234.1"})
    assert ModelRegistry(folder.parent).get("tiny-chest").info.device_uid == "1.2.826.0.1.3680043.10.1234.1"


def test_gate_accepts_chest_cr_and_refuses_ct(write_model: WriteModel) -> None:
    model = ModelRegistry(write_model().parent).get("tiny-chest")
    ok, reason = model.accepts(dcmread(sample("RG1_UNCR.dcm"), stop_before_pixels=True))
    assert ok, reason
    ok, reason = model.accepts(dcmread(sample("CT_small.dcm"), stop_before_pixels=True))
    assert not ok
    assert "Modality CT is not accepted by tiny-chest" in reason
    header = dcmread(sample("CT_small.dcm"), stop_before_pixels=True)
    del header.Modality
    ok, reason = model.accepts(header)
    assert not ok and "Modality is missing" in reason


@pytest.mark.parametrize(("threshold", "policy", "expect_heatmap"), [
    (0.0, "positive", True),  # everything is positive
    (1.0, "positive", False),  # nothing is
    (0.0, "none", False),
    (1.0, "all", True),
])
def test_heatmap_policy(write_model: WriteModel, rg1: Instance, threshold: float, policy: str, expect_heatmap: bool) -> None:
    card = valid_card()
    card["labels"][0]["threshold"] = threshold
    model = ModelRegistry(write_model(card=card).parent).get("tiny-chest")
    [result] = model.predict([rg1], heatmaps=policy)  # type: ignore[arg-type]
    assert (result.heatmap is not None) == expect_heatmap
    assert result.findings[0].present == (threshold == 0.0)


def test_predict_batches_a_study_and_keeps_each_image_size(write_model: WriteModel, rg1: Instance) -> None:
    model = ModelRegistry(write_model().parent).get("tiny-chest")
    ct = instance_for(sample("CT_small.dcm"))  # the runner itself does not gate: the pipeline asks accepts()
    results = model.predict([rg1, ct, rg1], heatmaps="all")
    assert [r.source for r in results] == [rg1, ct, rg1]
    for result, shape in zip(results, [(1955, 1841), (128, 128), (1955, 1841)]):
        assert isinstance(result, ImageResult)
        assert result.display.shape == shape and result.display.dtype == np.uint8
        assert result.heatmap is not None
        assert result.heatmap.shape == shape and result.heatmap.dtype == np.float32
        assert result.heatmap.min() == 0.0 and result.heatmap.max() == 1.0  # min-max: hottest is 1, not 0
        [finding] = result.findings
        assert finding.label == "Consolidation" and finding.code.value == "95436008"
        assert 0.0 <= finding.probability <= 1.0
    assert results[0].findings[0].probability == pytest.approx(results[2].findings[0].probability, abs=1e-6)


def test_predict_rejects_an_unknown_policy(write_model: WriteModel, rg1: Instance) -> None:
    model = ModelRegistry(write_model().parent).get("tiny-chest")
    with pytest.raises(ValueError, match="heatmaps must be one of all, positive, none"):
        model.predict([rg1], heatmaps="some")  # type: ignore[arg-type]


def test_unreadable_instance_is_a_pixel_error(write_model: WriteModel, rg1: Instance, tmp_path: Path) -> None:
    model = ModelRegistry(write_model().parent).get("tiny-chest")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    broken = Instance("1.2.3", rg1.sop_class_uid, rg1.series_instance_uid, rg1.study_instance_uid, junk)
    with pytest.raises(PixelError, match=f"file {junk}, SOPInstanceUID 1.2.3"):
        model.predict([broken])


def test_torchscript_models_load_without_gradcam(write_model: WriteModel, rg1: Instance) -> None:
    card = valid_card() | {"format": "torchscript", "weights": "model.ts", "gradcam": None, "architecture": None}
    folder = write_model(card=card, weights=False)
    torch.jit.script(DenseNet(**TINY_ARCHITECTURE).eval()).save(str(folder / "model.ts"))
    model = ModelRegistry(folder.parent).get("tiny-chest")
    [result] = model.predict([rg1], heatmaps="all")
    assert result.heatmap is None  # no Grad-CAM for TorchScript
    assert 0.0 <= result.findings[0].probability <= 1.0


def test_output_that_does_not_match_the_labels_fails_at_load(write_model: WriteModel) -> None:
    card = valid_card() | {"format": "torchscript", "weights": "model.ts", "gradcam": None, "architecture": None}
    effusion = {"value": "60046008", "scheme": "SCT", "meaning": "Pleural effusion"}
    card["labels"].append({"name": "Effusion", "code": effusion, "threshold": 0.5})
    folder = write_model(card=card, weights=False)
    torch.jit.script(DenseNet(**TINY_ARCHITECTURE).eval()).save(str(folder / "model.ts"))
    registry = ModelRegistry(folder.parent)
    with pytest.raises(ModelError, match=r"output has shape \(2, 1\), expected \(batch, 2\)"):
        registry.get("tiny-chest")


def test_unknown_gradcam_layer_fails_at_load(write_model: WriteModel) -> None:
    folder = write_model(card=valid_card() | {"gradcam": {"target_layer": "features.nowhere"}})
    with pytest.raises(ModelError, match="'features.nowhere' is not a module of the network"):
        ModelRegistry(folder.parent).get("tiny-chest")


def test_an_unexpected_load_failure_is_reported_not_raised_raw(write_model: WriteModel, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(card: object) -> torch.nn.Module:
        raise KeyError("a network constructor failing in an unforeseen way")

    monkeypatch.setattr("dicom_ai.infer.networks.build_network", explode)
    registry = ModelRegistry(write_model().parent)
    with pytest.raises(ModelError, match="unexpected error while loading"):
        registry.get("tiny-chest")
    assert "unexpected error" in registry.problems()["tiny-chest"]
