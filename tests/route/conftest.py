"""Fixtures for the route tests: real headers from pydicom's test files, and a rules folder."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file

from dicom_ai.domain import Instance, Series, Study

REPO = Path(__file__).resolve().parents[2]
COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"
GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_STORAGE = "1.2.840.10008.5.1.4.1.1.11.1"


def read_header(name: str) -> Dataset:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom-data lacks {name}"
    return pydicom.dcmread(path, stop_before_pixels=True)


def series_of(header: Dataset, path: Path | None = None) -> Series:
    instance = Instance(
        sop_instance_uid=str(header.SOPInstanceUID),
        sop_class_uid=str(header.SOPClassUID),
        series_instance_uid=str(header.SeriesInstanceUID),
        study_instance_uid=str(header.StudyInstanceUID),
        path=path or Path(f"/spool/{header.SOPInstanceUID}.dcm"),
    )
    return Series(str(header.SeriesInstanceUID), (instance,), header)


def study_of(*headers: Dataset) -> Study:
    """A study from headers; every header is moved into the first one's study."""
    study_uid = str(headers[0].StudyInstanceUID)
    series = []
    for header in headers:
        header.StudyInstanceUID = study_uid
        series.append(series_of(header))
    return Study(study_uid, tuple(series))


@pytest.fixture
def chest_header() -> Dataset:
    """RG1_UNCR.dcm: a real chest PA CR (CHEST, PA, 1955x1841, ImageType DERIVED\\PRIMARY)."""
    return read_header("RG1_UNCR.dcm")


@pytest.fixture
def extremity_header() -> Dataset:
    """RG3_UNCI.dcm: a real extremity CR."""
    return read_header("RG3_UNCI.dcm")


@pytest.fixture
def ct_header() -> Dataset:
    return read_header("CT_small.dcm")


@pytest.fixture
def sr_header(chest_header: Dataset) -> Dataset:
    """An SR as a PACS would store next to the chest image: same study, no pixel attributes."""
    sr = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientSex", "StudyInstanceUID", "StudyDate"):
        setattr(sr, keyword, copy.deepcopy(chest_header.data_element(keyword).value))
    sr.SOPClassUID = COMPREHENSIVE_SR_STORAGE
    sr.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    sr.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    sr.Modality = "SR"
    sr.BodyPartExamined = "CHEST"
    sr.SeriesDescription = "AI findings"
    return sr


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    return directory


@pytest.fixture
def write(rules_dir: Path) -> Callable[[str, str], Path]:
    """Write a rules file into the rules folder and return its path."""

    def _write(name: str, text: str) -> Path:
        path = rules_dir / name
        path.write_text(text, encoding="utf-8")
        return path

    return _write


@pytest.fixture
def make_study() -> Callable[..., Study]:
    return study_of


@pytest.fixture
def make_series() -> Callable[..., Series]:
    return series_of


@pytest.fixture
def shipped_rules() -> Path:
    return REPO / "rules"
