"""encode_results on a real chest radiograph: validity (dciodvfy, dsrdump), content, determinism."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian

from dicom_ai.domain import ImageResult, Priority
from dicom_ai.encode import EncodedResults, encode_results
from dicom_ai.encode.describe import LO_MAX_CHARS
from dicom_ai.encode.sc import MAX_SIDE, MIN_WIDTH, picture
from tests.conftest import require_binary
from tests.encode.encode_support import (
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

DEVICE_OBSERVER_UID = "121012"
DEVICE_OBSERVER_NAME = "121013"
TRACKING_UID = "112040"
FINDING = "121071"
SOURCE_OF_MEASUREMENT = "121112"
PROCESSING_EQUIPMENT = "109102"
# Attributes that must not be copied into an RGB image (viewers then render it black).
GREYSCALE_ONLY = ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept", "VOILUTFunction")


@dataclass
class Case:
    sources: dict[str, Dataset]
    results: list[ImageResult]
    encoded: EncodedResults
    sr_path: Path
    sc_path: Path


@pytest.fixture(scope="module")
def rg1_display() -> np.ndarray:
    path, _ = header()
    return display_image(path)


@pytest.fixture(scope="module")
def case(rg1_display: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Case:
    """Two images of one study: the first with a heatmap, the second without (so no SC for it)."""
    path, first = header()
    second = another_image(first, 2)
    results = [
        result_for(path, second, rg1_display, None, findings(consolidation=0.4, effusion=0.71)),
        result_for(path, first, rg1_display, gaussian_heatmap(rg1_display.shape)),
    ]
    sources = {str(first.SOPInstanceUID): first, str(second.SOPInstanceUID): second}
    encoded = encode_results(results, sources, model_info(), priority())
    out = tmp_path_factory.mktemp("encoded")
    encoded.sr.save_as(out / "sr.dcm", enforce_file_format=True)
    encoded.secondary_captures[0].save_as(out / "sc.dcm", enforce_file_format=True)
    return Case(sources, results, encoded, out / "sr.dcm", out / "sc.dcm")


def content_items(dataset: Dataset) -> list[Dataset]:
    """Every SR content item, depth first."""
    items = []
    for item in dataset.get("ContentSequence", []):
        items.append(item)
        items.extend(content_items(item))
    return items


def named(items: list[Dataset], code_value: str) -> list[Dataset]:
    return [i for i in items if "ConceptNameCodeSequence" in i and i.ConceptNameCodeSequence[0].CodeValue == code_value]


def test_sr_passes_dciodvfy_and_dsrdump(case: Case) -> None:
    assert_valid(case.sr_path)
    dsrdump = require_binary("dsrdump")
    run = subprocess.run([dsrdump, str(case.sr_path)], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert "Imaging Measurement Report" in run.stdout
    assert "Present" in run.stdout and "Absent" in run.stdout


def test_sc_passes_dciodvfy(case: Case) -> None:
    assert_valid(case.sc_path)


def test_sr_is_a_tid_1500_report_by_a_device(case: Case) -> None:
    sr = dcmread(case.sr_path)
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"  # root OHIF looks for
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    items = content_items(sr)
    assert named(items, DEVICE_OBSERVER_UID)[0].UID == model_info().device_uid
    assert named(items, DEVICE_OBSERVER_NAME)[0].TextValue == "Thorax-Röntgen"  # read back as UTF-8
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert sr.StudyInstanceUID == case.results[0].source.study_instance_uid
    assert sr.PatientID == "9RG1"
    assert int(sr.SeriesNumber) >= 9000
    # The second image's effusion (71%) is the "+1" positive finding.
    assert sr.SeriesDescription == "AI URGENT Consolidation 93% +1 chest-xray-demo DEMO"


def test_sr_has_one_group_per_image_referencing_every_source(case: Case) -> None:
    sr = dcmread(case.sr_path)
    items = content_items(sr)
    groups = [i for i in items if i.ValueType == "CONTAINER" and i.ConceptNameCodeSequence[0].CodeValue == "125007"]
    assert len(groups) == 2
    referenced = set()
    for group in groups:
        inner = content_items(group)
        assert named(inner, TRACKING_UID)[0].UID
        sources = named(inner, SOURCE_OF_MEASUREMENT)
        referenced |= {s.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for s in sources}
        values = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in inner if i.ValueType in ("CODE", "NUM")}
        assert {"Consolidation", "Pleural effusion"} <= set(values)
    assert referenced == set(case.sources)
    evidence = {
        instance.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    assert evidence == set(case.sources)


def test_sr_findings_are_present_absent_with_probability(case: Case) -> None:
    sr = dcmread(case.sr_path)
    by_image = {}
    for group in [i for i in content_items(sr) if i.get("ValueType") == "CONTAINER"][1:]:
        inner = content_items(group)
        image = named(inner, SOURCE_OF_MEASUREMENT)[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        by_image[image] = {
            "finding": named(inner, FINDING)[0].ConceptCodeSequence[0].CodeValue,
            "codes": {i.ConceptNameCodeSequence[0].CodeValue: i.ConceptCodeSequence[0].CodeValue
                      for i in inner if i.ValueType == "CODE" and "ConceptCodeSequence" in i},
            "numbers": {i.ConceptNameCodeSequence[0].CodeValue: float(i.MeasuredValueSequence[0].NumericValue)
                        for i in inner if i.ValueType == "NUM"},
        }
    first, second = case.results[1].source.sop_instance_uid, case.results[0].source.sop_instance_uid
    assert by_image[first]["finding"] == "95436008"  # Consolidation leads where it is positive
    assert by_image[first]["codes"]["95436008"] == "52101004"  # Present
    assert by_image[first]["codes"]["60046008"] == "2667000"  # Absent
    assert by_image[first]["numbers"] == {"95436008": pytest.approx(93.4), "60046008": pytest.approx(12.0)}
    assert by_image[second]["finding"] == "60046008"  # effusion is the positive one there
    assert by_image[second]["codes"] == {"95436008": "2667000", "60046008": "52101004", FINDING: "60046008"}


def test_both_outputs_carry_the_model_as_contributing_equipment(case: Case) -> None:
    model = model_info()
    for dataset in (case.encoded.sr, case.encoded.secondary_captures[0]):
        ours = [
            item for item in dataset.ContributingEquipmentSequence
            if item.PurposeOfReferenceCodeSequence[0].CodeValue == PROCESSING_EQUIPMENT
            and item.get("DeviceUID") == model.device_uid
        ]
        assert len(ours) == 1
        item = ours[0]
        assert item.Manufacturer == model.manufacturer
        assert item.ManufacturerModelName == model.name
        assert item.SoftwareVersions == model.version
        assert item.ContributionDateTime
        assert "NOT FOR DIAGNOSTIC USE" in item.ContributionDescription


def test_one_secondary_capture_per_image_with_a_heatmap(case: Case) -> None:
    assert len(case.encoded.secondary_captures) == 1
    sc = dcmread(case.sc_path)
    source = case.sources[case.results[1].source.sop_instance_uid]
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.PatientID == source.PatientID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3 and sc.BitsAllocated == 8
    assert sc.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert sc.BurnedInAnnotation == "YES"
    assert sc.BodyPartExamined == "CHEST"
    assert sc.SpecificCharacterSet == "ISO_IR 192"
    assert not [keyword for keyword in GREYSCALE_ONLY if keyword in sc]
    assert max(sc.Rows, sc.Columns) <= MAX_SIDE
    assert sc.SeriesDescription == "AI URGENT Consolidation 93% +1 heatmap chest-xray-demo DEMO"
    assert len(sc.SeriesDescription) <= LO_MAX_CHARS
    pixels = sc.pixel_array
    assert pixels.shape == (sc.Rows, sc.Columns, 3)
    band = pixels[-40:]
    assert np.any(band != 0) and np.any(band == 0)  # text on the black caption band


def test_caption_band_differs_with_the_caption(rg1_display: np.ndarray, case: Case) -> None:
    result = case.results[1]
    urgent = picture(result, model_info(), priority(Priority.URGENT))
    routine = picture(result, model_info(), priority(Priority.ROUTINE))
    assert urgent.shape == routine.shape
    changed_rows = np.nonzero(np.any(urgent != routine, axis=(1, 2)))[0]
    image_rows = round(rg1_display.shape[0] * urgent.shape[1] / rg1_display.shape[1])
    assert changed_rows.size > 0
    assert changed_rows.min() >= image_rows - 1  # only the caption band changed, not the image


def test_same_inputs_give_the_same_uids_whatever_the_order(case: Case) -> None:
    again = encode_results(list(reversed(case.results)), case.sources, model_info(), priority())
    assert again.sr.SOPInstanceUID == case.encoded.sr.SOPInstanceUID
    assert again.sr.SeriesInstanceUID == case.encoded.sr.SeriesInstanceUID
    assert [sc.SOPInstanceUID for sc in again.secondary_captures] == [
        sc.SOPInstanceUID for sc in case.encoded.secondary_captures
    ]
    assert [sc.SeriesInstanceUID for sc in again.secondary_captures] == [
        sc.SeriesInstanceUID for sc in case.encoded.secondary_captures
    ]
    tracking = [i.UID for i in named(content_items(again.sr), TRACKING_UID)]
    assert tracking == [i.UID for i in named(content_items(case.encoded.sr), TRACKING_UID)]


def test_another_model_version_gives_other_uids(case: Case) -> None:
    newer = encode_results(case.results, case.sources, model_info(version="1.1.0"), priority())
    old = case.encoded
    old_uids = {old.sr.SOPInstanceUID, old.sr.SeriesInstanceUID, old.secondary_captures[0].SOPInstanceUID,
                old.secondary_captures[0].SeriesInstanceUID}
    new_uids = {newer.sr.SOPInstanceUID, newer.sr.SeriesInstanceUID, newer.secondary_captures[0].SOPInstanceUID,
                newer.secondary_captures[0].SeriesInstanceUID}
    assert len(new_uids) == 4 and not old_uids & new_uids
    assert len(old_uids | {old.sr.StudyInstanceUID}) == 5  # SR and SC series apart, none reuses the study's


def test_ascii_clinical_model_keeps_the_source_character_set(rg1_display: np.ndarray) -> None:
    path, source = header()
    small = rg1_display[::4, ::4]
    result = result_for(path, source, small, gaussian_heatmap(small.shape))
    model = model_info(display_name="Chest X-ray", not_for_clinical_use=False)
    encoded = encode_results([result], {str(source.SOPInstanceUID): source}, model, priority())
    assert encoded.sr.SpecificCharacterSet == source.SpecificCharacterSet == "ISO_IR 100"
    assert encoded.secondary_captures[0].SpecificCharacterSet == "ISO_IR 100"
    assert not encoded.sr.SeriesDescription.endswith("DEMO")
    equipment = [i for i in encoded.sr.ContributingEquipmentSequence if i.get("DeviceUID")]
    assert "NOT FOR DIAGNOSTIC USE" not in equipment[0].ContributionDescription


def test_large_images_are_scaled_down_and_small_ones_up(rg1_display: np.ndarray, case: Case) -> None:
    source = case.results[1].source
    tall = np.concatenate([rg1_display, rg1_display[:1000]], axis=0)[:, :1200]  # 2955 x 1200
    big = picture(ImageResult(source, findings(), tall, gaussian_heatmap(tall.shape)), model_info(), priority())
    assert max(big.shape[:2]) <= MAX_SIDE
    tiny = rg1_display[::16, ::16]
    small = picture(ImageResult(source, findings(), tiny, gaussian_heatmap(tiny.shape)), model_info(), priority())
    assert small.shape[1] == MIN_WIDTH


def test_ct_without_body_part_passes_dciodvfy(tmp_path: Path) -> None:
    path, source = header("CT_small.dcm")
    display = display_image(path)
    result = result_for(path, source, display, gaussian_heatmap(display.shape))
    encoded = encode_results([result], {str(source.SOPInstanceUID): source}, model_info(), priority())
    sc = encoded.secondary_captures[0]
    assert list(sc.PatientOrientation) == ["L", "P"]  # from Image Orientation (Patient)
    sc.save_as(tmp_path / "sc.dcm", enforce_file_format=True)
    encoded.sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert_valid(tmp_path / "sc.dcm")
    assert_valid(tmp_path / "sr.dcm")


def test_errors_name_what_is_wrong(case: Case) -> None:
    first = case.results[1]
    with pytest.raises(ValueError, match="at least one image result"):
        encode_results([], case.sources, model_info(), priority())
    with pytest.raises(ValueError, match=f"no source dataset for SOPInstanceUID {first.source.sop_instance_uid}"):
        encode_results([first], {}, model_info(), priority())
    with pytest.raises(ValueError, match="device_uid"):
        encode_results([first], case.sources, model_info(device_uid="not a uid"), priority())
    with pytest.raises(ValueError, match="more than one image result"):
        encode_results([first, first], case.sources, model_info(), priority())
    other_study = another_image(case.sources[first.source.sop_instance_uid], 3)
    other_study.StudyInstanceUID = "1.2.3.4"
    stray = result_for(first.source.path, other_study, first.display, None)
    with pytest.raises(ValueError, match="one study per call"):
        encode_results([first, stray], {**case.sources, str(other_study.SOPInstanceUID): other_study},
                       model_info(), priority())
    bad = ImageResult(first.source, first.findings, first.display, np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match=f"SOPInstanceUID {first.source.sop_instance_uid}: heatmap shape"):
        encode_results([bad], case.sources, model_info(), priority())
