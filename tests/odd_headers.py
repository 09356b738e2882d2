"""Odd source headers, as de-identifying, minimal or careless senders write them: each case changes
a real radiograph's header (an attribute removed, emptied, or with a value that breaks its VR).
Shared by the encode and prioritize tests: every output built from a header must cope with them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydicom import Dataset, config, dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement

# Type 2 attributes highdicom reads from the source, plus what our own encode code reads.
TYPE2_READ = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
              "StudyDate", "StudyTime", "ReferringPhysicianName")
ALSO_READ = ("BodyPartExamined", "Laterality", "ImageLaterality", "PatientOrientation", "ImageOrientationPatient",
             "InstanceNumber", "SeriesNumber", "Modality", "Manufacturer", "SpecificCharacterSet",
             "ProcedureCodeSequence", "StudyDescription", "PatientAge", "PatientWeight")
# keyword -> a value that breaks its VR (or highdicom), as senders were seen to write them.
MALFORMED: dict[str, list[str]] = {
    "StudyDate": ["2020-01-01", "20201399", "2020", "unknown"],
    "StudyTime": ["25xx", "246000", "1", "12:30"],
    "PatientBirthDate": ["abc", "19000229"],
    "PatientSex": ["U", "male", "f"],
    "PatientName": ["a^b^c^d^e^f", "Doe\\John", "x" * 70, "a=b=c=d", "Doe\nJohn", "single"],
    "ReferringPhysicianName": ["a=b=c=d", "1^2^3^4^5^6"],
    "AccessionNumber": ["A" * 30],
    "StudyID": ["S" * 20, "a\\b"],
    "PatientID": ["P" * 80],
    "PatientAge": ["45 years", "045"],
    "PatientWeight": ["heavy", "70 kg"],
    "PatientSize": ["1,80"],
    "InstanceNumber": ["one"],
    "BodyPartExamined": ["chest, left", "X" * 20],
    "StudyDescription": ["d" * 100],
    "SpecificCharacterSet": ["ISO_IR 999"],
    "AcquisitionDate": ["yesterday"],
    "ContentTime": ["noon"],
    "ImageOrientationPatient": ["a\\b\\c\\d\\e\\f"],
    "PatientOrientation": ["left\\up"],
}


def set_raw(dataset: Dataset, keyword: str, value: str) -> None:
    """Put `value` as the bytes a sender wrote (pydicom would refuse or convert it otherwise)."""
    tag = tag_for_keyword(keyword)
    assert tag is not None
    data = value.encode("latin-1")
    data += b" " if len(data) % 2 else b""
    dataset[tag] = RawDataElement(tag, dictionary_VR(tag), len(data), data, 0, False, True)


def removed(keyword: str) -> Callable[[Dataset], None]:
    def change(dataset: Dataset) -> None:
        if keyword in dataset:
            del dataset[keyword]

    return change


def emptied(keyword: str) -> Callable[[Dataset], None]:
    def change(dataset: Dataset) -> None:
        tag = tag_for_keyword(keyword)
        assert tag is not None
        dataset[tag] = DataElement(tag, dictionary_VR(tag), [] if dictionary_VR(tag) == "SQ" else None)

    return change


def malformed(keyword: str, value: str) -> Callable[[Dataset], None]:
    return lambda dataset: set_raw(dataset, keyword, value)


def everything(dataset: Dataset) -> None:
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyTime",
                    "ReferringPhysicianName", "BodyPartExamined", "Manufacturer", "InstanceNumber",
                    "PatientOrientation"):
        removed(keyword)(dataset)
    for keyword in ("PatientName", "PatientID"):
        emptied(keyword)(dataset)
    for keyword in ("StudyDate", "PatientAge", "PatientWeight", "StudyDescription", "SpecificCharacterSet",
                    "AcquisitionDate", "ImageOrientationPatient"):
        set_raw(dataset, keyword, MALFORMED[keyword][0])


def orientation_from_cosines_only(dataset: Dataset) -> None:
    """No PatientOrientation, so the SC's orientation comes from ImageOrientationPatient: malformed here."""
    removed("PatientOrientation")(dataset)
    set_raw(dataset, "ImageOrientationPatient", "1\\0\\x\\0\\1\\0")


def sop_class(uid: str) -> Callable[[Dataset], None]:
    """A SOP class highdicom has no IOD for (retired, or a vendor's private storage class)."""
    def change(dataset: Dataset) -> None:
        dataset.SOPClassUID = uid
        dataset.file_meta.MediaStorageSOPClassUID = uid
        dataset.PatientAge = "045Y"  # Patient Study module: only the SR's module copy carries it

    return change


CASES: dict[str, Callable[[Dataset], None]] = {
    **{f"{k} removed": removed(k) for k in (*TYPE2_READ, *ALSO_READ)},
    **{f"{k} empty": emptied(k) for k in (*TYPE2_READ, *ALSO_READ)},
    **{f"{k}={v[:12]!r}": malformed(k, v) for k, values in MALFORMED.items() for v in values},
    "ImageOrientationPatient malformed, no PatientOrientation": orientation_from_cosines_only,
    "retired SOP class (Ultrasound Image Storage, retired)": sop_class("1.2.840.10008.5.1.4.1.1.6"),
    "private SOP class": sop_class("1.2.392.200036.9125.1.1.2"),
    "all at once": everything,
}


def stored(change: Callable[[Dataset], None], dataset: Dataset, path: Path) -> Dataset:
    """Apply `change`, write the file as received, and read its header back as the pipeline does."""
    change(dataset)
    with config.disable_value_validation():
        dataset.save_as(path, enforce_file_format=True)
    return dcmread(path, stop_before_pixels=True)
