"""What every phantom shares: the result records, soft shapes, and fast numpy-only smoothing.

Smoothing is done with cached Gaussian matrices (K @ A @ K.T) rather than FFTs or scipy: scipy
is not a dependency, and at phantom sizes (<= 256 pixels) the matrix products are faster.
All randomness comes from the caller's `numpy.random.Generator`, so a seed fixes every image.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

# Names of `Phantom.anatomy`: the region where a finding may lie.
LUNGS = "lungs"
BREAST = "breast"
BRAIN = "brain"
MUCOSA = "mucosa"

# A length a phantom computes with numpy scalars (e.g. one millimetre as float32) or a Python float.
Scalar = float | np.floating[Any]


@dataclass(frozen=True, eq=False)
class Phantom:
    """One synthetic 2-D image in display convention, with where its finding is.

    `image` is uint8: (rows, cols) for grayscale (MONOCHROME2: bright = dense / high signal), or
    (rows, cols, 3) RGB for colour modalities such as endoscopy.
    `finding_mask` is bool (rows, cols), True on the finding (all False without one): the
    ground truth of Grad-CAM's pointing game.
    `anatomy_mask` is bool (rows, cols), True where a finding may lie; `anatomy` names it
    (`LUNGS`, `BREAST`, `BRAIN`, `MUCOSA`) and `lung_mask` / `breast_mask` read it by name.
    """

    image: np.ndarray
    finding_mask: np.ndarray
    anatomy_mask: np.ndarray
    anatomy: str = LUNGS

    @property
    def has_finding(self) -> bool:
        return bool(self.finding_mask.any())

    @property
    def lung_mask(self) -> np.ndarray:
        """The lung fields of a chest phantom."""
        return self._anatomy_named(LUNGS)

    @property
    def breast_mask(self) -> np.ndarray:
        """The breast of a mammography phantom (excluding the black background)."""
        return self._anatomy_named(BREAST)

    def _anatomy_named(self, name: str) -> np.ndarray:
        if self.anatomy != name:
            raise AttributeError(f"this phantom's anatomy_mask is the {self.anatomy}, not the {name}; read anatomy_mask")
        return self.anatomy_mask


@dataclass(frozen=True, eq=False)
class VolumePhantom:
    """One synthetic volume: (D, H, W) values in physical units, and where its finding is.

    `volume_hu` is int16 in Hounsfield units (CT); `finding_mask` is bool (D, H, W);
    `spacing_mm` is (slice spacing, row spacing, column spacing) in millimetres.
    """

    volume_hu: np.ndarray
    finding_mask: np.ndarray
    spacing_mm: tuple[float, float, float]

    @property
    def has_finding(self) -> bool:
        return bool(self.finding_mask.any())


def soft(x: np.ndarray, width: Scalar) -> np.ndarray:
    """0 below -width/2, 1 above width/2: a soft step used for every anatomical edge."""
    return np.clip(0.5 + x / width, 0, 1)


def ellipse(xx: np.ndarray, yy: np.ndarray, x0: float, y0: float, rx: float, ry: float, soft: float = 0.08) -> np.ndarray:
    """A filled ellipse with a soft edge (0..1)."""
    r = np.sqrt(((xx - x0) / rx) ** 2 + ((yy - y0) / ry) ** 2)
    return np.clip(0.5 + (1 - r) / soft, 0, 1)


def grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (yy column, xx row) in units of the image height: isotropic shapes."""
    rows, cols = shape
    yy = ((np.arange(rows, dtype=np.float32) + 0.5) / np.float32(rows))[:, None]
    xx = ((np.arange(cols, dtype=np.float32) + 0.5) / np.float32(rows))[None, :]
    return yy, xx


@lru_cache(maxsize=64)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """Row-normalised Gaussian (n x n): K @ A @ K.T blurs A, renormalised at the borders."""
    i = np.arange(n, dtype=np.float32)
    k = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
    k[k < 1e-6] = 0  # no denormals: they make the matrix product crawl
    return (k / k.sum(axis=1, keepdims=True)).astype(np.float32)


@lru_cache(maxsize=64)
def _noise_matrix(n: int, sigma: float) -> np.ndarray:
    """Gaussians of width sigma on a grid spaced sigma/1.5: K @ W @ K.T is smooth noise."""
    step = max(sigma / 1.5, 1.0)
    centres = (np.arange(int(np.ceil(n / step)) + 4, dtype=np.float32) - 2) * step
    i = np.arange(n, dtype=np.float32)
    k = np.exp(-0.5 * ((i[:, None] - centres[None, :]) / sigma) ** 2)
    k[k < 1e-6] = 0
    return k.astype(np.float32)


def _shape2(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a 2-D image (or each channel of rows x cols x C) by `sigma` pixels."""
    image = np.asarray(image, dtype=np.float32)
    if sigma < 0.1:
        return image
    sigma = round(float(sigma), 1)
    kr = _blur_matrix(image.shape[0], sigma)
    kc = _blur_matrix(image.shape[1], sigma)
    if image.ndim == 3:
        return np.stack([kr @ image[..., c] @ kc.T for c in range(image.shape[2])], axis=-1)
    return kr @ image @ kc.T


def smooth_noise(rng: np.random.Generator, size: int | tuple[int, int], sigma: float | tuple[float, float]) -> np.ndarray:
    """Gaussian random field with correlation length ~sigma pixels, zero mean, unit deviation.

    `size` is an int for a square field or (rows, cols); `sigma` a float, or (along rows, along
    cols) for streaks, such as breast tissue converging on the nipple.
    """
    rows, cols = _shape2(size)
    sy, sx = (sigma, sigma) if isinstance(sigma, (int, float, np.floating)) else sigma
    sy, sx = round(max(float(sy), 0.5), 1), round(max(float(sx), 0.5), 1)
    kr = _noise_matrix(rows, sy)
    kc = kr if (cols, sx) == (rows, sy) else _noise_matrix(cols, sx)
    field = kr @ rng.standard_normal((kr.shape[1], kc.shape[1]), dtype=np.float32) @ kc.T
    return (field - field.mean()) / (field.std() + 1e-6)


def smooth_noise_3d(rng: np.random.Generator, shape: tuple[int, int, int], sigmas: tuple[float, float, float]) -> np.ndarray:
    """3-D Gaussian random field, correlation ~sigmas (voxels) along (D, H, W); zero mean, unit deviation."""
    ks = [_noise_matrix(int(n), round(max(float(s), 0.5), 1)) for n, s in zip(shape, sigmas)]
    white = rng.standard_normal(tuple(k.shape[1] for k in ks), dtype=np.float32)
    field = np.einsum("ai,bj,ck,ijk->abc", ks[0], ks[1], ks[2], white, optimize=True)
    return ((field - field.mean()) / (field.std() + 1e-6)).astype(np.float32)


def ridges(noise: np.ndarray, width: float) -> np.ndarray:
    """Thin winding lines (0..1) along the zero crossings of smooth noise: vessels, ligaments, sulci."""
    return np.exp(-((noise / width) ** 2))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """0..1 floats to uint8 display values, rounding and clipping."""
    return np.clip(np.rint(np.asarray(image) * 255), 0, 255).astype(np.uint8)
