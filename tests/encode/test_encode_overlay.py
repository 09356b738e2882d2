from __future__ import annotations

import numpy as np
import pytest

from dicom_ai.encode.overlay import HEAT_FLOOR, JET_LUT, blend, resize
from tests.encode.encode_support import gaussian_heatmap


@pytest.fixture
def display() -> np.ndarray:
    return np.tile(np.arange(0, 256, 2, dtype=np.uint8), (96, 1))  # 96 x 128 gradient


def test_no_heat_leaves_the_image_grey_and_untouched(display: np.ndarray) -> None:
    out = blend(display, np.zeros(display.shape, np.float32))
    assert out.shape == (*display.shape, 3) and out.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], display)


def test_heat_below_the_floor_is_not_drawn(display: np.ndarray) -> None:
    out = blend(display, np.full(display.shape, HEAT_FLOOR * 0.9, np.float32))
    np.testing.assert_array_equal(out[..., 0], display)


def test_hot_region_turns_red_and_keeps_anatomy_visible(display: np.ndarray) -> None:
    heat = gaussian_heatmap(display.shape, centre=(0.5, 0.5))
    out = blend(display, heat).astype(int)
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    red, green, blue = out[peak]
    assert red > green and red > blue  # the hottest point is red-ish
    corner = out[0, 0]
    assert corner[0] == corner[1] == corner[2] == display[0, 0]  # far from the blob: plain grey
    # Under the hottest point the image still shows: two different grey levels stay different.
    flat = blend(np.full(display.shape, 40, np.uint8), heat)[peak]
    bright = blend(np.full(display.shape, 220, np.uint8), heat)[peak]
    assert int(bright.sum()) - int(flat.sum()) > 150


def test_colour_map_runs_from_blue_to_red() -> None:
    assert JET_LUT.shape == (256, 3)
    assert JET_LUT[0, 2] > JET_LUT[0, 0]  # cold end blue
    assert JET_LUT[230, 0] > JET_LUT[230, 2]  # hot end red


@pytest.mark.parametrize(
    ("heatmap", "message"),
    [
        (np.zeros((10, 10), np.float32), "differs from display shape"),
        (np.full((96, 128), 1.5, np.float32), r"must lie in \[0, 1\]"),
        (np.full((96, 128), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_heatmaps_are_refused(display: np.ndarray, heatmap: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        blend(display, heatmap)


def test_display_must_be_uint8(display: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        blend(display.astype(np.float32), np.zeros(display.shape, np.float32))


def test_resize_keeps_the_kind_of_array(display: np.ndarray) -> None:
    small = resize(display, 48, 64)
    assert small.shape == (48, 64) and small.dtype == np.uint8
    heat = resize(gaussian_heatmap(display.shape), 192, 256)
    assert heat.shape == (192, 256) and heat.dtype == np.float32
    assert 0.9 < float(heat.max()) <= 1.0


def test_colour_display_keeps_its_colours_under_the_heat() -> None:
    rgb = np.zeros((40, 50, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # reddish mucosa
    rgb[..., 1] = 80
    heatmap = np.zeros((40, 50), dtype=np.float32)
    heatmap[15:25, 20:30] = 1.0
    out = blend(rgb, heatmap)
    assert out.shape == (40, 50, 3)
    assert (out[0, 0] == rgb[0, 0]).all()  # no heat: the colour image as it was, not its luminance
    assert not (out[20, 25] == rgb[20, 25]).all()  # heat is drawn over it
    assert resize(rgb, 20, 25).shape == (20, 25, 3)
    with pytest.raises(ValueError, match="heatmap shape"):
        blend(rgb, np.zeros((40, 40), dtype=np.float32))
