"""Synthetic frontal (PA) chest radiographs, with or without a lung consolidation.

Why synthetic: the demo model must be reproducible from the repository alone, with no patient
data and no downloads. The phantom is built in a "density" domain (brighter = more attenuating,
the display convention of a MONOCHROME2 image) from the parts a reader looks at: body outline,
two lung fields shaped by the diaphragm domes, mediastinum with spine and heart shadow, ribs and
clavicles, vascular markings; then a random exposure window, gamma, detector blur, noise,
sometimes collimation and a side marker. A consolidation is a patchy, irregular opacity confined
to one lung field; its mask is returned so that Grad-CAM can be scored with the pointing game.

Everything is drawn from the `numpy.random.Generator` passed in, so a seed gives the same
images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dicom_ai.train.phantoms.common import LUNGS, Phantom
from dicom_ai.train.phantoms.common import blur as _blur
from dicom_ai.train.phantoms.common import ellipse as _ellipse
from dicom_ai.train.phantoms.common import smooth_noise as _smooth_noise
from dicom_ai.train.phantoms.common import soft as _soft

DEFAULT_SIZE = 256  # rendered larger than the model input so that inference-style resizing is exercised
MIN_SIZE = 64


def chest_phantom(rng: np.random.Generator, *, finding: bool, size: int = DEFAULT_SIZE) -> Phantom:
    """Draw one frontal chest radiograph; with `finding`, add a consolidation in one lung."""
    if size < MIN_SIZE:
        raise ValueError(f"phantom size must be at least {MIN_SIZE} pixels, got {size}")
    axis = (np.arange(size, dtype=np.float32) + 0.5) / np.float32(size)
    yy, xx = axis[:, None], axis[None, :]
    g = _Geometry.draw(rng)

    body, thickness = _body(g, xx, yy)
    right_lung = _lung(g, xx, yy, side=-1)
    left_lung = _lung(g, xx, yy, side=+1)
    lungs = np.maximum(right_lung, left_lung)
    heart = _heart(g, xx, yy)
    mediastinum = np.maximum(_mediastinum(g, xx, yy), heart)

    density = 0.75 * thickness + 0.1 * body
    # Lungs are air: they lower the density; the heart lies in front and takes most of it back.
    density -= g.lung_darkness * lungs * (1 - 0.8 * heart) * (0.85 + 0.15 * thickness)
    density += 0.05 * mediastinum * (1 - heart)  # the heart shows only against the lungs
    density += 0.1 * _spine(g, xx, yy)
    density += g.vessel_strength * _vessels(rng, g, xx, yy, lungs, size)
    density += g.rib_strength * _ribs(g, xx, yy) * body * (0.2 + 0.8 * lungs)
    density += 0.12 * _clavicles(g, xx, yy)
    if rng.random() < 0.5:  # upper arms beside the chest, as on a tightly collimated film
        density += 0.5 * _arms(g, xx, yy) * (1 - body)
    if rng.random() < 0.4:  # breast or pectoral soft tissue: a smooth bilateral lower-zone haze
        density += rng.uniform(0.04, 0.1) * _breasts(g, xx, yy) * body
    if rng.random() < 0.3:  # stomach gas under the left hemidiaphragm
        bubble = _ellipse(xx, yy, g.cx + 0.17 * g.s, g.base_y + 0.06 * g.s, 0.05 * g.s, 0.03 * g.s, soft=0.3)
        density -= 0.15 * bubble * (1 - lungs)

    if rng.random() < 0.5:
        density += _distractors(rng, g, xx, yy, body, lungs, size)

    finding_mask = np.zeros((size, size), dtype=bool)
    if finding:
        opacity, finding_mask = _consolidation(rng, g, xx, yy, right_lung, left_lung, heart, size)
        density = density + opacity

    density = density + 0.025 * _smooth_noise(rng, size, 0.03 * size) * body
    image = _expose(rng, density, size)
    return Phantom(image=image, finding_mask=finding_mask, anatomy_mask=lungs > 0.5, anatomy=LUNGS)


@dataclass(frozen=True)
class _Geometry:
    """Where the anatomy lies, in fractions of the image width (x) and height (y)."""

    s: float  # zoom: 1 = the thorax fills the image like a typical PA film
    cx: float
    cy: float
    mediastinum: float  # half-width of the mediastinum
    lung_w: float  # widest lung field, from the mediastinum outwards
    apex_y: float
    base_y: float
    dome: float
    heart_rx: float
    heart_ry: float
    lung_darkness: float
    rib_strength: float
    vessel_strength: float
    rib_phase: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> _Geometry:
        s = rng.uniform(0.82, 1.2)
        cy = 0.5 + rng.uniform(-0.05, 0.06)
        return cls(
            s=s,
            cx=0.5 + rng.uniform(-0.04, 0.04),
            cy=cy,
            mediastinum=rng.uniform(0.045, 0.07) * s,
            lung_w=rng.uniform(0.29, 0.35) * s,
            apex_y=cy - rng.uniform(0.36, 0.42) * s,
            base_y=cy + rng.uniform(0.14, 0.24) * s,
            dome=rng.uniform(0.05, 0.1) * s,
            heart_rx=rng.uniform(0.15, 0.2) * s,
            heart_ry=rng.uniform(0.11, 0.15) * s,
            lung_darkness=rng.uniform(0.3, 0.45),
            rib_strength=rng.uniform(0.05, 0.12),
            vessel_strength=rng.uniform(0.05, 0.1),
            rib_phase=rng.uniform(-0.02, 0.02) * s,
        )


def _body(g: _Geometry, xx: np.ndarray, yy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thorax outline (a superellipse, wide at the shoulders) and its thickness (thicker in the middle)."""
    ax, ay = 0.47 * g.s, 0.64 * g.s
    r = (np.abs((xx - g.cx) / ax) ** 3 + np.abs((yy - (g.cy + 0.12 * g.s)) / ay) ** 3) ** (1 / 3)
    body = _soft(1 - r, 0.03)
    thickness = np.sqrt(np.clip(1 - r**2, 0, 1)) * body
    return body, thickness


def _lung(g: _Geometry, xx: np.ndarray, yy: np.ndarray, side: int) -> np.ndarray:
    """One lung field (0..1): rounded apex, convex lateral wall, base cut by a diaphragm dome.

    side -1 is the image left (the patient's right lung), +1 the image right.
    """
    base = g.base_y - (0.02 * g.s if side < 0 else 0)  # the right hemidiaphragm sits higher
    t = np.clip((yy - g.apex_y) / (base - g.apex_y), 0, 1)
    offset = side * (xx - g.cx)  # distance from the midline towards this lung's chest wall
    lateral = g.mediastinum + g.lung_w * (0.25 + 0.75 * np.sqrt(t * (2 - t)))
    medial = g.mediastinum + 0.1 * g.s * (1 - t) ** 3
    inside = _soft(lateral - offset, 0.02) * _soft(offset - medial, 0.02)
    u = np.clip((offset - g.mediastinum) / g.lung_w, 0, 1)
    dome = base + 0.04 * g.s * u**4 - g.dome * np.sin(np.pi * np.clip(u * 0.85, 0, 1))
    return inside * _soft(dome - yy, 0.015) * _soft(yy - g.apex_y, 0.03)


def _mediastinum(g: _Geometry, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    half = g.mediastinum * (1 + 0.3 * _soft(g.apex_y + 0.12 * g.s - yy, 0.1))  # wider above the aortic arch
    return _soft(half - np.abs(xx - g.cx), 0.02) * _soft(yy - (g.apex_y - 0.1), 0.05)


def _heart(g: _Geometry, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Cardiac silhouette: mostly to the image right, sitting on the left hemidiaphragm."""
    heart = _ellipse(xx, yy, g.cx + 0.35 * g.heart_rx, g.base_y - 0.7 * g.heart_ry, g.heart_rx, g.heart_ry, soft=0.1)
    knob = _ellipse(xx, yy, g.cx + g.mediastinum + 0.01, g.apex_y + 0.15 * g.s, 0.04 * g.s, 0.035 * g.s, soft=0.2)
    return np.maximum(heart, knob)


def _spine(g: _Geometry, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    column = _soft(0.03 * g.s - np.abs(xx - g.cx), 0.01)
    vertebrae = 0.75 + 0.25 * np.cos(np.pi * (yy - g.cy) / (0.035 * g.s)) ** 2
    return column * vertebrae


def _ribs(g: _Geometry, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Posterior ribs (arcs curving down laterally) and fainter anterior ribs (sloping down medially)."""
    spacing = (g.base_y - g.apex_y) / 7.5
    u = np.clip(np.abs(xx - g.cx) / (0.45 * g.s), 0, 1.2)
    lateral = _soft(u - 0.08, 0.05)
    posterior = (yy - g.apex_y - g.rib_phase + 0.1 * g.s * u - 0.3 * g.s * u**2) / spacing
    anterior = (yy - g.apex_y - g.rib_phase - 0.08 * g.s - 0.2 * g.s * (1 - u) ** 2) / (1.3 * spacing)
    out = np.zeros_like(posterior)
    for phase, weight, first, last in ((posterior, 1.0, -0.2, 10.0), (anterior, 0.45, -0.2, 6.0)):
        f = phase - np.floor(phase)  # position across one rib period
        shaft = _soft(0.28 - np.abs(f - 0.3), 0.08)  # a rib occupies ~40% of its period
        cortex = np.exp(-(((np.abs(f - 0.3) - 0.2) / 0.05) ** 2))  # brighter edges
        out += weight * (0.7 * shaft + 0.5 * cortex) * _soft(phase - first, 0.3) * _soft(last - phase, 0.3)
    return out * lateral


def _clavicles(g: _Geometry, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    u = np.abs(xx - g.cx) / (0.36 * g.s)
    centre = g.apex_y + 0.05 * g.s - 0.07 * g.s * u + 0.03 * g.s * u**2
    band = np.clip(1 - np.abs(yy - centre) / (0.018 * g.s), 0, 1) ** 0.5
    return band * _soft(u - 0.1, 0.05) * _soft(1.05 - u, 0.1)


def _vessels(rng: np.random.Generator, g: _Geometry, xx: np.ndarray, yy: np.ndarray, lungs: np.ndarray, size: int) -> np.ndarray:
    """Vascular markings: thin winding ridges (zero crossings of smooth noise), denser at the hila."""
    ridges = np.exp(-((_smooth_noise(rng, size, 0.012 * size) / 0.18) ** 2))
    hilum = np.zeros_like(ridges)
    for side in (-1, 1):
        distance = np.hypot(xx - (g.cx + side * (g.mediastinum + 0.03 * g.s)), yy - (g.cy - 0.02 * g.s))
        hilum = np.maximum(hilum, np.exp(-distance / (0.13 * g.s)))
    return ridges * (0.25 + hilum) * lungs


def _arms(g: _Geometry, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    out = np.zeros_like(xx * yy)
    for side in (-1, 1):
        out += _ellipse(xx, yy, g.cx + side * 0.55 * g.s, g.apex_y + 0.1 * g.s, 0.1 * g.s, 0.35 * g.s, soft=0.4)
    return np.clip(out, 0, 1)


def _breasts(g: _Geometry, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    out = np.zeros_like(xx * yy)
    for side in (-1, 1):
        out += _ellipse(xx, yy, g.cx + side * 0.25 * g.s, g.base_y + 0.02 * g.s, 0.19 * g.s, 0.15 * g.s, soft=0.5)
    return out


def _patchy_opacity(
    rng: np.random.Generator, g: _Geometry, xx: np.ndarray, yy: np.ndarray, x0: float, y0: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A lobulated region around (x0, y0) (0..1) and its mottled texture (air bronchograms)."""
    radius = rng.uniform(0.055, 0.12) * g.s
    stretch = rng.uniform(0.7, 1.4)
    r = np.sqrt(((xx - x0) / (radius * stretch)) ** 2 + ((yy - y0) * stretch / radius) ** 2)
    region = _soft((1 - r) + 0.4 * _smooth_noise(rng, size, 0.03 * size), 0.25)
    mottling = np.clip(0.75 + 0.3 * _smooth_noise(rng, size, 0.008 * size), 0.3, 1.2)
    return region, mottling


def _consolidation(
    rng: np.random.Generator,
    g: _Geometry,
    xx: np.ndarray,
    yy: np.ndarray,
    right_lung: np.ndarray,
    left_lung: np.ndarray,
    heart: np.ndarray,
    size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A patchy, irregular opacity inside one lung field; it stops at the lung's borders."""
    for _ in range(20):
        lung = right_lung if rng.random() < 0.5 else left_lung
        ys, xs = np.nonzero((lung > 0.95) & (heart < 0.1))
        if ys.size == 0:
            continue
        pick = rng.integers(ys.size)
        region, mottling = _patchy_opacity(rng, g, xx, yy, (xs[pick] + 0.5) / size, (ys[pick] + 0.5) / size, size)
        region = region * lung
        mask = region > 0.5
        if mask.sum() < (0.05 * size) ** 2:
            continue
        strength = rng.uniform(0.12, 0.32)
        return (strength * region * mottling).astype(np.float32), mask
    raise RuntimeError("could not place a consolidation inside a lung field; the geometry is degenerate")


def _distractors(
    rng: np.random.Generator, g: _Geometry, xx: np.ndarray, yy: np.ndarray, body: np.ndarray, lungs: np.ndarray, size: int
) -> np.ndarray:
    """Mottled densities outside the lungs (bowel content, soft tissue folds), in both classes.

    They look like a consolidation but lie where none can be, so the model must learn that
    *where* matters: it keeps it (and Grad-CAM) from answering to texture alone.
    """
    out = np.zeros((size, size), dtype=np.float32)
    ys, xs = np.nonzero((body > 0.9) & (lungs < 0.05))
    for _ in range(int(rng.integers(1, 3))):
        if ys.size == 0:
            break
        pick = rng.integers(ys.size)
        region, mottling = _patchy_opacity(rng, g, xx, yy, (xs[pick] + 0.5) / size, (ys[pick] + 0.5) / size, size)
        out += rng.uniform(0.08, 0.3) * region * mottling
    return out * (1 - lungs)


def _expose(rng: np.random.Generator, density: np.ndarray, size: int) -> np.ndarray:
    """Density to a displayed uint8 image: collimation, window, gamma, detector blur, noise, marker."""
    density = np.asarray(density, dtype=np.float32)
    if rng.random() < 0.3:  # collimator: unexposed (white) strips along some edges
        top, bottom, left, right = (int(m) for m in rng.uniform(0, 0.06, size=4) * size * (rng.random(4) < 0.5))
        density = density.copy()
        high = density.max() + 0.2
        density[:top, :] = high
        density[size - bottom :, :] = high
        density[:, :left] = high
        density[:, size - right :] = high
    low, high = np.percentile(density[::3, ::3], (rng.uniform(0.5, 8), rng.uniform(97, 100)))
    low -= rng.uniform(0, 0.05)
    high += rng.uniform(0, 0.1)
    image = np.clip((density - low) / max(high - low, 1e-3), 0, 1) ** rng.uniform(0.65, 1.5)
    image = _blur(image, rng.uniform(0.4, 1.2) * size / DEFAULT_SIZE)
    image = image + rng.uniform(0.005, 0.025) * rng.standard_normal(image.shape, dtype=np.float32)
    image = image + _smooth_noise(rng, size, 0.1 * size) * rng.uniform(0, 0.04)
    if rng.random() < 0.3:  # a side marker: a small bright square near a top corner
        w = max(2, size // 28)
        mx, my = int(rng.uniform(0.03, 0.15) * size), int(rng.uniform(0.03, 0.12) * size)
        mx = mx if rng.random() < 0.5 else size - mx - w
        image[my : my + w, mx : mx + w] = 1.0
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def render(job: tuple[tuple[int, ...], bool, int]) -> Phantom:
    """Draw one phantom from (seed entropy, finding, size): the picklable unit of parallel generation.

    The image depends only on the entropy tuple, so the same dataset comes out whatever the
    number of worker processes.
    """
    entropy, finding, size = job
    return chest_phantom(np.random.default_rng(list(entropy)), finding=finding, size=size)
