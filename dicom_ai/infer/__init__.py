"""infer: run a model on a study's images; findings with coded labels and Grad-CAM heatmaps.

`ModelRegistry(models_dir)` finds the models (one folder with a model.yaml each);
`registry.get(name)` gives a `LoadedModel` whose `accepts(header)` applies the modality gate
and whose `predict(instances, heatmaps)` returns one `domain.ImageResult` per image.
"""

from __future__ import annotations

from dicom_ai.infer.card import CardError, ModelCard, ModelError, derive_device_uid, load_card
from dicom_ai.infer.pixels import PixelError, display_image
from dicom_ai.infer.registry import ModelRegistry
from dicom_ai.infer.runner import LoadedModel

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
