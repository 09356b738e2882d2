"""Quick training writes a complete, loadable model folder; metric helpers compute the right thing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydicom import dcmread

from dicom_ai.domain import Instance
from dicom_ai.infer import ModelRegistry, load_card
from dicom_ai.infer.card import ModelError
from monai.networks.nets import DenseNet

from dicom_ai.train import classifier
from dicom_ai.train.chest_demo import ARCHITECTURE, _augment, _pointing_loss, _readme, class_activation, train_chest_demo
from dicom_ai.train.evaluate import auroc, youden_threshold
from tests.conftest import REPO, sample

BANNER = "SYNTHETIC DATA - NOT FOR CLINICAL USE"


@pytest.fixture(scope="module")
def quick_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("models") / "chest-xray-demo"
    summary = train_chest_demo(folder, seed=0, quick=True)
    return folder, summary


def test_quick_training_writes_weights_card_and_readme(quick_model: tuple[Path, dict[str, Any]]) -> None:
    folder, summary = quick_model
    assert {p.name for p in folder.iterdir()} == {"model.pt", "model.yaml", "README.md"}
    assert (folder / "model.pt").stat().st_size < 5 * 1024 * 1024
    card = load_card(folder / "model.yaml")
    assert card.name == "chest-xray-demo" and card.not_for_clinical_use
    assert BANNER in card.intended_use and BANNER in (folder / "README.md").read_text()
    assert card.training["seed"] == 0 and card.training["quick"] is True and card.training["steps"] == 2
    assert card.training["counts"]["train"] == {"images": 8, "with_consolidation": 4}
    for key in ("auroc", "sensitivity", "specificity", "threshold", "pointing_game_hit_rate"):
        assert key in card.metrics
    assert card.labels[0].threshold == card.metrics["threshold"]
    assert summary["metrics"] == card.metrics
    parameters = sum(t.numel() for t in torch.load(folder / "model.pt", weights_only=True).values() if t.dtype.is_floating_point)
    assert 100_000 <= parameters <= 500_000


def test_quick_model_loads_through_the_registry_and_predicts(quick_model: tuple[Path, dict[str, Any]]) -> None:
    folder, _ = quick_model
    registry = ModelRegistry(folder.parent)
    assert registry.problems() == {}
    model = registry.get("chest-xray-demo")
    path = sample("RG1_UNCR.dcm")
    header = dcmread(path, stop_before_pixels=True)
    assert model.accepts(header)[0]
    instance = Instance(header.SOPInstanceUID, header.SOPClassUID, header.SeriesInstanceUID, header.StudyInstanceUID, path)
    [result] = model.predict([instance], heatmaps="all")
    assert result.heatmap is not None and result.heatmap.shape == (header.Rows, header.Columns)


def test_training_is_reproducible(quick_model: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    folder, _ = quick_model
    train_chest_demo(tmp_path / "again", seed=0, quick=True)
    first = torch.load(folder / "model.pt", weights_only=True)
    second = torch.load(tmp_path / "again" / "model.pt", weights_only=True)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_auroc_known_values() -> None:
    labels = np.array([0, 0, 1, 1], dtype=np.float32)
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert auroc(np.array([0.5, 0.5, 0.5, 0.5]), labels) == 0.5
    assert auroc(np.array([0.1, 0.6, 0.4, 0.9]), labels) == 0.75
    assert np.isnan(auroc(np.array([0.1, 0.2]), np.array([1, 1], dtype=np.float32)))


def test_youden_threshold_separates_separable_scores() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1], dtype=np.float32)
    threshold = youden_threshold(np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8]), labels)
    assert 0.3 < threshold <= 0.6


def test_the_committed_demo_model_is_honest_and_works() -> None:
    folder = REPO / "models" / "chest-xray-demo"
    if not (folder / "model.yaml").exists():
        pytest.skip("models/chest-xray-demo has not been trained into this checkout")
    card = load_card(folder / "model.yaml")
    assert card.not_for_clinical_use and BANNER in card.intended_use
    assert card.training["quick"] is False and card.training["time_s"] < 600
    assert (folder / "model.pt").stat().st_size < 5 * 1024 * 1024
    assert card.metrics["auroc"] >= 0.8  # on held-out synthetic data; a retrain that breaks it fails here
    assert card.metrics["pointing_game_hit_rate"] > card.metrics["pointing_game_chance"]
    model = ModelRegistry(REPO / "models").get("chest-xray-demo")
    ct = dcmread(sample("CT_small.dcm"), stop_before_pixels=True)
    accepted, reason = model.accepts(ct)
    assert not accepted and "Modality CT" in reason


def test_class_activation_reproduces_the_network_logit() -> None:
    torch.manual_seed(0)
    network = DenseNet(**ARCHITECTURE).eval()
    inputs = torch.randn(2, 1, 224, 224)
    with torch.no_grad():
        logits, cam = class_activation(network, inputs)
        assert torch.allclose(logits, network(inputs)[:, 0], atol=1e-5)
    assert cam.shape == (2, 14, 14)


def test_class_activation_names_a_head_that_is_not_linear() -> None:
    network = DenseNet(**ARCHITECTURE).eval()
    network.class_layers.out = torch.nn.Identity()
    for activation in (class_activation, classifier.class_activation):
        with pytest.raises(ModelError, match=r"class_layers\.out is a linear layer with a bias, not Identity"):
            activation(network, torch.randn(1, 1, 224, 224))


def test_readme_of_a_card_without_a_described_field_names_it(quick_model: tuple[Path, dict[str, Any]]) -> None:
    card = load_card(quick_model[0] / "model.yaml")
    general = card.model_copy(update={"training": {}, "metrics": {}})  # classifier.readme's records differ
    assert "Grad-CAM on `" in _readme(card) and "(SCT " in classifier.readme(general)
    uncoded = general.model_copy(update={"labels": [card.labels[0].model_copy(update={"code": None})]})
    with pytest.raises(ModelError, match=r"chest-xray-demo: the card has no labels\[0\]\.code"):
        _readme(card.model_copy(update={"labels": uncoded.labels}))
    with pytest.raises(ModelError, match=r"the card has no labels\[0\]\.code"):
        classifier.readme(uncoded)
    with pytest.raises(ModelError, match=r"the card has no gradcam"):
        _readme(card.model_copy(update={"gradcam": None}))


def test_pointing_loss_rewards_maps_on_the_mask_and_ignores_negatives() -> None:
    masks = torch.zeros(2, 28, 28, dtype=torch.bool)
    masks[0, 0:4, 0:4] = True  # top-left cell of a 7x7 map
    on_target = torch.zeros(2, 7, 7)
    on_target[0, 0, 0] = 10.0
    off_target = torch.zeros(2, 7, 7)
    off_target[0, 6, 6] = 10.0
    labels = torch.tensor([1.0, 0.0])
    assert _pointing_loss(on_target, masks, labels) < 0.01
    assert _pointing_loss(off_target, masks, labels) > 5.0
    assert _pointing_loss(off_target + 3.0, masks, labels) == pytest.approx(float(_pointing_loss(off_target, masks, labels)))
    assert float(_pointing_loss(off_target, masks, torch.zeros(2))) == 0.0


def test_augmentation_moves_masks_with_their_images() -> None:
    images = torch.zeros(4, 1, 32, 32)
    masks = torch.zeros(4, 32, 32, dtype=torch.bool)
    images[:, 0, 10:14, 5:9] = 1.0
    masks[:, 10:14, 5:9] = True
    moved, moved_masks = _augment(images, masks, shift=3, generator=torch.Generator().manual_seed(1))
    assert moved.shape == images.shape and moved_masks.shape == masks.shape
    assert torch.equal(moved[:, 0] > 0.5, moved_masks)
