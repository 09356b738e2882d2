"""Tiny models written on the fly, so registry and runner tests need no trained weights."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from monai.networks.nets import DenseNet
from pydicom import dcmread

from dicom_ai.domain import Instance

TINY_ARCHITECTURE: dict[str, Any] = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 1,
    "init_features": 4,
    "growth_rate": 4,
    "block_config": [1, 1],
    "bn_size": 2,
}

VALID_CARD: dict[str, Any] = {
    "name": "tiny-chest",
    "version": "0.0.1",
    "display_name": "Tiny test model",
    "manufacturer": "dicom-ai tests",
    "device_uid": None,
    "format": "state_dict",
    "weights": "model.pt",
    "architecture": {"name": "DenseNet", "kwargs": TINY_ARCHITECTURE},
    "gate": {"Modality": ["CR", "DX"]},
    "input": {"size": [64, 64], "channels": 1},
    "output": "sigmoid",
    "labels": [
        {"name": "Consolidation", "code": {"value": "95436008", "scheme": "SCT", "meaning": "Lung consolidation"}, "threshold": 0.5}
    ],
    "gradcam": {"target_layer": "features.denseblock1"},
    "intended_use": "tests only",
    "not_for_clinical_use": True,
}


def valid_card() -> dict[str, Any]:
    return copy.deepcopy(VALID_CARD)


@pytest.fixture
def write_model(tmp_path: Path) -> Callable[..., Path]:
    """write_model(folder_name, card=None, weights=True) -> folder; a tiny DenseNet state_dict."""

    def factory(folder: str = "tiny-chest", card: dict[str, Any] | None = None, weights: bool = True) -> Path:
        card = valid_card() if card is None else card
        path = tmp_path / "models" / folder
        path.mkdir(parents=True, exist_ok=True)
        (path / "model.yaml").write_text(yaml.safe_dump(card, sort_keys=False), encoding="utf-8")
        if weights:
            torch.manual_seed(0)
            torch.save(DenseNet(**TINY_ARCHITECTURE).state_dict(), path / "model.pt")
        return path

    return factory


def instance_for(path: Path) -> Instance:
    ds = dcmread(path, stop_before_pixels=True)
    return Instance(
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        series_instance_uid=ds.SeriesInstanceUID,
        study_instance_uid=ds.StudyInstanceUID,
        path=path,
    )
