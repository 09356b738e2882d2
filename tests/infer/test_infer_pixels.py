"""display_image follows the DICOM grayscale chain on real and synthetic images."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicom_ai.infer.pixels import PixelError, display_image
from tests.conftest import sample


def synthetic(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None, **attributes: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    bits = bits_stored or pixels.dtype.itemsize * 8
    ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture(scope="module")
def rg1() -> Dataset:
    return dcmread(sample("RG1_UNCR.dcm"))


@pytest.fixture(scope="module")
def rg1_display(rg1: Dataset) -> np.ndarray:
    return display_image(copy.deepcopy(rg1))


def test_rg1_is_windowed_and_inverted(rg1: Dataset, rg1_display: np.ndarray) -> None:
    assert rg1.PhotometricInterpretation == "MONOCHROME1"
    assert rg1_display.shape == (rg1.Rows, rg1.Columns) == (1955, 1841)
    assert rg1_display.dtype == np.uint8
    # The file's own window (15000/30000 over 15 bits), then MONOCHROME1 inverted: low values white.
    stored = rg1.pixel_array.astype(np.float64)
    windowed = np.clip((stored - 14999.5) / 29999 + 0.5, 0, 1) * 255
    expected = 255 - np.rint(windowed)
    assert np.abs(rg1_display.astype(int) - expected).max() <= 1
    # Anatomy confirms the direction: the mediastinum is brighter than the lung fields.
    rows = slice(600, 1000)
    mediastinum = rg1_display[rows, 880:960].mean()
    right_lung, left_lung = rg1_display[rows, 350:550].mean(), rg1_display[rows, 1300:1500].mean()
    assert mediastinum > right_lung + 20 and mediastinum > left_lung + 20


def test_monochrome2_is_not_inverted(rg1: Dataset, rg1_display: np.ndarray) -> None:
    as_monochrome2 = copy.deepcopy(rg1)
    as_monochrome2.PhotometricInterpretation = "MONOCHROME2"
    assert np.array_equal(display_image(as_monochrome2), 255 - rg1_display)


def test_jpeg2000_decodes_to_the_same_display(rg1_display: np.ndarray) -> None:
    j2k = dcmread(sample("RG1_J2KR.dcm"))
    assert j2k.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(display_image(j2k), rg1_display)


def test_window_maps_below_to_black_and_above_to_white() -> None:
    pixels = np.array([[0, 100, 200, 300, 400]], dtype=np.uint16)
    ds = synthetic(pixels, WindowCenter=200, WindowWidth=200)
    assert display_image(ds).tolist() == [[0, 0, 128, 255, 255]]


def test_first_of_several_windows_is_used() -> None:
    pixels = np.array([[0, 100, 200, 300, 400]], dtype=np.uint16)
    ds = synthetic(pixels, WindowCenter=[200, 1000], WindowWidth=[200, 10])
    assert display_image(ds).tolist() == [[0, 0, 128, 255, 255]]


def test_rescale_slope_and_intercept_apply_before_the_window() -> None:
    # Stored 400/500/600 are -200/0/+200 in modality units with slope 2, intercept -1000.
    pixels = np.array([[400, 500, 600]], dtype=np.int16)
    ds = synthetic(pixels, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=400)
    assert display_image(ds).tolist() == [[0, 128, 255]]
    without_rescale = synthetic(pixels, WindowCenter=0, WindowWidth=400)
    assert display_image(without_rescale).tolist() == [[255, 255, 255]]


def test_voi_lut_sequence_is_applied() -> None:
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = list(range(255, -1, -1))  # an inverting LUT
    ds = synthetic(np.array([[0, 64, 255]], dtype=np.uint8), VOILUTSequence=Sequence([item]))
    assert display_image(ds).tolist() == [[255, 191, 0]]


def test_percentile_fallback_without_window_ignores_a_hot_pixel() -> None:
    ct = dcmread(sample("CT_small.dcm"))
    assert "WindowCenter" not in ct
    plain = display_image(copy.deepcopy(ct))
    assert plain.shape == (128, 128) and plain.dtype == np.uint8
    assert plain.min() == 0 and plain.max() == 255
    hot = copy.deepcopy(ct)
    pixels = hot.pixel_array.copy()
    pixels[0, 0] = np.iinfo(pixels.dtype).max
    hot.PixelData = pixels.tobytes()
    with_hot = display_image(hot)
    assert with_hot[0, 0] == 255
    assert np.abs(with_hot.astype(int) - plain.astype(int))[1:, 1:].mean() < 2


def test_rgb_becomes_luminance() -> None:
    colours = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    display = display_image(synthetic(colours, photometric="RGB"))
    assert display.tolist() == [[76, 150, 29, 255]]


def test_multiframe_uses_the_middle_frame(caplog: pytest.LogCaptureFixture) -> None:
    frames = np.stack([np.full((4, 4), value, dtype=np.uint16) for value in (50, 150, 250)])
    ds = synthetic(frames, WindowCenter=150, WindowWidth=100)
    assert int(ds.NumberOfFrames) == 3
    with caplog.at_level(logging.INFO, logger="dicom_ai.infer.pixels"):
        display = display_image(ds)
    middle_alone = synthetic(frames[1], WindowCenter=150, WindowWidth=100)
    assert np.array_equal(display, display_image(middle_alone))
    assert set(display.ravel().tolist()) == {129}  # ((150 - 149.5) / 99 + 0.5) * 255, PS3.3 C.11.2.1.2.1
    assert "middle frame 2" in caplog.text


def test_missing_pixel_data_names_the_instance() -> None:
    ds = synthetic(np.zeros((2, 2), dtype=np.uint8))
    del ds.PixelData
    with pytest.raises(PixelError, match=f"SOPInstanceUID {ds.SOPInstanceUID}: has no Pixel Data"):
        display_image(ds)


def test_unsupported_photometric_interpretation() -> None:
    ds = synthetic(np.zeros((2, 2, 3), dtype=np.uint8), photometric="RGB")
    ds.PhotometricInterpretation = "HSV"
    with pytest.raises(PixelError, match="'HSV' is not supported"):
        display_image(ds)


def test_corrupt_compressed_data_names_file_and_syntax() -> None:
    path = sample("RG1_J2KR.dcm")
    ds = dcmread(path)
    ds.PixelData = encapsulate([b"\x00" * 64])
    with pytest.raises(PixelError) as caught:
        display_image(ds)
    assert str(path) in str(caught.value)
    assert "JPEG 2000" in str(caught.value)
