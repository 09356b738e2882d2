"""Synthetic axial brain MR slices (T2- or FLAIR-like), with or without a mass and its oedema.

Drawn as tissue maps mixed with per-sequence signal levels: scalp, dark skull, CSF (bright on T2,
dark on FLAIR), cortex with gyri and sulci, white matter, deep grey nuclei, lateral ventricles of
varying size; then a smooth bias field and Rician noise (the magnitude of complex Gaussian noise).
The finding is a hyperintense, irregular mass with finger-like oedema that spreads along white
matter. Distractors in both classes: small periventricular white-matter dots and dark flow voids,
and on T2 the bright CSF itself, so brightness alone does not mean a lesion.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from dicom_ai.train.phantoms.common import BRAIN, Phantom, blur, ellipse, grid, ridges, smooth_noise, soft, to_uint8

DEFAULT_SIZE = (192, 192)
MIN_SIZE = 64

# Relative signal of each tissue: (T2, FLAIR).
_SIGNAL = {
    "scalp": (0.55, 0.5),
    "skull": (0.04, 0.04),
    "csf": (1.0, 0.08),
    "grey": (0.5, 0.5),
    "white": (0.34, 0.36),
    "lesion": (0.82, 0.95),
    "oedema": (0.72, 0.8),
}


def brain_mr_phantom(rng: np.random.Generator, *, finding: bool, size: tuple[int, int] = DEFAULT_SIZE) -> Phantom:
    """Draw one axial slice; with `finding`, add a hyperintense mass with surrounding oedema.

    Returns a `Phantom` (uint8 MONOCHROME2 image) with anatomy `BRAIN` (brain parenchyma).
    """
    rows, cols = int(size[0]), int(size[1])
    if min(rows, cols) < MIN_SIZE:
        raise ValueError(f"brain MR size must be at least {MIN_SIZE} x {MIN_SIZE} pixels, got {size}")
    shape = (rows, cols)
    yy, xx = grid(shape)
    seq = int(rng.random() < 0.5)  # 0: T2, 1: FLAIR
    level = {name: values[seq] for name, values in _SIGNAL.items()}

    cx, cy = cols / rows / 2 + rng.uniform(-0.03, 0.03), 0.5 + rng.uniform(-0.03, 0.03)
    ax, ay = rng.uniform(0.3, 0.36), rng.uniform(0.38, 0.44)  # inner table of the skull
    angle = rng.uniform(-0.12, 0.12)  # head slightly rotated
    u = ((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)) / ax
    v = (-(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)) / ay
    rho = np.sqrt(u**2 + v**2)
    bone = rng.uniform(0.05, 0.09)
    scalp = soft(1 + bone + rng.uniform(0.06, 0.1) - rho, 0.02)
    skull = soft(1 + bone - rho, 0.02)
    intracranial = soft(1 - rho, 0.02)
    brain = soft(0.95 + 0.02 * smooth_noise(rng, shape, 0.05 * rows) - rho, 0.03)

    folding = smooth_noise(rng, shape, 0.02 * rows)
    white = soft(0.8 + 0.08 * folding - rho, 0.06) * brain
    sulci = ridges(folding, 0.25) * soft(rho - 0.72, 0.1) * brain
    fissure = np.exp(-((u / 0.012) ** 2)) * soft(np.abs(v) - 0.25, 0.1)
    deep_grey = np.zeros(shape, dtype=np.float32)
    for side in (-1, 1):
        deep_grey = np.maximum(deep_grey, _at(ellipse, u, v, side * 0.22, 0.05, 0.13, 0.18, 0.5))
    scale = rng.uniform(0.6, 1.8)  # small ventricles in the young, large with atrophy or hydrocephalus
    ventricles = np.zeros(shape, dtype=np.float32)
    for side in (-1, 1):
        ventricles = np.maximum(ventricles, _at(ellipse, u, v, side * 0.09 * scale**0.5, -0.12, 0.05 * scale, 0.3, 0.3))
        ventricles = np.maximum(ventricles, _at(ellipse, u, v, side * 0.16 * scale**0.5, 0.25, 0.04 * scale, 0.1, 0.4))
    ventricles *= brain
    csf = np.clip(intracranial - brain + sulci + fissure * intracranial + ventricles, 0, 1)

    tissue = level["grey"] * brain + (level["white"] - level["grey"]) * white * (1 - deep_grey)
    signal = level["scalp"] * (scalp - skull) + level["skull"] * (skull - intracranial)
    signal = signal + tissue * (1 - csf) + level["csf"] * csf
    signal = signal * (1 + 0.04 * smooth_noise(rng, shape, 0.015 * rows) * brain)
    parenchyma = (brain > 0.5) & (ventricles < 0.5) & (csf < 0.5)

    signal = _distractors(rng, signal, u, v, white, ventricles, csf, parenchyma, shape, level)
    finding_mask = np.zeros(shape, dtype=bool)
    if finding:
        signal, finding_mask = _mass(rng, signal, u, v, rho, white, shape, level)

    bias = np.exp(rng.uniform(0.05, 0.2) * smooth_noise(rng, shape, 0.4 * rows))
    signal = blur(signal * bias, rng.uniform(0.4, 0.9))
    sigma = rng.uniform(0.015, 0.04)
    real = signal + sigma * rng.standard_normal(shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(shape, dtype=np.float32)
    magnitude = np.sqrt(real**2 + imaginary**2)
    high = np.percentile(magnitude[::2, ::2], rng.uniform(99, 99.9))
    image = to_uint8(np.clip(magnitude / max(high, 1e-3), 0, 1) ** rng.uniform(0.8, 1.2))
    return Phantom(image=image, finding_mask=finding_mask, anatomy_mask=brain > 0.5, anatomy=BRAIN)


class _Shape(Protocol):
    """A soft 2-D shape such as `ellipse`: centre, radii, edge width."""

    def __call__(
        self, xx: np.ndarray, yy: np.ndarray, x0: float, y0: float, rx: float, ry: float, soft: float = ...
    ) -> np.ndarray: ...


def _at(shape_fn: _Shape, u: np.ndarray, v: np.ndarray, u0: float, v0: float, ru: float, rv: float, soft_edge: float) -> np.ndarray:
    """A shape placed in head coordinates (u, v: 1 at the inner table)."""
    return shape_fn(u, v, u0, v0, ru, rv, soft=soft_edge)


def _mass(
    rng: np.random.Generator,
    signal: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    rho: np.ndarray,
    white: np.ndarray,
    shape: tuple[int, int],
    level: dict[str, float],
) -> tuple[np.ndarray, np.ndarray]:
    """A lobulated hyperintense mass; oedema around it, reaching further along white matter."""
    for _ in range(50):
        u0, v0 = rng.uniform(-0.7, 0.7), rng.uniform(-0.7, 0.7)
        if np.hypot(u0, v0) < 0.72 and abs(u0) > 0.1:
            break
    radius = rng.uniform(0.04, 0.18)  # from a few millimetres to a large mass
    du, dv = u - u0, v - v0
    r = np.hypot(du, dv)
    theta = np.arctan2(dv, du)
    wobble = sum(rng.uniform(0.03, 0.1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 6))
    core = soft(radius * (1 + wobble) - r, 0.03)
    spread = radius * rng.uniform(1.5, 2.5)
    fingers = 0.35 * smooth_noise(rng, shape, 0.03 * shape[0])
    oedema = soft(spread * (1 + fingers) * (0.6 + 0.4 * white) - r, 0.05) * soft(0.95 - rho, 0.05)
    oedema = np.maximum(oedema - core, 0)
    texture = 1 + 0.08 * smooth_noise(rng, shape, 0.01 * shape[0])
    # Conspicuity varies: some lesions barely differ from oedema-free white matter.
    strength = rng.uniform(0.4, 1.0)
    core, oedema = core * strength, oedema * strength
    out = signal * (1 - core - oedema) + level["lesion"] * core * texture + level["oedema"] * oedema
    return out.astype(np.float32), (core + oedema) > 0.5 * strength


def _distractors(
    rng: np.random.Generator,
    signal: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    white: np.ndarray,
    ventricles: np.ndarray,
    csf: np.ndarray,
    parenchyma: np.ndarray,
    shape: tuple[int, int],
    level: dict[str, float],
) -> np.ndarray:
    """Periventricular white-matter dots (small, bright) and flow voids (small, dark), both classes."""
    near_ventricles = parenchyma & (blur(ventricles, 0.04 * shape[0]) > 0.05) & (white > 0.5)
    ys, xs = np.nonzero(near_ventricles)
    for _ in range(int(rng.integers(0, 7)) if ys.size else 0):
        pick = rng.integers(ys.size)
        r = rng.uniform(0.015, 0.035)
        dot = _at(ellipse, u, v, u[ys[pick], xs[pick]], v[ys[pick], xs[pick]], r, r, 0.6)
        signal = signal * (1 - dot) + level["oedema"] * dot
    for _ in range(int(rng.integers(0, 4))):  # vessels in the basal cisterns and sylvian fissures
        u0, v0 = rng.uniform(-0.45, 0.45), rng.uniform(-0.15, 0.15)
        r = rng.uniform(0.015, 0.03)
        void = _at(ellipse, u, v, u0, v0, r, r, 0.5)
        signal = signal * (1 - 0.9 * void)
    return signal
