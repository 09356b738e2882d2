"""Blend a model's heatmap over the displayed image so the anatomy stays readable beneath it.

Only heat above a floor is drawn, with opacity growing with the heat: a heatmap painted over
the whole image at one opacity tints the entire radiograph and hides what it points at.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Heat below HEAT_FLOOR is not drawn; at 1.0 the colour covers the image at MAX_OPACITY.
HEAT_FLOOR = 0.3
MAX_OPACITY = 0.55

# A jet-like colour map (blue -> cyan -> yellow -> red) as (position, (R, G, B)) anchors.
JET_ANCHORS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (0, 0, 143)),
    (0.125, (0, 0, 255)),
    (0.375, (0, 255, 255)),
    (0.625, (255, 255, 0)),
    (0.875, (255, 0, 0)),
    (1.0, (128, 0, 0)),
)


def colour_lut(anchors: tuple[tuple[float, tuple[int, int, int]], ...] = JET_ANCHORS) -> np.ndarray:
    """A 256 x 3 uint8 lookup table interpolated linearly between the anchors."""
    positions = np.array([position for position, _ in anchors])
    colours = np.array([colour for _, colour in anchors], dtype=np.float64)
    steps = np.linspace(0.0, 1.0, 256)
    lut = np.stack([np.interp(steps, positions, colours[:, channel]) for channel in range(3)], axis=1)
    return np.round(lut).astype(np.uint8)


JET_LUT = colour_lut()


def check_inputs(display: np.ndarray, heatmap: np.ndarray) -> None:
    """Raise ValueError unless display is uint8 grayscale (Rows x Columns) or RGB (Rows x Columns x 3)
    and heatmap a finite map in [0, 1] of its Rows x Columns."""
    colour = display.ndim == 3 and display.shape[-1] == 3
    if not (display.ndim == 2 or colour) or display.dtype != np.uint8:
        raise ValueError(f"display must be a uint8 array (Rows x Columns, or x 3 for colour), got {display.dtype} {display.shape}")
    if heatmap.shape != display.shape[:2]:
        raise ValueError(f"heatmap shape {heatmap.shape} differs from display shape {display.shape}")
    if not np.all(np.isfinite(heatmap)):
        raise ValueError("heatmap contains NaN or infinite values")
    low, high = float(heatmap.min()), float(heatmap.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(f"heatmap values must lie in [0, 1], got [{low:.3g}, {high:.3g}]")


def resize(image: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Resize a uint8 or float 2-D array (area-averaging down, bilinear up), keeping its dtype kind."""
    if image.shape[:2] == (rows, columns):
        return image
    shrinking = rows * columns < image.shape[0] * image.shape[1]
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize((columns, rows), method))
    resized = Image.fromarray(image.astype(np.float32), mode="F").resize((columns, rows), method)
    return np.asarray(resized, dtype=np.float32)


def blend(
    display: np.ndarray,
    heatmap: np.ndarray,
    *,
    floor: float = HEAT_FLOOR,
    max_opacity: float = MAX_OPACITY,
    lut: np.ndarray = JET_LUT,
) -> np.ndarray:
    """Return Rows x Columns x 3 uint8 RGB: the display image (grayscale or colour) with heat above `floor` coloured in.

    Opacity rises linearly from 0 at `floor` to `max_opacity` at 1, so weak heat barely tints
    and the image stays visible under the hottest region too.
    """
    check_inputs(display, heatmap)
    if not 0.0 <= floor < 1.0 or not 0.0 < max_opacity <= 1.0:
        raise ValueError(f"need 0 <= floor < 1 and 0 < max_opacity <= 1, got {floor}, {max_opacity}")
    heat = np.clip(heatmap.astype(np.float32), 0.0, 1.0)
    alpha = np.clip((heat - floor) / (1.0 - floor), 0.0, 1.0)[..., None] * max_opacity
    colour = lut[np.round(heat * 255).astype(np.uint8)].astype(np.float32)
    base = (display if display.ndim == 3 else np.repeat(display[..., None], 3, axis=2)).astype(np.float32)
    return np.round(base * (1.0 - alpha) + colour * alpha).astype(np.uint8)
