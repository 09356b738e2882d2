"""The mammography, brain MR, head CT and endoscopy phantoms, and the DICOM studies written from them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_ai.infer.pixels import display_image
from dicom_ai.train import phantom_dicom
from dicom_ai.train.phantoms import (
    BREAST,
    Phantom,
    brain_mr_phantom,
    ct_volume_phantom,
    endoscopy_phantom,
    mammography_phantom,
    window,
)

SMALL_CT = (12, 64, 64)


def _draw(kind: str, seed: int, finding: bool):
    rng = np.random.default_rng(seed)
    if kind == "mammography":
        return mammography_phantom(rng, finding=finding, size=(160, 128), view="MLO" if seed % 2 else "CC")
    if kind == "brain_mr":
        return brain_mr_phantom(rng, finding=finding, size=(128, 128))
    if kind == "endoscopy":
        return endoscopy_phantom(rng, finding=finding, size=(128, 128))
    return ct_volume_phantom(rng, finding=finding, shape=SMALL_CT)


def _pixels(phantom) -> np.ndarray:
    if isinstance(phantom, Phantom):
        return phantom.image
    return phantom.volume_hu


KINDS = ["mammography", "brain_mr", "endoscopy", "ct_volume"]


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_pixels_other_seed_other_pixels(kind: str) -> None:
    first, again, other = _draw(kind, 5, True), _draw(kind, 5, True), _draw(kind, 6, True)
    assert np.array_equal(_pixels(first), _pixels(again))
    assert np.array_equal(first.finding_mask, again.finding_mask)
    assert not np.array_equal(_pixels(first), _pixels(other))


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_dtypes_and_masks(kind: str) -> None:
    for seed in range(2):
        negative, positive = _draw(kind, seed, False), _draw(kind, seed, True)
        pixels = _pixels(positive)
        expected = {
            "mammography": ((160, 128), np.uint8),
            "brain_mr": ((128, 128), np.uint8),
            "endoscopy": ((128, 128, 3), np.uint8),
            "ct_volume": (SMALL_CT, np.int16),
        }[kind]
        assert (pixels.shape, pixels.dtype) == expected
        assert positive.finding_mask.shape == pixels.shape[:3 if kind == "ct_volume" else 2]
        assert positive.finding_mask.dtype == bool
        assert not negative.has_finding and not negative.finding_mask.any()
        assert positive.has_finding


@pytest.mark.parametrize("seed", range(4))
def test_a_mass_is_brighter_than_the_breast_around_it(seed: int) -> None:
    phantom = mammography_phantom(np.random.default_rng(seed), finding=True, view="CC", laterality="L")
    assert phantom.anatomy == BREAST and (phantom.finding_mask & ~phantom.breast_mask).sum() == 0
    assert phantom.image[phantom.finding_mask].mean() > phantom.image[phantom.breast_mask & ~phantom.finding_mask].mean() + 10
    assert phantom.image[~phantom.breast_mask].mean() < 20  # black background


def test_a_right_breast_is_the_mirror_of_a_left_one() -> None:
    left = mammography_phantom(np.random.default_rng(1), finding=False, laterality="L")
    right = mammography_phantom(np.random.default_rng(1), finding=False, laterality="R")
    assert np.array_equal(left.image[:, ::-1], right.image)
    assert left.image[:, :10].mean() > left.image[:, -10:].mean()  # chest wall on the left for L


@pytest.mark.parametrize("seed", range(4))
def test_a_brain_mass_is_hyperintense_and_inside_the_brain(seed: int) -> None:
    phantom = brain_mr_phantom(np.random.default_rng(seed), finding=True)
    mask, brain = phantom.finding_mask, phantom.anatomy_mask
    assert (mask & ~brain).sum() <= 0.1 * mask.sum()
    assert phantom.image[mask].mean() > np.median(phantom.image[brain & ~mask]) + 20


@pytest.mark.parametrize("seed", range(3))
def test_a_haemorrhage_is_hyperdense_blood_over_a_few_slices(seed: int) -> None:
    phantom = ct_volume_phantom(np.random.default_rng(seed), finding=True, shape=(16, 64, 64))
    blood = phantom.volume_hu[phantom.finding_mask]
    assert 40 < np.median(blood) < 90
    assert 1 <= phantom.finding_mask.any(axis=(1, 2)).sum() < 16
    assert phantom.volume_hu.min() == -1000 and phantom.volume_hu.max() > 700  # air and skull
    assert len(phantom.spacing_mm) == 3


def test_window_maps_brain_window_to_uint8() -> None:
    shown = window(np.array([-1000, 0, 40, 80, 2000], dtype=np.int16))
    assert shown.dtype == np.uint8 and shown.tolist() == [0, 0, 128, 255, 255]


@pytest.mark.parametrize("seed", range(4))
def test_a_polyp_changes_the_frame_inside_its_mask(seed: int) -> None:
    rng_args = dict(finding=False, size=(160, 160))
    without = endoscopy_phantom(np.random.default_rng(seed), **rng_args).image.astype(int)
    with_polyp = endoscopy_phantom(np.random.default_rng(seed), finding=True, size=(160, 160))
    mask = with_polyp.finding_mask
    assert mask.sum() > 50 and with_polyp.image[~with_polyp.anatomy_mask].size > 0
    # Same seed, so the same wall up to the polyp's own draws; compare inside the mask only.
    assert np.abs(with_polyp.image.astype(int)[mask] - without[mask]).mean() > 8


def test_too_small_sizes_are_refused() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="at least"):
        mammography_phantom(rng, finding=False, size=(32, 32))
    with pytest.raises(ValueError, match="view"):
        mammography_phantom(rng, finding=False, view="LAT")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least"):
        ct_volume_phantom(rng, finding=False, shape=(4, 32, 32))


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=30)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


WRITERS = {
    "mammography": (phantom_dicom.write_mammography_study, {"size": (128, 104)}, 4, "MG"),
    "brain_mr": (phantom_dicom.write_brain_mr_study, {"slices": 3, "size": (96, 96)}, 3, "MR"),
    "ct_volume": (phantom_dicom.write_ct_volume_study, {"shape": (8, 64, 64)}, 8, "CT"),
    "endoscopy": (phantom_dicom.write_endoscopy_study, {"size": (96, 96)}, 2, "ES"),
}


@pytest.mark.parametrize("kind", list(WRITERS))
def test_written_studies_read_back_and_display(kind: str, tmp_path: Path) -> None:
    writer, kwargs, count, modality = WRITERS[kind]
    paths = writer(tmp_path / "a", 7, True, **kwargs)
    again = writer(tmp_path / "b", 7, True, **kwargs)
    assert len(paths) == count and all(p.exists() for p in paths)
    datasets = [pydicom.dcmread(p) for p in paths]
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1 and len({ds.SOPInstanceUID for ds in datasets}) == count
    assert [ds.SOPInstanceUID for ds in datasets] == [pydicom.dcmread(p).SOPInstanceUID for p in again]
    for ds in datasets:
        assert ds.Modality == modality and ds.Manufacturer == phantom_dicom.MANUFACTURER
        assert "SYNTHETIC" in ds.StudyDescription and "SYNTHETIC" in ds.ImageComments
        assert ds.StudyInstanceUID.startswith("2.25.") and ds.PatientID.startswith("SYNTH-")
        pixels = ds.pixel_array
        assert pixels.shape[:2] == (ds.Rows, ds.Columns)
        shown = display_image(ds)
        assert shown.dtype == np.uint8 and shown.shape[:2] == (ds.Rows, ds.Columns) and shown.std() > 5
    if kind == "ct_volume":
        ds = datasets[0]
        assert (float(ds.RescaleIntercept), float(ds.RescaleSlope)) == (-1024.0, 1.0)
        z = [float(d.ImagePositionPatient[2]) for d in datasets]
        assert np.allclose(np.diff(z), float(ds.SliceThickness))
    if kind == "endoscopy":
        assert datasets[0].PhotometricInterpretation == "RGB" and datasets[0].pixel_array.shape[2] == 3


def test_caller_supplied_identity_is_used(tmp_path: Path) -> None:
    paths = phantom_dicom.write_endoscopy_study(
        tmp_path, 1, False, patient_id="SYNTH-X", patient_name="Doe^Jane", study_instance_uid="2.25.42", frames=1, size=(64, 64)
    )
    ds = pydicom.dcmread(paths[0])
    assert (ds.PatientID, str(ds.PatientName), ds.StudyInstanceUID) == ("SYNTH-X", "Doe^Jane", "2.25.42")


@pytest.mark.parametrize("kind", list(WRITERS))
def test_written_files_pass_dciodvfy(kind: str, tmp_path: Path) -> None:
    if shutil.which("dciodvfy") is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy is not installed but CI is set: install dicom3tools")
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    writer, kwargs, _, _ = WRITERS[kind]
    for path in writer(tmp_path, 3, True, **kwargs)[:2]:
        assert _dciodvfy_errors(path) == [], path.name
