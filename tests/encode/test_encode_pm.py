"""The heatmap as a DICOM Parametric Map (heatmap_objects = sc,pm): real-valued 0-1 on the source images' own
pixel grid and geometry, one map per source series with a frame per image, so a viewer can lay it over the
series; valid under dciodvfy; UIDs derived like the others. Images without the geometry a map needs (a CR
without Frame of Reference) get none."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread

from dicom_ai.config import ConfigError, load_settings
from dicom_ai.encode import EncodedResults, encode_results
from dicom_ai.encode.pm import PARAMETRIC_MAP_STORAGE
from dicom_ai.train.phantom_dicom import write_ct_volume_study
from tests.encode.encode_support import (
    another_image,
    assert_valid,
    display_image,
    gaussian_heatmap,
    header,
    model_info,
    priority,
    result_for,
)

SALIENT = (14, 15, 16)  # the slices a 3-D model drew heatmaps on (0-based positions in the series)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Dataset]]:
    """A 32-slice head CT phantom series (96 x 96), as the node receives it."""
    files = write_ct_volume_study(tmp_path_factory.mktemp("ct"), seed=2, finding=True, patient_id="PM-TEST")
    return [(path, dcmread(path, stop_before_pixels=True)) for path in files]


def encode_volume(volume: list[tuple[Path, Dataset]], *, maps: bool = True, shrink: int = 2) -> EncodedResults:
    """Findings on the salient slices only, heatmaps smaller than the images (as models give them)."""
    results = []
    for index in SALIENT:
        path, source = volume[index]
        display = display_image(path)[::shrink, ::shrink]
        results.append(result_for(path, source, display, gaussian_heatmap(display.shape, centre=(0.3, 0.6))))
    sources = {str(source.SOPInstanceUID): source for _, source in volume}  # every image the model saw
    return encode_results(results, sources, model_info(), priority(), parametric_maps=maps)


@pytest.fixture(scope="module")
def ct(volume: list[tuple[Path, Dataset]], tmp_path_factory: pytest.TempPathFactory) -> tuple[EncodedResults, Path]:
    results = encode_volume(volume)
    path = tmp_path_factory.mktemp("pm") / "pm.dcm"
    [pm] = results.parametric_maps
    pm.save_as(path, enforce_file_format=True)
    return results, path


def test_the_maps_are_among_the_objects_to_store_and_send(ct: tuple[EncodedResults, Path]) -> None:
    assert [kind for kind, _ in ct[0].objects()] == ["SR", "SC", "SC", "SC", "PM"]


def test_no_maps_unless_asked_for(volume: list[tuple[Path, Dataset]]) -> None:
    results = encode_volume(volume, maps=False, shrink=4)
    assert results.parametric_maps == () and len(results.secondary_captures) == len(SALIENT)


def test_an_image_without_frame_of_reference_gets_no_map(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dicom_ai.encode")
    path, source = header("RG1_UNCR.dcm")  # a CR: no Frame of Reference, no plane geometry
    display = display_image(path)[::8, ::8]
    result = result_for(path, source, display, gaussian_heatmap(display.shape))
    results = encode_results([result], {str(source.SOPInstanceUID): source}, model_info(), priority(),
                             parametric_maps=True)
    assert results.parametric_maps == () and len(results.secondary_captures) == 1
    assert "no Parametric Map for series" in caplog.text and "has no Frame of Reference" in caplog.text


def test_images_at_one_position_get_no_map_instead_of_a_failure() -> None:
    path, source = header("CT_small.dcm")
    twin = another_image(source, 2)  # same plane position: two frames would overlap
    display = display_image(path)
    results = [result_for(path, s, display, gaussian_heatmap(display.shape)) for s in (source, twin)]
    encoded = encode_results(results, {str(s.SOPInstanceUID): s for s in (source, twin)}, model_info(), priority(),
                             parametric_maps=True)
    assert encoded.parametric_maps == () and len(encoded.secondary_captures) == 2


def test_the_map_passes_dciodvfy(ct: tuple[EncodedResults, Path]) -> None:
    assert_valid(ct[1])


def test_one_frame_per_image_with_the_heatmap_0_to_1_on_its_grid(
        volume: list[tuple[Path, Dataset]], ct: tuple[EncodedResults, Path]) -> None:
    pm = dcmread(ct[1])
    first = volume[0][1]
    assert pm.SOPClassUID == PARAMETRIC_MAP_STORAGE
    assert int(pm.NumberOfFrames) == len(volume) and (pm.Rows, pm.Columns) == (first.Rows, first.Columns)
    assert "FloatPixelData" in pm and pm.BitsAllocated == 32
    values = pm.pixel_array
    assert values.dtype == np.float32 and 0.0 <= float(values.min()) and float(values.max()) <= 1.0
    by_image = {}
    for index, frame in enumerate(pm.PerFrameFunctionalGroupsSequence):
        [derivation] = frame.DerivationImageSequence
        by_image[derivation.SourceImageSequence[0].ReferencedSOPInstanceUID] = values[index]
    assert set(by_image) == {str(source.SOPInstanceUID) for _, source in volume}
    for position, (_, source) in enumerate(volume):
        frame = by_image[str(source.SOPInstanceUID)]
        if position in SALIENT:
            assert float(frame.max()) > 0.95
            row, column = np.unravel_index(int(np.argmax(frame)), frame.shape)
            assert row == pytest.approx(0.3 * source.Rows, abs=3) and column == pytest.approx(0.6 * source.Columns, abs=3)
        else:
            assert not frame.any()  # no heatmap was drawn on this slice
    [mapping] = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence
    assert (float(mapping.DoubleFloatRealWorldValueFirstValueMapped),
            float(mapping.DoubleFloatRealWorldValueLastValueMapped)) == (0.0, 1.0)
    assert float(mapping.RealWorldValueSlope) == 1.0 and float(mapping.RealWorldValueIntercept) == 0.0


def test_the_map_shares_the_frame_of_reference_and_planes_of_its_series(
        volume: list[tuple[Path, Dataset]], ct: tuple[EncodedResults, Path]) -> None:
    pm = dcmread(ct[1])
    first = volume[0][1]
    assert pm.FrameOfReferenceUID == first.FrameOfReferenceUID
    shared = pm.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == pytest.approx(
        [float(v) for v in first.ImageOrientationPatient])
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == pytest.approx(
        [float(v) for v in first.PixelSpacing])
    positions = {tuple(round(float(v), 3) for v in f.PlanePositionSequence[0].ImagePositionPatient)
                 for f in pm.PerFrameFunctionalGroupsSequence}
    assert positions == {tuple(round(float(v), 3) for v in s.ImagePositionPatient) for _, s in volume}


def test_the_map_is_in_the_study_and_says_what_it_is(ct: tuple[EncodedResults, Path],
                                                      volume: list[tuple[Path, Dataset]]) -> None:
    results, path = ct
    pm = dcmread(path)
    first = volume[0][1]
    assert pm.StudyInstanceUID == first.StudyInstanceUID and pm.PatientID == first.PatientID
    assert pm.SeriesDescription == "AI URGENT Consolidation 93% map chest-xray-demo DEMO"
    assert pm.SeriesInstanceUID not in {results.sr.SeriesInstanceUID, results.secondary_captures[0].SeriesInstanceUID}
    assert pm.ContentQualification == "RESEARCH"  # a demo model
    assert any(item.get("DeviceUID") == model_info().device_uid for item in pm.ContributingEquipmentSequence)


def test_same_inputs_give_the_same_map_uids(volume: list[tuple[Path, Dataset]], ct: tuple[EncodedResults, Path]) -> None:
    again = encode_volume(volume, shrink=4)
    [a], [b] = ct[0].parametric_maps, again.parametric_maps
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    assert a.SOPInstanceUID not in {sc.SOPInstanceUID for sc in ct[0].secondary_captures}


@pytest.mark.parametrize(("value", "expected"), [("sc", ("sc",)), ("SC, pm", ("sc", "pm")), ("pm,sc,pm", ("sc", "pm"))])
def test_heatmap_objects_setting(value: str, expected: tuple[str, ...]) -> None:
    assert load_settings(environ={"DICOM_AI_HEATMAP_OBJECTS": value}).heatmap_objects == expected


@pytest.mark.parametrize(("value", "message"), [("pm", "must include sc"), ("sc,png", "'png'"), ("", "must include sc")])
def test_bad_heatmap_objects_name_the_key(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"DICOM_AI_HEATMAP_OBJECTS": value})
    assert "heatmap_objects" in str(caught.value) and message in str(caught.value)
