"""The SR's measurement groups as OHIF v3 reads them, checked with highdicom's own SR reader.

OHIF (extensions/cornerstone-dicom-sr, v3.13) turns every TID 1501 group into a region on an image:
it takes the SCOORD that each NUM is INFERRED FROM, the image that SCOORD is SELECTED FROM, labels
the region with the NUMs ("concept: value unit") after the group's TEXT Comments, and crashes the
viewport on a group without any region. See docs/viewers.md.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.multival import MultiValue

from dicom_ai.domain import Finding, ImageResult
from dicom_ai.encode import encode_results
from dicom_ai.encode.sr import analysed_frame, heatmap_peak, region_box
from tests.conftest import require_binary
from tests.encode.encode_support import (
    CONSOLIDATION,
    EFFUSION,
    another_image,
    assert_valid,
    display_image,
    findings,
    gaussian_heatmap,
    header,
    model_info,
    priority,
    result_for,
)

COMMENT = "121106"
TRACKING_IDENTIFIER = "112039"
TRACKING_UID = "112040"


@pytest.fixture(scope="module")
def rg1() -> tuple[Path, Dataset, np.ndarray]:
    path, source = header()
    return path, source, display_image(path)


def encode(results: list[ImageResult], sources: list[Dataset], tmp: Path, name: str = "sr.dcm") -> tuple[Path, Dataset]:
    encoded = encode_results(results, {str(s.SOPInstanceUID): s for s in sources}, model_info(), priority())
    path = tmp / name
    encoded.sr.save_as(path, enforce_file_format=True)
    return path, dcmread(path)


def groups_of(dataset: Dataset) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    report = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    return list(report.content.get_image_measurement_groups())


def region_of(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> tuple[str, np.ndarray, list[str]]:
    """The one region every NUM of the group is inferred from: (referenced SOP instance, points, graphic type)."""
    regions = set()
    points = None
    for measurement in group.get_measurements():
        coordinates = measurement.referenced_coordinates
        assert len(coordinates) == 1, f"{measurement.name.meaning}: expected one SCOORD, got {len(coordinates)}"
        scoord = coordinates[0]
        assert scoord.RelationshipType == "INFERRED FROM"
        [image] = scoord.ContentSequence
        assert image.RelationshipType == "SELECTED FROM"
        reference = image.ReferencedSOPSequence[0]
        frames = reference.get("ReferencedFrameNumber")
        frames = () if frames is None else tuple(frames) if isinstance(frames, MultiValue) else (frames,)
        regions.add((reference.ReferencedSOPInstanceUID, scoord.graphic_type.value, frames))
        points = scoord.value
    assert len(regions) == 1, f"the NUMs of one group point at different regions: {regions}"
    uid, graphic_type, frames = regions.pop()
    return uid, np.asarray(points), [graphic_type, *map(str, frames)]


def top_level(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> list[Dataset]:
    return list(group[0].ContentSequence)


def named(items: list[Dataset], code_value: str) -> list[Dataset]:
    return [i for i in items if i.ConceptNameCodeSequence[0].CodeValue == code_value]


def test_every_group_has_a_region_on_its_own_source_image(rg1, tmp_path: Path) -> None:
    path, first, display = rg1
    second = another_image(first, 2)
    results = [
        result_for(path, first, display, gaussian_heatmap(display.shape)),
        result_for(path, second, display, None, findings(consolidation=0.4, effusion=0.71)),
    ]
    sr_path, sr = encode(results, [first, second], tmp_path)
    groups = groups_of(sr)
    assert len(groups) == 2
    seen = {}
    for group in groups:
        uid, points, (graphic_type, *frames) = region_of(group)
        seen[uid] = points
        assert graphic_type == "POLYLINE" and not frames
        assert points.shape == (5, 2) and np.array_equal(points[0], points[-1])  # a closed box
        columns, rows = int(first.Columns), int(first.Rows)
        assert np.all(points >= 0) and np.all(points[:, 0] <= columns) and np.all(points[:, 1] <= rows)
        assert [s.referenced_sop_instance_uid for s in group.source_images] == [uid]
    assert set(seen) == {str(first.SOPInstanceUID), str(second.SOPInstanceUID)}
    tracking = [g.tracking_uid for g in groups]
    assert all(tracking) and len(set(tracking)) == 2
    assert_valid(sr_path)
    run = subprocess.run([require_binary("dsrdump"), str(sr_path)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert run.returncode == 0 and "INFERRED FROM" in run.stdout.upper(), run.stderr


def test_a_positive_finding_is_boxed_where_the_heatmap_is_hot(rg1, tmp_path: Path) -> None:
    path, first, display = rg1
    heat = gaussian_heatmap(display.shape, centre=(0.55, 0.35))
    positive = result_for(path, first, display, heat)
    _, sr = encode([positive], [first], tmp_path)
    [group] = groups_of(sr)
    _, points, _ = region_of(group)
    (left, top), (right, bottom) = points.min(axis=0), points.max(axis=0)
    rows, columns = int(first.Rows), int(first.Columns)
    peak_row, peak_column = 0.55 * rows, 0.35 * columns
    assert left < peak_column < right and top < peak_row < bottom
    # half the maximum of this Gaussian lies 1.18 sigma from its centre (sigma 0.15 rows, 0.12 columns)
    assert (bottom - top) == pytest.approx(2 * 1.177 * 0.15 * rows, rel=0.05)
    assert (right - left) == pytest.approx(2 * 1.177 * 0.12 * columns, rel=0.05)


def test_a_negative_image_points_at_the_heatmap_peak(rg1, tmp_path: Path) -> None:
    """OHIF draws a POINT as an arrow with the label beside it, inside the image (a whole-image box would put
    the label right of the image, where a narrow viewport cuts it off)."""
    path, first, display = rg1
    heat = gaussian_heatmap(display.shape, centre=(0.25, 0.75))
    negative = result_for(path, first, display, heat, findings(consolidation=0.2, effusion=0.1))
    _, sr = encode([negative], [first], tmp_path)
    [group] = groups_of(sr)
    _, points, (graphic_type, *_) = region_of(group)
    assert graphic_type == "POINT" and points.shape == (1, 2)
    rows, columns = int(first.Rows), int(first.Columns)
    np.testing.assert_allclose(points[0], [0.75 * columns, 0.25 * rows], atol=1.0)


def test_an_image_without_heatmap_gets_the_whole_image(rg1, tmp_path: Path) -> None:
    """No heatmap (heatmaps = positive or none): nothing says where, so the region is the image itself."""
    path, first, display = rg1
    second = another_image(first, 2)
    results = [
        result_for(path, first, display, None, findings(consolidation=0.2, effusion=0.1)),
        result_for(path, second, display, None, findings()),
    ]
    _, sr = encode(results, [first, second], tmp_path)
    rows, columns = int(first.Rows), int(first.Columns)
    whole = np.array([[0, 0], [columns, 0], [columns, rows], [0, rows], [0, 0]], dtype=float)
    for group in groups_of(sr):
        _, points, (graphic_type, *_) = region_of(group)
        assert graphic_type == "POLYLINE"
        np.testing.assert_allclose(points, whole)


def test_what_ohif_labels_the_region_with(rg1, tmp_path: Path) -> None:
    """A TEXT Comment and one NUM per label, the leading finding first; tracking UID is the first UIDREF."""
    path, first, display = rg1
    second = another_image(first, 2)
    results = [
        result_for(path, first, display, gaussian_heatmap(display.shape)),
        result_for(path, second, display, None, findings(consolidation=0.2, effusion=0.1)),
    ]
    _, sr = encode(results, [first, second], tmp_path)
    by_image = {region_of(g)[0]: g for g in groups_of(sr)}
    comments = {}
    for uid, group in by_image.items():
        items = top_level(group)
        [comment] = named(items, COMMENT)
        assert comment.ValueType == "TEXT" and comment.RelationshipType == "CONTAINS"
        comments[uid] = comment.TextValue
        uid_refs = [i for i in items if i.ValueType == "UIDREF"]
        assert uid_refs[0].ConceptNameCodeSequence[0].CodeValue == TRACKING_UID  # OHIF takes the first UIDREF
        [identifier] = named(items, TRACKING_IDENTIFIER)
        assert ":" not in identifier.TextValue  # "TOOL-TAG:ToolName" would make OHIF treat it as its own tool
        numbers = [i for i in items if i.ValueType == "NUM"]
        assert numbers[0].ConceptNameCodeSequence[0].CodeMeaning == "Consolidation"
        assert {n.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue for n in numbers} == {"%"}
    assert comments[str(first.SOPInstanceUID)] == "Consolidation present - AI 93 % (demo)"
    assert comments[str(second.SOPInstanceUID)] == "Consolidation absent - AI 20 % (demo)"


def test_the_leading_finding_orders_the_numbers(rg1, tmp_path: Path) -> None:
    path, first, display = rg1
    both = (Finding("Consolidation", CONSOLIDATION, 0.62, 0.5), Finding("Pleural effusion", EFFUSION, 0.97, 0.5))
    _, sr = encode([result_for(path, first, display, gaussian_heatmap(display.shape), both)], [first], tmp_path)
    [group] = groups_of(sr)
    numbers = [i for i in top_level(group) if i.ValueType == "NUM"]
    assert [n.ConceptNameCodeSequence[0].CodeMeaning for n in numbers] == ["Pleural effusion", "Consolidation"]
    assert named(top_level(group), COMMENT)[0].TextValue == "Pleural effusion present - AI 97 % (demo)"
    assert group.finding_type.value == EFFUSION.value


def test_a_multi_frame_source_names_the_analysed_frame(tmp_path: Path) -> None:
    path, source = header("emri_small.dcm")  # Enhanced MR, 10 frames: the middle one (6) was analysed
    display = np.zeros((int(source.Rows), int(source.Columns)), np.uint8)
    result = result_for(path, source, display, gaussian_heatmap(display.shape))
    sr_path, sr = encode([result], [source], tmp_path)
    [group] = groups_of(sr)
    uid, _, (_, *frames) = region_of(group)
    assert uid == str(source.SOPInstanceUID) and frames == ["6"]
    assert analysed_frame(source) == 6
    assert_valid(sr_path, also_known=("needed to build DICOMDIR",))  # the sample has no Patient ID, Study ID


def test_region_box_scales_a_smaller_heatmap_to_the_image() -> None:
    heat = np.zeros((10, 20), np.float32)
    heat[2:4, 5:9] = 1.0
    heat[3, 6] = 0.4  # below half the maximum inside the box: the box stays the same
    box = region_box(heat, rows=100, columns=200)
    np.testing.assert_allclose(box, [[50, 20], [90, 20], [90, 40], [50, 40], [50, 20]])
    assert region_box(None, rows=100, columns=200)[2].tolist() == [200, 100]
    assert region_box(np.zeros((10, 20), np.float32), rows=100, columns=200)[2].tolist() == [200, 100]


def test_heatmap_peak_is_the_centre_of_the_hottest_pixel_scaled_to_the_image() -> None:
    heat = np.zeros((10, 20), np.float32)
    heat[7, 3] = 0.9
    np.testing.assert_allclose(heatmap_peak(heat, rows=100, columns=200), [[35, 75]])
