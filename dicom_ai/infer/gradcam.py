"""Grad-CAM heatmaps (monai.visualize.GradCAM) scaled to [0, 1] and to the source image's size.

Two MONAI defaults are replaced on purpose: its default normaliser maps the hottest region to 0
(it scales min-max to 1..0), so a per-image min-max is passed instead; and its upsampler only
reaches the network input size, while a heatmap must overlay the source image pixel for pixel,
so the map is resized once from the feature map straight to Rows x Columns.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from monai.visualize import GradCAM

from dicom_ai.infer.card import ModelError


def minmax_per_image(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of a (B, 1, H, W) batch to [0, 1], hottest = 1; a flat map becomes all 0."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1).values.view(-1, *([1] * (maps.dim() - 1)))
    high = flat.max(dim=1).values.view(-1, *([1] * (maps.dim() - 1)))
    span = high - low
    return torch.where(span > 0, (maps - low) / span.clamp_min(1e-12), torch.zeros_like(maps))


def _keep_size(_spatial_size: object) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda maps: maps


class HeatmapMaker:
    """Grad-CAM on one named layer of one network; reuse it (it registers hooks once).

    Not thread-safe: the hooks keep the last activations and gradients. The runner holds its
    model's lock around every call.
    """

    def __init__(self, network: torch.nn.Module, target_layer: str) -> None:
        layers = dict(network.named_modules())
        if target_layer not in layers:
            blocks = [name for name in layers if name and name.count(".") <= 1][:12]
            raise ModelError(f"gradcam.target_layer {target_layer!r} is not a module of the network (some modules: {', '.join(blocks)})")
        self.target_layer = target_layer
        # A backward hook cannot see through a later in-place op (e.g. DenseNet's ReLU after norm5);
        # out-of-place activations give the same outputs at a little more memory.
        for module in network.modules():
            if getattr(module, "inplace", False) is True:
                setattr(module, "inplace", False)
        self._cam = GradCAM(nn_module=network, target_layers=target_layer, upsampler=_keep_size, postprocessing=minmax_per_image)

    def feature_maps(self, batch: torch.Tensor, class_index: int) -> torch.Tensor:
        """Grad-CAM of output `class_index` for a (B, C, H, W) batch: (B, 1, h, w) in [0, 1]."""
        with torch.inference_mode(False), torch.enable_grad():
            maps = self._cam(batch.detach().clone(), class_idx=class_index)
        return maps.detach()

    def heatmaps(self, batch: torch.Tensor, class_index: int, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
        """One float32 heatmap in [0, 1] per image of the batch, each resized to its (Rows, Columns)."""
        if len(shapes) != batch.shape[0]:
            raise ValueError(f"{batch.shape[0]} images but {len(shapes)} target shapes")
        maps = self.feature_maps(batch, class_index)
        return [upsample(maps[i : i + 1], shape) for i, shape in enumerate(shapes)]


def upsample(feature_map: torch.Tensor, shape: tuple[int, int], *, rescale: bool = True) -> np.ndarray:
    """Bilinearly resize a (1, 1, h, w) map to `shape` = (Rows, Columns): float32 in [0, 1].

    Scaled min-max again after resizing: interpolation between feature-map cells can miss the
    peak, and the hottest pixel of the overlay must be exactly 1. `rescale=False` keeps the
    values (slices of one volume share the volume's scale).
    """
    resized = F.interpolate(feature_map.float(), size=tuple(shape), mode="bilinear", align_corners=False)
    scaled = minmax_per_image(resized) if rescale else resized.clamp(0.0, 1.0)
    return scaled[0, 0].numpy().astype(np.float32, copy=False)
