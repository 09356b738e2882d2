"""Burn a caption band under the heatmap image: what was found, how sure, by which model, how urgent.

Secondary Captures travel to viewers that show nothing but pixels, so the message must be in the
pixels. The band is added below the image rather than over it, so no anatomy is hidden, and the
font scales with the image width so the text reads the same on a 512 or a 2048 pixel image.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dicom_ai.domain import Priority
from dicom_ai.encode.describe import percent
from dicom_ai.encode.equipment import NOT_FOR_CLINICAL_USE

if TYPE_CHECKING:
    from dicom_ai.domain import Finding, ModelInfo, PriorityDecision

log = logging.getLogger(__name__)

RGB = tuple[int, int, int]
BACKGROUND: RGB = (0, 0, 0)
TEXT: RGB = (255, 255, 255)
MUTED: RGB = (190, 190, 190)
WARNING: RGB = (255, 215, 0)
PRIORITY_COLOURS: dict[Priority, RGB] = {
    Priority.STAT: (255, 80, 80),
    Priority.URGENT: (255, 165, 0),
    Priority.ROUTINE: (150, 230, 150),
}

MAX_FINDING_LINES = 3  # more findings on one image are summarised as "+N more"
FONT_WIDTH_RATIO = 42  # font size ~ image width / this, before shrinking to fit
MIN_FONT_SIZE = 10
MAX_FONT_SIZE = 56
LINE_SPACING = 1.3  # line height as a multiple of the font size
OVERLAY_NOTE = "Colour overlay: regions that drove the result (red = strongest)"


@dataclass(frozen=True)
class CaptionLine:
    """One line of the caption and its colour."""

    text: str
    colour: RGB = TEXT


def finding_text(finding: Finding) -> str:
    """e.g. 'Consolidation 93% - positive (threshold 50%)'."""
    verdict = "positive" if finding.present else "negative"
    return f"{finding.label} {percent(finding.probability)} - {verdict} (threshold {percent(finding.threshold)})"


def caption_lines(
    findings: Sequence[Finding], model: ModelInfo, priority: PriorityDecision
) -> tuple[CaptionLine, ...]:
    """The caption for one image: its findings (positives first), priority, model and any warning."""
    ordered = sorted(findings, key=lambda f: (not f.present, -f.probability, f.label))
    lines = [CaptionLine(finding_text(f)) for f in ordered[:MAX_FINDING_LINES]]
    if len(ordered) > MAX_FINDING_LINES:
        lines.append(CaptionLine(f"+{len(ordered) - MAX_FINDING_LINES} more finding(s) in the SR", MUTED))
    if not lines:
        lines.append(CaptionLine("No findings reported"))
    lines.append(CaptionLine(f"Priority: {priority.level.name}", PRIORITY_COLOURS[priority.level]))
    lines.append(CaptionLine(f"AI model: {model.display_name} {model.version}"))
    lines.append(CaptionLine(OVERLAY_NOTE, MUTED))
    if model.not_for_clinical_use:
        lines.append(CaptionLine(NOT_FOR_CLINICAL_USE, WARNING))
    return tuple(lines)


# Fonts tried first, found by Pillow in the system font folders: DejaVu Sans covers Latin,
# Greek and Cyrillic (Debian: fonts-dejavu-core). Pillow's built-in font covers ASCII only.
FONT_FILES = ("DejaVuSans.ttf",)
NOT_A_CHARACTER = "\U0010fffd"  # a private-use code point no font draws: gives the "missing" glyph
REPLACEMENT = "?"


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A scalable font of `size` pixels: a system font if there is one, else Pillow's built-in one."""
    for name in FONT_FILES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    loaded = ImageFont.load_default(size=size)  # scalable in Pillow >= 10.1 with FreeType
    if not isinstance(loaded, ImageFont.FreeTypeFont):
        log.warning("Pillow has no FreeType support: the caption uses a small fixed-size bitmap font")
    return loaded


def _missing_glyph(typeface: ImageFont.FreeTypeFont | ImageFont.ImageFont, character: str) -> bool:
    mask, missing = typeface.getmask(character), typeface.getmask(NOT_A_CHARACTER)
    return mask.size == missing.size and bytes(mask) == bytes(missing)


def drawable(text: str, typeface: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> str:
    """`text` with characters the font cannot draw replaced: 'ö' -> 'o' (accent dropped), else '?'.

    Without this a missing glyph is drawn as an empty box, and 'Thorax-R□ntgen' is worse than
    'Thorax-Rontgen'. The DICOM text attributes keep the exact characters.
    """
    out = []
    for character in text:
        if character.isascii() or not _missing_glyph(typeface, character):
            out.append(character)
            continue
        base = "".join(c for c in unicodedata.normalize("NFKD", character) if not unicodedata.combining(c))
        out.append(base if base and all(not _missing_glyph(typeface, c) for c in base) else REPLACEMENT)
    return "".join(out)


def _margin(size: int) -> int:
    return max(4, size // 2)


def font_size(width: int, lines: Sequence[CaptionLine]) -> int:
    """The largest size up to ~width/42 at which every line fits the width (never below 10)."""
    size = max(MIN_FONT_SIZE, min(MAX_FONT_SIZE, round(width / FONT_WIDTH_RATIO)))
    while size > MIN_FONT_SIZE:
        typeface = font(size)
        widest = max(typeface.getlength(drawable(line.text, typeface)) for line in lines)
        if widest <= width - 2 * _margin(size):
            break
        size -= 1
    return size


def band_height(width: int, lines: Sequence[CaptionLine]) -> int:
    """Height in pixels of the caption band for an image `width` pixels wide."""
    size = font_size(width, lines)
    return 2 * _margin(size) + round(len(lines) * size * LINE_SPACING)


def burn_caption(rgb: np.ndarray, lines: Sequence[CaptionLine]) -> np.ndarray:
    """Return `rgb` (Rows x Columns x 3 uint8) with a caption band appended below it."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"burn_caption needs a Rows x Columns x 3 uint8 image, got {rgb.dtype} {rgb.shape}")
    if not lines:
        raise ValueError("burn_caption needs at least one caption line")
    rows, width = rgb.shape[:2]
    size = font_size(width, lines)
    margin = _margin(size)
    band = Image.new("RGB", (width, band_height(width, lines)), BACKGROUND)
    draw = ImageDraw.Draw(band)
    typeface = font(size)
    for index, line in enumerate(lines):
        position = (margin, margin + round(index * size * LINE_SPACING))
        draw.text(position, drawable(line.text, typeface), font=typeface, fill=line.colour)
    return np.concatenate([rgb, np.asarray(band, dtype=np.uint8)], axis=0)
