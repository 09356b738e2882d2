from __future__ import annotations

import numpy as np
import pytest
from PIL import ImageFont

from dicom_ai.domain import Priority
from dicom_ai.encode.caption import (
    BACKGROUND,
    MIN_FONT_SIZE,
    burn_caption,
    caption_lines,
    drawable,
    font,
    font_size,
)
from dicom_ai.encode.equipment import NOT_FOR_CLINICAL_USE
from tests.encode.encode_support import findings, model_info, priority


def texts(lines: object) -> list[str]:
    return [line.text for line in lines]  # type: ignore[attr-defined]


def test_caption_says_finding_probability_priority_model_and_warning() -> None:
    lines = texts(caption_lines(findings(), model_info(), priority(Priority.STAT)))
    assert lines[0].startswith("Consolidation 93%") and "positive" in lines[0]
    assert lines[1].startswith("Pleural effusion 12%") and "negative" in lines[1]
    assert "Priority: STAT" in lines
    assert "AI model: Thorax-Röntgen 1.0.0" in lines
    assert lines[-1] == NOT_FOR_CLINICAL_USE


def test_clinical_model_has_no_demo_warning() -> None:
    lines = texts(caption_lines(findings(), model_info(not_for_clinical_use=False), priority()))
    assert NOT_FOR_CLINICAL_USE not in lines


def test_caption_is_burned_into_a_band_below_the_image() -> None:
    image = np.full((300, 600, 3), 128, np.uint8)
    lines = caption_lines(findings(), model_info(), priority())
    out = burn_caption(image, lines)
    assert out.shape[1] == 600 and out.shape[0] > 300
    np.testing.assert_array_equal(out[:300], image)  # the image itself is not covered
    band = out[300:]
    text_pixels = np.any(band != np.array(BACKGROUND, np.uint8), axis=2)
    assert text_pixels.mean() > 0.02  # there is text in the band
    other = burn_caption(image, caption_lines(findings(), model_info(), priority(Priority.ROUTINE)))
    assert other.shape == out.shape and not np.array_equal(other[300:], band)  # and it is the caption


@pytest.mark.parametrize("width", [512, 1024, 2048])
def test_font_scales_with_width_and_every_line_fits(width: int) -> None:
    lines = caption_lines(findings(), model_info(), priority())
    size = font_size(width, lines)
    typeface = font(size)
    assert max(typeface.getlength(drawable(line.text, typeface)) for line in lines) <= width
    if width >= 1024:
        assert size >= 20
    assert size >= MIN_FONT_SIZE


def test_characters_a_font_lacks_are_replaced_readably() -> None:
    builtin = ImageFont.load_default(size=20)  # Pillow's own font: ASCII only
    assert drawable("Thorax-Röntgen", builtin) == "Thorax-Rontgen"
    assert drawable("肺", builtin) == "?"
    assert drawable("plain ASCII", builtin) == "plain ASCII"


def test_non_ascii_text_is_drawn_with_its_accents_when_the_font_has_them() -> None:
    try:
        typeface = ImageFont.truetype("DejaVuSans.ttf", 20)
    except OSError:
        pytest.skip("DejaVu Sans is not installed (Debian: fonts-dejavu-core)")
    assert drawable("Thorax-Röntgen", typeface) == "Thorax-Röntgen"


def test_without_a_system_font_the_builtin_one_still_writes_the_caption(monkeypatch: pytest.MonkeyPatch) -> None:
    import dicom_ai.encode.caption as caption

    monkeypatch.setattr(caption, "FONT_FILES", ("no-such-font-here.ttf",))
    caption.font.cache_clear()
    try:
        assert caption.font(20).getname()[0] == "Aileron"  # Pillow's built-in scalable font
        image = np.zeros((200, 512, 3), np.uint8)
        out = burn_caption(image, caption_lines(findings(), model_info(), priority()))
        assert np.any(out[200:] != 0)
    finally:
        caption.font.cache_clear()
