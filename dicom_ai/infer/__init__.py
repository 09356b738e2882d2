"""infer: run a model on a study's images; findings with coded labels and Grad-CAM heatmaps.

`ModelRegistry(models_dir)` finds the models (one folder with a model.yaml each);
`registry.get(name)` gives a `LoadedModel` whose `accepts(header)` applies the modality gate
and whose `predict(instances, heatmaps)` returns one `domain.ImageResult` per image.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicom_ai.infer.card import (
        CardError,
        ModelCard,
        ModelError,
        derive_device_uid,
        load_card,
    )
    from dicom_ai.infer.pixels import PixelError, display_image
    from dicom_ai.infer.registry import ModelRegistry
    from dicom_ai.infer.runner import LoadedModel

# Imported on first use: reading a card (evaluate, export, status) must not pay for torch and MONAI.
_HOMES = {"CardError": "card", "ModelCard": "card", "ModelError": "card", "derive_device_uid": "card",
          "load_card": "card", "PixelError": "pixels", "display_image": "pixels", "ModelRegistry": "registry",
          "LoadedModel": "runner"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)

__all__ = [
    "CardError",
    "LoadedModel",
    "ModelCard",
    "ModelError",
    "ModelRegistry",
    "PixelError",
    "derive_device_uid",
    "display_image",
    "load_card",
]
