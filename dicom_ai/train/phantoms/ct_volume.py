"""Synthetic non-contrast head CT volumes in Hounsfield units, with or without a haemorrhage.

The head is an ellipsoid cut at the skull base, so anatomy changes from slice to slice: scalp,
skull (diploe between two cortical tables), a thin CSF space, grey and white matter, lateral
ventricles only in the middle slices, the falx. The finding is acute blood (50-80 HU): an
intraparenchymal haematoma (irregular 3-D blob, sometimes with a low-density oedema rim) or an
extra-axial crescent (subdural) under the skull, spanning a few slices. Distractors in both classes:
pineal and choroid-plexus calcifications (> 100 HU, small), beam-hardening streaks near the skull
base, and noise. `window` turns HU into the brain-window display a reader would use.
"""

from __future__ import annotations

import numpy as np

from dicom_ai.train.phantoms.common import Scalar, VolumePhantom, smooth_noise_3d, soft

DEFAULT_SHAPE = (32, 96, 96)
MIN_SHAPE = (8, 48, 48)
AIR_HU = -1000


def window(volume_hu: np.ndarray, center: float = 40, width: float = 80) -> np.ndarray:
    """Hounsfield units to uint8 with a linear window (PS3.3 C.11.2.1.2, simplified): brain by default."""
    low = center - width / 2
    scaled = (np.asarray(volume_hu, dtype=np.float32) - low) / max(float(width), 1e-3)
    return np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)


def ct_volume_phantom(
    rng: np.random.Generator, *, finding: bool, shape: tuple[int, int, int] = DEFAULT_SHAPE
) -> VolumePhantom:
    """Draw one head CT volume (D, H, W) in HU; with `finding`, add an intracranial haemorrhage."""
    depth, rows, cols = (int(n) for n in shape)
    if depth < MIN_SHAPE[0] or rows < MIN_SHAPE[1] or cols < MIN_SHAPE[2]:
        raise ValueError(f"CT volume shape must be at least {MIN_SHAPE} (D, H, W), got {shape}")
    field_mm = rng.uniform(220, 250)
    pixel = field_mm / max(rows, cols)
    dz = rng.uniform(130, 160) / depth  # from skull base to vertex
    spacing = (round(dz, 3), round(pixel, 3), round(pixel, 3))
    # Millimetre coordinates from the centre of the field; z from the bottom slice upwards.
    z = ((np.arange(depth, dtype=np.float32) + 0.5) * dz)[:, None, None]
    y = ((np.arange(rows, dtype=np.float32) - rows / 2 + 0.5) * pixel)[None, :, None]
    x = ((np.arange(cols, dtype=np.float32) - cols / 2 + 0.5) * pixel)[None, None, :]

    ax, ay, az = rng.uniform(65, 75), rng.uniform(80, 92), rng.uniform(85, 100)  # inner table, mm
    cz = rng.uniform(0.2, 0.35) * depth * dz  # the widest section sits low in the volume
    cx, cy = rng.uniform(-5, 5), rng.uniform(-5, 5)
    u, v, w = (x - cx) / ax, (y - cy) / ay, (z - cz) / az
    rho = np.sqrt(u**2 + v**2 + w**2)
    mm = 1 / np.float32(ax)  # one millimetre in rho units, roughly
    skull_t, scalp_t = rng.uniform(5, 8) * mm, rng.uniform(3, 6) * mm

    head = soft(1 + skull_t + scalp_t - rho, mm)
    outer_table = soft(1 + skull_t - rho, mm)
    inside = soft(1 - rho, mm)
    brain = soft(1 - 2.5 * mm - rho, 1.5 * mm)
    diploe = np.exp(-(((rho - 1 - skull_t / 2) / (skull_t / 4)) ** 2))

    folding = smooth_noise_3d(rng, (depth, rows, cols), (1.0, 3.0 / pixel * 2, 3.0 / pixel * 2))
    white = soft(0.78 + 0.07 * folding - rho, 0.05) * brain
    ventricles = np.zeros(np.broadcast_shapes(u.shape, v.shape, w.shape), dtype=np.float32)
    scale = rng.uniform(0.7, 1.6)
    for side in (-1, 1):
        r = np.sqrt(((u - side * 0.12 * scale**0.5) / (0.07 * scale)) ** 2 + ((v + 0.05) / 0.35) ** 2 + ((w - 0.18) / 0.12) ** 2)
        ventricles = np.maximum(ventricles, soft(1 - r, 0.3))
    ventricles *= brain
    falx = np.exp(-((u / (1.5 * mm)) ** 2)) * soft(np.abs(v) - 0.3, 0.1) * brain
    csf = np.clip(inside - brain + ventricles, 0, 1)

    parenchyma_hu = 30 + 8 * (1 - white) + 1.5 * folding  # grey ~38, white ~30
    hu = AIR_HU + (40 - AIR_HU) * head  # scalp: soft tissue, ~40 HU
    bone_hu = rng.uniform(1100, 1500) - 500 * diploe
    hu = hu + (bone_hu - 40) * (outer_table - inside)
    hu = hu * (1 - inside) + inside * (5 * csf + parenchyma_hu * (1 - csf))
    hu = hu + 25 * falx  # the falx is denser than brain, but thin

    hu = _calcifications(rng, hu, u, v, w, mm)
    mask = np.zeros(hu.shape, dtype=bool)
    if finding:
        hu, mask = _haemorrhage(rng, hu, u, v, w, rho, brain, inside, mm, depth)

    hu = _streaks(rng, hu, x, y, z, cz, az, head)
    hu = hu + rng.uniform(3, 6) * smooth_noise_3d(rng, hu.shape, (0.5, 0.8, 0.8)) * head
    volume = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return VolumePhantom(volume_hu=volume, finding_mask=mask, spacing_mm=spacing)


def _calcifications(
    rng: np.random.Generator, hu: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray, mm: Scalar
) -> np.ndarray:
    """Pineal gland (midline, behind the third ventricle) and choroid plexus (in both atria)."""
    spots = []
    if rng.random() < 0.7:
        spots.append((rng.uniform(-0.02, 0.02), 0.22, 0.12))
    if rng.random() < 0.6:
        spots += [(side * 0.2, 0.32, 0.2) for side in (-1, 1)]
    for u0, v0, w0 in spots:
        radius = rng.uniform(1.5, 3.5) * mm
        d = np.sqrt((u - u0) ** 2 + (v - v0) ** 2 + ((w - w0) * 0.4) ** 2)
        spot = soft(radius - d, mm)
        hu = hu + spot * np.maximum(rng.uniform(150, 400) - hu, 0)
    return hu


def _haemorrhage(
    rng: np.random.Generator,
    hu: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    w: np.ndarray,
    rho: np.ndarray,
    brain: np.ndarray,
    inside: np.ndarray,
    mm: Scalar,
    depth: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Acute blood: an intraparenchymal haematoma, or a subdural crescent under the inner table."""
    blood_hu = rng.uniform(48, 80)  # older or anaemic blood is barely denser than grey matter
    if rng.random() < 0.6:
        for _ in range(50):
            u0, v0, w0 = rng.uniform(-0.55, 0.55), rng.uniform(-0.6, 0.6), rng.uniform(-0.1, 0.5)
            if np.sqrt(u0**2 + v0**2 + w0**2) < 0.7 and abs(u0) > 0.12:
                break
        ru, rv = rng.uniform(0.05, 0.22), rng.uniform(0.05, 0.22)  # from a small bleed to a large haematoma
        rw = rng.uniform(0.05, 0.14)
        d = np.sqrt(((u - u0) / ru) ** 2 + ((v - v0) / rv) ** 2 + ((w - w0) / rw) ** 2)
        lumps = smooth_noise_3d(rng, hu.shape, (1.0, 3.0, 3.0))
        blood = soft(1 + 0.2 * lumps - d, 0.2) * brain
        oedema = soft(1.5 - d, 0.3) * (1 - blood) * brain * (rng.random() < 0.6)
        hu = hu - 8 * oedema
    else:
        side = rng.choice((-1.0, 1.0))
        thickness = rng.uniform(2.5, 10) * mm
        centre_w = rng.uniform(0.05, 0.45)
        extent = rng.uniform(0.15, 0.3)
        lateral = soft(side * u - 0.1, 0.1) * soft(extent - np.abs(w - centre_w), 0.05)
        taper = np.clip(side * u / np.maximum(rho, 1e-3), 0, 1)  # thickest at the convexity
        blood = soft(rho - (1 - thickness * taper), mm) * inside * lateral
    out = hu * (1 - blood) + blood_hu * blood
    mask = blood > 0.5
    if not mask.any():  # a very small haematoma between voxels: keep its centre voxel
        mask.flat[int(np.argmax(blood))] = True
        out.flat[int(np.argmax(blood))] = blood_hu
    return out, mask


def _streaks(
    rng: np.random.Generator, hu: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray, cz: float, az: float, head: np.ndarray
) -> np.ndarray:
    """Beam hardening between dense bone at the skull base: dark and bright streaks, low slices only."""
    n = int(rng.integers(0, 5))
    if n == 0:
        return hu
    low_slices = soft((cz - 0.2 * az) - z, 0.2 * az)
    streaks = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=np.float32)
    for _ in range(n):
        angle = rng.uniform(0, np.pi)
        offset = rng.uniform(-30, 30)
        distance = x * np.sin(angle) - y * np.cos(angle) - offset
        streaks = streaks + rng.uniform(-25, 15) * np.exp(-((distance / rng.uniform(1.5, 3)) ** 2))
    return hu + streaks * low_slices * head
