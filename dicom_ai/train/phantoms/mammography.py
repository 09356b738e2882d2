"""Synthetic screening mammograms (CC or MLO view, either breast), with or without a suspicious mass.

Drawn in an attenuation domain (bright = dense, the MONOCHROME2 display of a "for presentation"
image): a compressed breast against the black background, chest wall on the image left for the
left breast and on the right for the right breast (the usual back-to-back hanging); skin line,
fat, fibroglandular tissue whose amount varies from fatty to extremely dense, Cooper-ligament
strands, vessels, a nipple, and on MLO the pectoral muscle triangle. The finding is an irregular,
spiculated mass, sometimes with a cluster of microcalcifications. Distractors appear in both
classes: round smooth benign masses or cysts, dense tissue islands, coarse benign calcifications,
so that a model must learn the margin and not just "a bright blob".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from dicom_ai.train.phantoms.common import BREAST, Phantom, blur, ellipse, grid, ridges, smooth_noise, soft, to_uint8

DEFAULT_SHAPE = (256, 208)  # rows, cols: the 4:3-ish portrait of a detector
MIN_ROWS = 64

View = Literal["CC", "MLO"]
Laterality = Literal["L", "R"]


@dataclass(frozen=True)
class _Breast:
    """Geometry in units of the image height; chest wall at x = 0 (flipped afterwards for R)."""

    depth: float  # chest wall to nipple
    cy: float  # vertical centre of the breast at the chest wall
    half_height: float
    tilt: float  # MLO: how far the breast hangs down towards the nipple
    density: float  # 0 fatty .. 1 extremely dense


def mammography_phantom(
    rng: np.random.Generator,
    *,
    finding: bool,
    size: tuple[int, int] = DEFAULT_SHAPE,
    view: View = "CC",
    laterality: Laterality = "L",
) -> Phantom:
    """Draw one mammogram; with `finding`, add a spiculated mass (sometimes with microcalcifications).

    Returns a `Phantom` with anatomy `BREAST` (`breast_mask`: the breast without the background).
    """
    rows, cols = int(size[0]), int(size[1])
    if rows < MIN_ROWS or cols < MIN_ROWS // 2:
        raise ValueError(f"mammography size must be at least {MIN_ROWS} x {MIN_ROWS // 2} pixels, got {size}")
    if view not in ("CC", "MLO"):
        raise ValueError(f"mammography view must be 'CC' or 'MLO', got {view!r}")
    if laterality not in ("L", "R"):
        raise ValueError(f"mammography laterality must be 'L' or 'R', got {laterality!r}")
    shape = (rows, cols)
    yy, xx = grid(shape)
    width = cols / rows
    mlo = view == "MLO"
    b = _Breast(
        depth=width * rng.uniform(0.6, 0.9),
        cy=rng.uniform(0.45, 0.55) if not mlo else rng.uniform(0.5, 0.6),
        half_height=rng.uniform(0.34, 0.44) if not mlo else rng.uniform(0.38, 0.46),
        tilt=rng.uniform(0.05, 0.15) if mlo else rng.uniform(-0.03, 0.03),
        density=float(rng.beta(1.6, 1.6)),
    )

    breast, thickness, r = _silhouette(rng, b, xx, yy, shape, mlo)
    inside = breast > 0.5
    deep = r < 0.75  # where a mass is drawn: not in the subcutaneous fat or the skin
    tissue = _fibroglandular(rng, b, r, shape) * breast
    density = 0.35 * thickness + 0.45 * tissue
    density += 0.08 * ridges(smooth_noise(rng, shape, 0.025 * rows), 0.12) * breast * (1 - tissue)  # Cooper ligaments
    density += 0.05 * ridges(smooth_noise(rng, shape, 0.06 * rows), 0.06) * breast  # vessels
    density += 0.05 * smooth_noise(rng, shape, 0.006 * rows) * breast * (0.3 + tissue)  # parenchymal grain
    density += 0.25 * _skin(r) * breast
    nipple_y = b.cy + b.tilt
    density += 0.3 * ellipse(xx, yy, b.depth + 0.005, nipple_y, 0.02, 0.025, soft=0.4)
    if mlo:
        pectoral = _pectoral(rng, xx, yy)
        density = np.maximum(density, (0.55 + 0.1 * smooth_noise(rng, shape, 0.05 * rows)) * pectoral * breast)
        inside &= pectoral < 0.5
        deep &= pectoral < 0.5

    density += _distractors(rng, b, xx, yy, inside, shape)
    finding_mask = np.zeros(shape, dtype=bool)
    if finding:
        opacity, finding_mask = _spiculated_mass(rng, xx, yy, deep if deep.any() else inside, shape)
        density = density + opacity * breast

    image = _expose(rng, density, breast, shape)
    breast_mask = breast > 0.5
    if laterality == "R":
        image, finding_mask, breast_mask = image[:, ::-1], finding_mask[:, ::-1], breast_mask[:, ::-1]
    return Phantom(
        image=np.ascontiguousarray(image),
        finding_mask=np.ascontiguousarray(finding_mask),
        anatomy_mask=np.ascontiguousarray(breast_mask),
        anatomy=BREAST,
    )


def _silhouette(
    rng: np.random.Generator, b: _Breast, xx: np.ndarray, yy: np.ndarray, shape: tuple[int, int], mlo: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Breast outline (0..1), compressed thickness (falls off at the skin) and normalised radius."""
    # The nipple axis sags by `tilt` from chest wall to nipple (MLO), so the outline is sheared.
    centre = b.cy + b.tilt * np.clip(xx / b.depth, 0, 1) ** 1.5
    upper = b.half_height * (1.25 if mlo else 1.0)  # MLO reaches up into the axilla
    half = np.where(yy < centre, upper, b.half_height)
    r = np.sqrt((xx / b.depth) ** 2 + ((yy - centre) / half) ** 2)
    r = r * (1 + 0.015 * smooth_noise(rng, shape, 0.08 * shape[0]))
    breast = soft(1 - r, 0.01 * 256 / shape[0])
    thickness = np.sqrt(np.clip(1 - r**4, 0, 1)) * breast  # flat under compression, thin at the edge
    return breast, thickness, r


def _fibroglandular(rng: np.random.Generator, b: _Breast, r: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Patchy dense tissue, most behind the nipple and away from the skin; amount set by density.

    The fine texture is stretched along the nipple axis: ducts and stroma converge on the nipple.
    """
    rows = shape[0]
    envelope = soft(0.9 - r, 0.4)
    coarse = smooth_noise(rng, shape, 0.04 * rows)
    streaks = smooth_noise(rng, shape, (0.008 * rows, 0.03 * rows))
    threshold = 1.0 - 2.0 * b.density
    patches = soft(coarse + 0.35 * streaks - threshold + 0.6 * envelope, 2.2)
    return patches * envelope * (0.85 + 0.15 * streaks)


def _skin(r: np.ndarray) -> np.ndarray:
    """A thin bright band just inside the outline."""
    return np.exp(-(((r - 0.985) / 0.012) ** 2))


def _pectoral(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """The pectoral muscle on MLO: a triangle in the upper chest-wall corner, slightly convex edge."""
    top = rng.uniform(0.25, 0.45)  # width at the top edge
    down = rng.uniform(0.45, 0.75)  # where it meets the chest wall
    edge = top * (1 - yy / down) * (1 + 0.15 * np.sin(np.pi * np.clip(yy / down, 0, 1)))
    return soft(edge - xx, 0.01)


def _random_point(rng: np.random.Generator, where: np.ndarray, shape: tuple[int, int]) -> tuple[float, float]:
    ys, xs = np.nonzero(where)
    if ys.size == 0:
        raise RuntimeError("no room inside the breast for a lesion; the geometry is degenerate")
    pick = rng.integers(ys.size)
    return (xs[pick] + 0.5) / shape[0], (ys[pick] + 0.5) / shape[0]


def _spiculated_mass(
    rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, where: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """An irregular dense core with thin spicules radiating out; sometimes microcalcifications.

    Drawn in a window around the mass only: spicules are a loop of full-size operations otherwise.
    """
    rows, cols = shape
    x0, y0 = _random_point(rng, where, shape)
    radius = rng.uniform(0.025, 0.055)
    reach = int(np.ceil(radius * 3.4 * rows)) + 2
    r0, r1 = max(0, int(y0 * rows) - reach), min(rows, int(y0 * rows) + reach)
    c0, c1 = max(0, int(x0 * rows) - reach), min(cols, int(x0 * rows) + reach)
    px, py = xx[:, c0:c1], yy[r0:r1, :]
    dx, dy = px - x0, py - y0
    rho = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    wobble = np.zeros_like(theta)
    for k in range(2, 7):  # an irregular, lobulated margin
        wobble = wobble + rng.uniform(0.03, 0.12) / k**0.5 * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    core = soft(radius * (1 + wobble) - rho, 0.006)
    spicules = np.zeros_like(rho)
    for angle in rng.uniform(0, 2 * np.pi, size=int(rng.integers(8, 20))):
        along = dx * np.cos(angle) + dy * np.sin(angle)
        across = -dx * np.sin(angle) + dy * np.cos(angle)
        length = radius * rng.uniform(1.6, 3.2)
        line = np.exp(-((across / 0.0035) ** 2)) * soft(along - 0.5 * radius, 0.01) * soft(length - along, 0.03)
        spicules = np.maximum(spicules, line * np.clip(1 - along / length, 0, 1) ** 0.5)
    grain = 0.9 + 0.1 * rng.standard_normal(core.shape).astype(np.float32)
    local = rng.uniform(0.35, 0.55) * (core * grain + 0.6 * spicules)
    local_mask = (core > 0.5) | (spicules > 0.4)
    if rng.random() < 0.4:
        calcs, calc_mask = _calcifications(rng, px, py, x0, y0, 1.3 * radius, int(rng.integers(5, 16)), 0.0025)
        local = local + 0.6 * calcs
        local_mask |= calc_mask
    opacity = np.zeros(shape, dtype=np.float32)
    mask = np.zeros(shape, dtype=bool)
    opacity[r0:r1, c0:c1] = local
    mask[r0:r1, c0:c1] = local_mask
    return opacity, mask


def _calcifications(
    rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, x0: float, y0: float, spread: float, n: int, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """n tiny bright dots scattered within `spread` of (x0, y0), and a mask around each."""
    out = np.zeros(np.broadcast_shapes(xx.shape, yy.shape), dtype=np.float32)
    for _ in range(n):
        angle, dist = rng.uniform(0, 2 * np.pi), spread * np.sqrt(rng.random())
        r = radius * rng.uniform(0.6, 1.4)
        out = np.maximum(out, ellipse(xx, yy, x0 + dist * np.cos(angle), y0 + dist * np.sin(angle), r, r, soft=0.6))
    return out, out > 0.3


def _distractors(
    rng: np.random.Generator, b: _Breast, xx: np.ndarray, yy: np.ndarray, inside: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """Benign look-alikes in both classes: circumscribed masses/cysts, dense islands, coarse calcifications."""
    out = np.zeros(shape, dtype=np.float32)
    for _ in range(int(rng.integers(0, 3))):  # round, smooth-margined masses or cysts
        x0, y0 = _random_point(rng, inside, shape)
        rx = rng.uniform(0.015, 0.05)
        ry = rx * rng.uniform(0.7, 1.3)
        out += rng.uniform(0.15, 0.35) * ellipse(xx, yy, x0, y0, rx, ry, soft=rng.uniform(0.1, 0.25))
    for _ in range(int(rng.integers(0, 3))):  # islands of dense tissue: blurry, no spicules
        x0, y0 = _random_point(rng, inside, shape)
        rx = rng.uniform(0.03, 0.07)
        out += rng.uniform(0.1, 0.25) * ellipse(xx, yy, x0, y0, rx, rx * rng.uniform(0.5, 1.5), soft=1.0)
    if rng.random() < 0.4:  # scattered coarse benign calcifications, far apart
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = _random_point(rng, inside, shape)
            r = rng.uniform(0.005, 0.012)
            out += 0.5 * ellipse(xx, yy, x0, y0, r, r, soft=0.3)
    return out


def _expose(rng: np.random.Generator, density: np.ndarray, breast: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Attenuation to a displayed uint8 image: window on the breast, gamma, blur, quantum noise."""
    inside = density[breast > 0.5]
    low, high = np.percentile(inside[:: max(1, inside.size // 4000)], (rng.uniform(0, 3), rng.uniform(99, 100)))
    low -= rng.uniform(0.05, 0.15)  # fat stays grey, well above the black background
    image = np.clip((density - low) / max(high - low, 1e-3), 0, 1) ** rng.uniform(0.8, 1.4) * breast
    image = blur(image, rng.uniform(0.3, 0.8) * shape[0] / DEFAULT_SHAPE[0])
    image = image + rng.uniform(0.005, 0.02) * rng.standard_normal(shape, dtype=np.float32) * (0.3 + breast)
    return to_uint8(image)
