"""The phantom generator: reproducible, and a consolidation lies inside a lung and is denser."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_ai.train.phantoms import chest_phantom, render


def test_same_seed_same_image_different_seed_different_image() -> None:
    first = chest_phantom(np.random.default_rng(3), finding=True, size=128)
    again = chest_phantom(np.random.default_rng(3), finding=True, size=128)
    other = chest_phantom(np.random.default_rng(4), finding=True, size=128)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.finding_mask, again.finding_mask)
    assert not np.array_equal(first.image, other.image)


def test_render_is_chest_phantom_with_a_seed_tuple() -> None:
    via_render = render(((1, 2, 3), False, 96))
    direct = chest_phantom(np.random.default_rng([1, 2, 3]), finding=False, size=96)
    assert np.array_equal(via_render.image, direct.image)


@pytest.mark.parametrize("seed", range(6))
def test_consolidation_is_inside_a_lung_and_denser_than_the_rest_of_it(seed: int) -> None:
    phantom = chest_phantom(np.random.default_rng(seed), finding=True, size=160)
    assert phantom.image.shape == (160, 160) and phantom.image.dtype == np.uint8
    assert phantom.has_finding
    mask, lungs = phantom.finding_mask, phantom.lung_mask
    assert mask.sum() >= 0.05 * 160 * 0.05 * 160
    assert (mask & ~lungs).sum() <= 0.02 * mask.sum()  # stops at the lung's borders
    # Compare with the same lung around it: the rest of the lung fields, excluding the opacity.
    rest = lungs & ~mask
    assert phantom.image[mask].mean() > phantom.image[rest].mean() + 5


def test_without_a_finding_the_mask_is_empty_and_lungs_are_darker_than_the_body() -> None:
    phantom = chest_phantom(np.random.default_rng(11), finding=False, size=160)
    assert not phantom.has_finding and not phantom.finding_mask.any()
    assert 0.15 < phantom.lung_mask.mean() < 0.6
    columns = slice(70, 90)  # the mediastinum, between the lungs
    assert phantom.image[60:100, columns].mean() > phantom.image[phantom.lung_mask].mean()


def test_too_small_a_size_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 64 pixels"):
        chest_phantom(np.random.default_rng(0), finding=False, size=32)
