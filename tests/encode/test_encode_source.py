"""Ordinary input must give results: a radiograph from a de-identifying or minimal sender (Type 2
attributes absent or empty) or with malformed values still gets an SR and an SC that pass dciodvfy,
each change is logged naming the tag, and the stored file is never modified."""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, config, dcmread
from pydicom.datadict import tag_for_keyword

from dicom_ai.encode import encode_results
from dicom_ai.encode.source import normalised_source
from tests.odd_headers import CASES, MALFORMED, TYPE2_READ, set_raw
from tests.encode.encode_support import (
    assert_valid,
    display_image,
    gaussian_heatmap,
    header,
    model_info,
    priority,
    result_for,
)

# The source's own gaps, faithfully carried over: an empty Patient ID is legal (Type 2) but a
# DICOMDIR could not index it.
SOURCE_WARNINGS = ("Missing attribute or value that would be needed to build DICOMDIR",)
CUT = {"AccessionNumber": 16, "StudyID": 16, "PatientID": 64, "StudyDescription": 64}  # text merely too long


@pytest.fixture(scope="module")
def display() -> np.ndarray:
    path, _ = header()
    return display_image(path)[::8, ::8].copy()  # small: the cases are about the header, not pixels


@pytest.mark.parametrize("change", list(CASES.values()), ids=list(CASES))
def test_odd_source_headers_still_give_valid_results(
    change: Callable[[Dataset], None], display: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, dataset = header()
    change(dataset)
    stored = tmp_path / "received.dcm"
    with config.disable_value_validation():
        dataset.save_as(stored, enforce_file_format=True)
    before = hashlib.sha256(stored.read_bytes()).hexdigest()
    source = dcmread(stored, stop_before_pixels=True)  # as the pipeline reads the stored file
    result = result_for(stored, source, display, gaussian_heatmap(display.shape))
    with caplog.at_level(logging.WARNING, logger="dicom_ai.encode.source"):
        encoded = encode_results([result], {str(source.SOPInstanceUID): source}, model_info(), priority())
    sr_path, sc_path = tmp_path / "sr.dcm", tmp_path / "sc.dcm"
    encoded.sr.save_as(sr_path, enforce_file_format=True)
    encoded.secondary_captures[0].save_as(sc_path, enforce_file_format=True)
    assert_valid(sr_path, SOURCE_WARNINGS)
    assert_valid(sc_path, SOURCE_WARNINGS)
    for output in (encoded.sr, encoded.secondary_captures[0]):
        for keyword in TYPE2_READ:
            assert keyword in output, f"Type 2 {keyword} missing from {output.Modality}"
        assert output.StudyInstanceUID == source.StudyInstanceUID
    if source.get("PatientAge") == "045Y":  # the SR copied the Patient Study module too
        assert encoded.sr.PatientAge == source.PatientAge
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == before  # the stored file is untouched


@pytest.mark.parametrize(("keyword", "value"), [(k, v[0]) for k, v in MALFORMED.items()])
def test_each_change_is_logged_naming_file_and_tag(keyword: str, value: str, caplog: pytest.LogCaptureFixture) -> None:
    _, dataset = header()
    set_raw(dataset, keyword, value)
    original = copy.deepcopy(dataset)
    with caplog.at_level(logging.WARNING, logger="dicom_ai.encode.source"):
        normalised = normalised_source(dataset, "received.dcm")
    tag = tag_for_keyword(keyword)
    assert tag is not None
    [line] = [r.getMessage() for r in caplog.records if keyword in r.getMessage()]
    assert line.startswith("received.dcm: ") and f"({tag >> 16:04X},{tag & 0xFFFF:04X})" in line, line
    if keyword in CUT:
        assert normalised[keyword].value == value[:CUT[keyword]]
    elif keyword == "SpecificCharacterSet":
        assert normalised.SpecificCharacterSet == "ISO_IR 192"
    elif keyword in TYPE2_READ:
        assert keyword in normalised and normalised[keyword].value in (None, "")  # Type 2: present and empty
    else:
        assert keyword not in normalised
    assert dataset == original  # the source dataset itself is unchanged


def test_absent_type2_attributes_come_back_present_and_empty() -> None:
    _, dataset = header()
    for keyword in TYPE2_READ:
        del dataset[keyword]
    normalised = normalised_source(dataset, "x.dcm")
    for keyword in TYPE2_READ:
        assert keyword in normalised and normalised[keyword].value in (None, "")
        assert keyword not in dataset


def test_valid_values_are_kept_as_they_are() -> None:
    _, dataset = header()
    normalised = normalised_source(dataset, "x.dcm")
    for element in dataset:
        if element.tag.is_private or element.tag.group in (0x0002, 0x7FE0):
            continue
        assert element.tag in normalised, element.keyword
        if element.VR != "SQ":
            assert normalised[element.tag].value == element.value, element.keyword


def test_long_text_is_cut_and_multiple_values_reduced_to_the_first() -> None:
    _, dataset = header()
    set_raw(dataset, "StudyDescription", "d" * 100)
    set_raw(dataset, "PatientName", "Doe^Jane\\Roe^Richard")
    normalised = normalised_source(dataset, "x.dcm")
    assert normalised.StudyDescription == "d" * 64
    assert str(normalised.PatientName) == "Doe^Jane"
