"""Turn a DICOM image into what a radiologist sees: one uint8 Rows x Columns display image.

Models and heatmaps both work on the displayed image, so the pixel pipeline follows the DICOM
grayscale chain (PS3.4 N.2): stored values -> Modality LUT / rescale -> VOI LUT or window ->
MONOCHROME1 inversion. Decoding is pydicom's (with the pylibjpeg/pyjpegls plugins for JPEG,
JPEG-LS, JPEG 2000 and RLE): MONAI's LoadImage returns arrays transposed relative to Rows x Columns.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing

if TYPE_CHECKING:
    from pydicom import Dataset

log = logging.getLogger(__name__)

# Photometric Interpretation (0028,0004) values handled here.
MONOCHROME1 = "MONOCHROME1"  # minimum value is displayed white (most CR/DX)
MONOCHROME2 = "MONOCHROME2"  # minimum value is displayed black
PALETTE_COLOR = "PALETTE COLOR"
COLOR_INTERPRETATIONS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")

# Without a window, the display spans these percentiles of the modality values: robust to a
# few hot pixels, burnt-in markers and collimator edges that a plain min-max would honour.
FALLBACK_PERCENTILES = (0.5, 99.5)

# ITU-R BT.601 luma weights, the same that YBR_FULL uses.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


class PixelError(Exception):
    """The pixel data of an instance cannot be turned into a display image; says which and why."""


def describe(ds: Dataset) -> str:
    """Name an instance in error messages: its file when read from one, and its SOP Instance UID."""
    parts = []
    filename = getattr(ds, "filename", None)
    if isinstance(filename, str) and filename:
        parts.append(f"file {filename}")
    parts.append(f"SOPInstanceUID {ds.get('SOPInstanceUID', '(none)')}")
    return ", ".join(parts)


def display_image(ds: Dataset) -> np.ndarray:
    """Return the image as displayed (uint8, Rows x Columns), applying the full grayscale chain.

    Multi-frame images give their middle frame; colour images their luminance. The first of
    several windows is used, as a viewer would on opening the image.
    """
    where = describe(ds)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise PixelError(f"{where}: has no Pixel Data (7FE0,0010); is it an image?")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if not photometric:
        raise PixelError(f"{where}: Photometric Interpretation (0028,0004) is missing")
    frames = _number_of_frames(ds)
    index = None
    if frames > 1:
        index = frames // 2
        log.info("%s: %d frames, using the middle frame %d", where, frames, index + 1)
    stored = _decode(ds, index, where)
    if stored.ndim == 3 and stored.shape[-1] == 1:
        stored = stored[..., 0]

    if photometric in (MONOCHROME1, MONOCHROME2):
        if stored.ndim != 2:
            raise PixelError(f"{where}: {photometric} pixel data decoded to shape {stored.shape}, expected Rows x Columns")
        display = _grayscale(stored, ds, where)
        if photometric == MONOCHROME1:
            display = 255 - display
        return display
    if photometric == PALETTE_COLOR:
        try:
            rgb = apply_color_lut(stored, ds)
        except (ValueError, AttributeError, KeyError) as exc:
            raise PixelError(f"{where}: cannot apply the palette colour lookup table: {exc}") from exc
        return _luminance(rgb, bits=_lut_bits(rgb))
    if photometric in COLOR_INTERPRETATIONS:
        if stored.ndim != 3 or stored.shape[-1] != 3:
            raise PixelError(f"{where}: {photometric} pixel data decoded to shape {stored.shape}, expected Rows x Columns x 3")
        return _luminance(stored, bits=int(ds.get("BitsStored", 8)))
    raise PixelError(f"{where}: Photometric Interpretation {photometric!r} is not supported")


def color_image(ds: Dataset) -> np.ndarray | None:
    """The image in colour (uint8, Rows x Columns x 3) for colour models; None for a grayscale image.

    Same frame choice as display_image; YBR is converted to RGB on decoding, palettes applied.
    """
    where = describe(ds)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in COLOR_INTERPRETATIONS and photometric != PALETTE_COLOR:
        return None
    frames = _number_of_frames(ds)
    stored = _decode(ds, frames // 2 if frames > 1 else None, where)
    if photometric == PALETTE_COLOR:
        try:
            stored = apply_color_lut(stored, ds)
        except (ValueError, AttributeError, KeyError) as exc:
            raise PixelError(f"{where}: cannot apply the palette colour lookup table: {exc}") from exc
        bits = _lut_bits(stored)
    else:
        bits = int(ds.get("BitsStored", 8))
    if stored.ndim != 3 or stored.shape[-1] != 3:
        raise PixelError(f"{where}: {photometric} pixel data decoded to shape {stored.shape}, expected Rows x Columns x 3")
    return _scale(stored, 0.0, float(2**bits - 1))


def modality_values(ds: Dataset) -> np.ndarray:
    """One slice in modality units (Hounsfield units for CT), float32 Rows x Columns, for volumes."""
    where = describe(ds)
    if "PixelData" not in ds:
        raise PixelError(f"{where}: has no Pixel Data (7FE0,0010); is it an image?")
    stored = _decode(ds, None, where)
    if stored.ndim != 2:
        raise PixelError(f"{where}: pixel data decoded to shape {stored.shape}; a volume needs single-frame grayscale slices")
    try:
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    except (ValueError, AttributeError, KeyError, TypeError, IndexError) as exc:
        raise PixelError(f"{where}: cannot apply the Modality LUT / Rescale Slope and Intercept: {exc}") from exc


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError) as exc:
        raise PixelError(f"{describe(ds)}: Number of Frames (0028,0008) is not a number: {exc}") from exc


def _decode(ds: Dataset, index: int | None, where: str) -> np.ndarray:
    """Decode one frame (or the only one); YBR is converted to RGB by pydicom's default."""
    transfer_syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    syntax = transfer_syntax.name if transfer_syntax is not None else "unknown transfer syntax"
    try:
        ds.pixel_array_options(index=index)
        return np.asarray(ds.pixel_array)
    except (RuntimeError, NotImplementedError) as exc:
        raise PixelError(f"{where}: cannot decode pixel data in {syntax} (is its decoder plugin installed?): {exc}") from exc
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise PixelError(f"{where}: pixel data in {syntax} is inconsistent with its image attributes: {exc}") from exc
    finally:
        ds.pixel_array_options(index=None)


def _grayscale(stored: np.ndarray, ds: Dataset, where: str) -> np.ndarray:
    """Modality LUT then VOI (LUT, window, or percentile fallback), scaled to 0..255."""
    try:
        values = apply_modality_lut(stored, ds)
    except (ValueError, AttributeError, KeyError, TypeError, IndexError) as exc:
        raise PixelError(f"{where}: cannot apply the Modality LUT / Rescale Slope and Intercept: {exc}") from exc

    voi_item = _first_valid_voi_lut(ds)
    if voi_item is not None:
        try:
            if not np.issubdtype(values.dtype, np.integer):
                values = np.rint(values).astype(np.int64)
            out = apply_voi(values, ds, 0)
            low, high = _voi_lut_range(ds)
            return _scale(out, low, high)
        except (ValueError, AttributeError, KeyError, TypeError, IndexError, NotImplementedError) as exc:
            log.warning("%s: VOI LUT Sequence unusable (%s); trying the window", where, exc)

    if "WindowCenter" in ds and "WindowWidth" in ds and ds.WindowCenter is not None and ds.WindowWidth is not None:
        try:
            out = apply_windowing(values, ds, 0)
            # The window's output range depends on bit depth and rescale; pydicom maps values
            # outside the window to its ends, so its ends are found by pushing +-inf through.
            with np.errstate(over="ignore", invalid="ignore"):
                low, high = apply_windowing(np.array([-np.inf, np.inf]), ds, 0)
            return _scale(out, float(low), float(high))
        except (ValueError, TypeError, IndexError) as exc:
            log.warning("%s: Window Center/Width unusable (%s); using percentiles", where, exc)

    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        raise PixelError(f"{where}: pixel data has no finite values")
    low, high = np.percentile(finite, FALLBACK_PERCENTILES)
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    return _scale(values, float(low), float(high))


def _first_valid_voi_lut(ds: Dataset) -> object | None:
    sequence = ds.get("VOILUTSequence")
    if not sequence:
        return None
    item = sequence[0]
    if item.get("LUTDescriptor") is None or item.get("LUTData") is None:
        return None
    return item


def _voi_lut_range(ds: Dataset) -> tuple[float, float]:
    """The LUT's own output range, from pushing every input it maps through it."""
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    entries = descriptor[0] or 2**16
    first = descriptor[1]
    table = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds, 0)
    return float(table.min()), float(table.max())


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto 0..255, clipping outside."""
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.asarray(values, dtype=np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _lut_bits(rgb: np.ndarray) -> int:
    return 16 if rgb.dtype.itemsize > 1 else 8


def _luminance(rgb: np.ndarray, bits: int) -> np.ndarray:
    """BT.601 luma of an RGB image, scaled from its bit depth to 0..255."""
    luma = np.asarray(rgb, dtype=np.float64) @ LUMA_WEIGHTS
    return _scale(luma, 0.0, float(2**bits - 1))
