"""Secondary Captures carry the source's orientation as single biped letters (what highdicom takes)."""

from __future__ import annotations

from pydicom import Dataset

from dicom_ai.encode.sc import patient_orientation


def _ds(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_mammography_orientation_keeps_the_dominant_letter() -> None:
    assert patient_orientation(_ds(PatientOrientation=["P", "FL"])) == ("P", "F")


def test_orientation_from_oblique_cosines_and_unusable_values() -> None:
    assert patient_orientation(_ds(ImageOrientationPatient=[0.9, 0.3, 0, 0, 0, -1])) == ("L", "F")
    assert patient_orientation(_ds(PatientOrientation=["X", "Y"])) is None
    assert patient_orientation(_ds()) is None
