"""Synthetic colonoscopy frames (RGB), with or without a polyp.

The scope's light sits at the camera, so brightness falls with depth: the mucosa near the lens is
bright pink-red, the lumen far away is dark. Haustral folds ring the lumen, submucosal vessels
wind across the wall, wet mucosa gives specular highlights, and the optics leave vignetting and a
black circular or octagonal border. The finding is a polyp: a raised, rounded lesion, a little
paler or redder than the wall, shaded as a dome and sometimes on a stalk. Distractors in both
classes: air bubbles (bright rims), stool debris (yellow-brown) and extra highlights.
`Phantom.image` is (rows, cols, 3) uint8 RGB here.
"""

from __future__ import annotations

import numpy as np

from dicom_ai.train.phantoms.common import MUCOSA, Phantom, blur, ellipse, grid, ridges, smooth_noise, soft, to_uint8

DEFAULT_SIZE = (192, 192)
MIN_SIZE = 64

_MUCOSA_RGB = np.array([0.9, 0.48, 0.42], dtype=np.float32)
_VESSEL_RGB = np.array([0.85, 0.55, 0.65], dtype=np.float32)  # multiplies the mucosa: darker, bluish red
_DEBRIS_RGB = np.array([0.75, 0.6, 0.25], dtype=np.float32)


def endoscopy_phantom(rng: np.random.Generator, *, finding: bool, size: tuple[int, int] = DEFAULT_SIZE) -> Phantom:
    """Draw one colonoscopy frame; with `finding`, add a polyp (sessile or stalked).

    Returns a `Phantom` whose image is RGB (rows, cols, 3) uint8, anatomy `MUCOSA` (the visible
    wall inside the optical field, lumen excluded).
    """
    rows, cols = int(size[0]), int(size[1])
    if min(rows, cols) < MIN_SIZE:
        raise ValueError(f"endoscopy size must be at least {MIN_SIZE} x {MIN_SIZE} pixels, got {size}")
    shape = (rows, cols)
    yy, xx = grid(shape)
    cx, cy = cols / rows / 2, 0.5
    lx, ly = cx + rng.uniform(-0.25, 0.25), cy + rng.uniform(-0.25, 0.25)  # lumen centre
    lumen_r = rng.uniform(0.06, 0.16)
    dist = np.hypot(xx - lx, yy - ly)
    theta = np.arctan2(yy - ly, xx - lx)
    warp = 0.08 * smooth_noise(rng, shape, 0.15 * rows)
    lumen = soft(lumen_r * (1 + 0.75 * warp) - dist, 0.03)
    # Depth falls from the lumen outwards; light falls with depth squared (and never quite to 0).
    nearness = np.clip(dist / 0.7, 0, 1.2)
    light = 0.12 + 0.95 * nearness ** rng.uniform(0.8, 1.4)

    phase = rng.uniform(1.6, 2.8) * np.log(dist + 0.03) + warp * 8 + 0.4 * np.sin(3 * theta + rng.uniform(0, 6.3))
    folds = np.sin(2 * np.pi * phase)
    shading = 1 + rng.uniform(0.12, 0.22) * folds * soft(dist - lumen_r, 0.1)
    vessels = ridges(smooth_noise(rng, shape, 0.02 * rows), 0.1) * soft(dist - 1.5 * lumen_r, 0.2)
    texture = 1 + 0.05 * smooth_noise(rng, shape, 0.006 * rows)
    tint = _MUCOSA_RGB * (1 + 0.08 * rng.standard_normal(3).astype(np.float32))
    colour = tint * (1 - vessels[..., None] * rng.uniform(0.3, 0.7) * (1 - _VESSEL_RGB))
    rgb = colour * (light * shading * texture * (1 - 0.85 * lumen))[..., None]
    specular = soft(folds - 0.95, 0.04) * soft(smooth_noise(rng, shape, 0.03 * rows) - 1.6, 0.4)

    mucosa = lumen < 0.5
    rgb, specular = _distractors(rng, rgb, specular, xx, yy, mucosa, shape)
    finding_mask = np.zeros(shape, dtype=bool)
    if finding:
        rgb, specular, finding_mask = _polyp(rng, rgb, specular, xx, yy, lx, ly, mucosa, light, shape)

    rgb = rgb + specular[..., None] * (1.3 - rgb)
    field, border = _optics(rng, xx, yy, cx, cy, cols / rows)
    rgb = blur(rgb * field[..., None], rng.uniform(0.3, 0.8))
    rgb = rgb + rng.uniform(0.005, 0.02) * rng.standard_normal(rgb.shape, dtype=np.float32)
    rgb = rgb * border[..., None]
    image = to_uint8(rgb)
    anatomy = mucosa & (border > 0.5)
    return Phantom(image=image, finding_mask=finding_mask & (border > 0.5), anatomy_mask=anatomy, anatomy=MUCOSA)


def _optics(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Vignetting (0..1) and the black border of the optical field (circle or octagon)."""
    r = np.hypot(xx - cx, yy - cy)
    field = 1 - rng.uniform(0.2, 0.45) * (r / 0.7) ** 2
    half = rng.uniform(0.47, 0.56)
    if rng.random() < 0.5:
        border = soft(half - r, 0.01)
    else:  # octagon: the intersection of a square and a 45-degree square
        dx, dy = np.abs(xx - cx), np.abs(yy - cy)
        border = soft(half - np.maximum(dx, dy), 0.01) * soft(1.45 * half - (dx + dy), 0.01)
    return field.astype(np.float32), border.astype(np.float32)


def _point(rng: np.random.Generator, where: np.ndarray, shape: tuple[int, int]) -> tuple[float, float]:
    ys, xs = np.nonzero(where)
    pick = rng.integers(ys.size)
    return (xs[pick] + 0.5) / shape[0], (ys[pick] + 0.5) / shape[0]


def _polyp(
    rng: np.random.Generator,
    rgb: np.ndarray,
    specular: np.ndarray,
    xx: np.ndarray,
    yy: np.ndarray,
    lx: float,
    ly: float,
    mucosa: np.ndarray,
    light: np.ndarray,
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A dome lit from the camera: brighter centre, darker rim, a highlight; sometimes a stalk."""
    centre = np.hypot(xx - xx.mean(), yy - 0.5) < 0.36
    x0, y0 = _point(rng, mucosa & centre if (mucosa & centre).any() else mucosa, shape)
    radius = rng.uniform(0.06, 0.14)
    ry = radius * rng.uniform(0.75, 1.25)
    r = np.sqrt(((xx - x0) / radius) ** 2 + ((yy - y0) / ry) ** 2)
    lobes = 1 + 0.08 * smooth_noise(rng, shape, 0.04 * shape[0])
    head = soft(lobes - r, 0.08)
    height = np.sqrt(np.clip(1 - (r / lobes) ** 2, 0, 1))
    stalk = np.zeros_like(head)
    if rng.random() < 0.35:  # pedunculated: a stalk from the head back towards the wall
        angle = np.arctan2(y0 - ly, x0 - lx) + rng.uniform(-0.6, 0.6)
        length = radius * rng.uniform(1.2, 2.2)
        along = (xx - x0) * np.cos(angle) + (yy - y0) * np.sin(angle)
        across = -(xx - x0) * np.sin(angle) + (yy - y0) * np.cos(angle)
        stalk = soft(0.3 * radius - np.abs(across), 0.01) * soft(along, 0.01) * soft(length - along, 0.02) * (1 - head)
    tint = np.array([rng.uniform(0.95, 1.1), rng.uniform(0.8, 1.15), rng.uniform(0.8, 1.1)], dtype=np.float32)
    pits = 1 + 0.06 * smooth_noise(rng, shape, 0.004 * shape[0])
    lit = (0.6 + 0.6 * height) * pits * np.maximum(light, 0.5) * rng.uniform(0.9, 1.15)
    polyp_rgb = _MUCOSA_RGB * tint * lit[..., None]
    stalk_rgb = _MUCOSA_RGB * (0.8 * np.maximum(light, 0.4))[..., None]
    shadow = 1 - rng.uniform(0.25, 0.45) * np.exp(-(((r - 1.05) / 0.12) ** 2)) * (1 - head)  # where it rises from the wall
    out = (rgb * shadow[..., None]) * (1 - head - stalk)[..., None] + polyp_rgb * head[..., None] + stalk_rgb * stalk[..., None]
    glint = ellipse(xx, yy, x0 - 0.3 * radius, y0 - 0.3 * ry, 0.12 * radius, 0.08 * radius, soft=0.6)
    specular = np.maximum(specular, glint * (rng.random() < 0.8))
    return out, specular, (head + stalk) > 0.5


def _distractors(
    rng: np.random.Generator,
    rgb: np.ndarray,
    specular: np.ndarray,
    xx: np.ndarray,
    yy: np.ndarray,
    mucosa: np.ndarray,
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Bubbles (thin bright rims, clear inside), stool debris (yellow-brown patches), highlights."""
    rims = np.zeros(shape, dtype=np.float32)
    for _ in range(int(rng.integers(0, 3))):
        x0, y0 = _point(rng, mucosa, shape)
        for _ in range(int(rng.integers(1, 5))):  # bubbles come in clusters
            r = rng.uniform(0.01, 0.035)
            bx, by = x0 + rng.normal(0, 0.03), y0 + rng.normal(0, 0.03)
            d = np.hypot(xx - bx, yy - by) / r
            rims = np.maximum(rims, np.exp(-(((d - 1) / 0.12) ** 2)))
            specular = np.maximum(specular, ellipse(xx, yy, bx - 0.4 * r, by - 0.4 * r, 0.2 * r, 0.2 * r, soft=0.8))
    if rims.any():
        rgb = rgb * (1 + 0.25 * rims)[..., None]
    if rng.random() < 0.4:
        x0, y0 = _point(rng, mucosa, shape)
        rx = rng.uniform(0.02, 0.07)
        patch = ellipse(xx, yy, x0, y0, rx, rx * rng.uniform(0.5, 1.5), soft=0.5)
        patch = patch * soft(smooth_noise(rng, shape, 0.01 * shape[0]) + 0.5, 0.8)
        rgb = rgb * (1 - patch[..., None]) + (_DEBRIS_RGB * rgb.mean(-1, keepdims=True) / 0.6) * patch[..., None]
    return rgb, specular
