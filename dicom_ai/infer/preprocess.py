"""Turn what a radiologist sees into what a network expects: resize, channels, normalisation.

The trainer uses the same functions, so a model sees at inference exactly what it was trained on:
a 2-D display image (grayscale or colour) or a 3-D volume of modality values.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dicom_ai.infer.card import InputSpec


def preprocess(image: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """A uint8 display image (rows x columns, or rows x columns x 3) to a (channels, *size) tensor."""
    if spec.dims != 2:
        raise ValueError(f"a 3-D model takes volumes (preprocess_volume), not a 2-D image of shape {image.shape}")
    if image.ndim == 3 and image.shape[-1] == 3:
        planes = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
        if spec.channels == 1:
            planes = (planes * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    elif image.ndim == 2:
        planes = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    else:
        raise ValueError(f"expected a 2-D display image (rows x columns [x 3]), got shape {image.shape}")
    tensor = planes[None] / 255.0
    if tuple(tensor.shape[-2:]) != tuple(spec.size):
        tensor = F.interpolate(tensor, size=tuple(spec.size), mode="bilinear", align_corners=False, antialias=True)
    tensor = _normalize(tensor, spec)
    return _mean_std(tensor[0].expand(spec.channels, -1, -1).contiguous(), spec)


def preprocess_volume(volume: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """A (slices, rows, columns) volume in modality units to a (channels, *size) tensor.

    The window (if any) clips and scales to 0..1 first; the volume is then resized trilinearly
    to the card's size, so slice count and thickness differences are absorbed the same way at
    training and inference.
    """
    if spec.dims != 3:
        raise ValueError(f"a 2-D model takes images (preprocess), not a volume of shape {volume.shape}")
    if volume.ndim != 3:
        raise ValueError(f"expected a volume (slices x rows x columns), got shape {volume.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    if spec.window is not None:
        center, width = spec.window
        tensor = ((tensor - (center - width / 2)) / width).clamp(0.0, 1.0)
    if tuple(tensor.shape[-3:]) != tuple(spec.size):
        tensor = F.interpolate(tensor, size=tuple(spec.size), mode="trilinear", align_corners=False)
    if spec.normalize in ("unit", "meanstd") and spec.window is None:
        low, high = tensor.amin(), tensor.amax()
        tensor = (tensor - low) / (high - low).clamp_min(1e-6)
    elif spec.normalize == "zscore":
        tensor = (tensor - tensor.mean()) / tensor.std().clamp_min(1e-3)
    return _mean_std(tensor[0].expand(spec.channels, -1, -1, -1).contiguous(), spec)


def _normalize(tensor: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    if spec.normalize == "zscore":
        return (tensor - tensor.mean()) / tensor.std().clamp_min(1e-3)
    return tensor  # "unit": already 0..1; "none": a bundle's own transforms normalise


def _mean_std(tensor: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """(x - mean) / std per channel, on 0..1 values, for models trained with fixed statistics."""
    if spec.normalize != "meanstd" or spec.mean is None or spec.std is None:
        return tensor
    shape = (-1,) + (1,) * (tensor.ndim - 1)
    mean = torch.tensor(spec.mean, dtype=tensor.dtype).view(shape)
    std = torch.tensor(spec.std, dtype=tensor.dtype).view(shape)
    return (tensor - mean) / std
