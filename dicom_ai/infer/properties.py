"""What a model saw of an image, besides its pixels: the header facts drift and subgroups are measured on.

A model trained on one scanner's images can quietly degrade when another vendor's, another
resolution or another exposure arrive; these properties, kept per analysed image, are what the
validation loop compares with the model card's reference (PSI and a KS test per week), and the
subgroups its performance is broken down by. Nothing here fails: a value a header lacks or spells
badly is simply unknown.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from pydicom.multival import MultiValue

from dicom_ai.domain import ImageProperties

if TYPE_CHECKING:
    from pydicom import Dataset

AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}  # PatientAge (AS) units, in years


def image_properties(header: Dataset, sop_instance_uid: str, model: str) -> ImageProperties:
    """The properties of one analysed image from its header (a header read without pixels is enough)."""
    return ImageProperties(
        sop_instance_uid=sop_instance_uid,
        model=model,
        manufacturer=_text(header, "Manufacturer"),
        station_name=_text(header, "StationName"),
        body_part=_text(header, "BodyPartExamined").upper(),
        modality=_text(header, "Modality").upper(),
        photometric=_text(header, "PhotometricInterpretation").upper(),
        rows=_integer(header, "Rows"),
        columns=_integer(header, "Columns"),
        pixel_spacing=_number(header, "PixelSpacing") or _number(header, "ImagerPixelSpacing"),
        kvp=_number(header, "KVP"),
        field_strength=_number(header, "MagneticFieldStrength"),
        patient_sex=_text(header, "PatientSex").upper()[:1],
        patient_age=patient_age(header),
    )


def patient_age(header: Dataset) -> float | None:
    """Years at the study: PatientAge ("045Y", "006M"...), else from PatientBirthDate and StudyDate."""
    text = _text(header, "PatientAge").upper()
    if len(text) == 4 and text[:3].isdigit() and text[3] in AGE_UNITS:
        return round(int(text[:3]) * AGE_UNITS[text[3]], 2)
    born, seen = _date(_text(header, "PatientBirthDate")), _date(_text(header, "StudyDate"))
    if born is None or seen is None or seen < born:
        return None
    return round((seen - born).days / 365.25, 2)


def _value(header: Dataset, keyword: str) -> object:
    try:
        value = header.get(keyword)
    except Exception:  # a malformed element raises when pydicom converts it; the value is just unknown
        return None
    if isinstance(value, MultiValue | list):
        return value[0] if len(value) else None
    return value


def _text(header: Dataset, keyword: str) -> str:
    value = _value(header, keyword)
    return "" if value is None else str(value).strip()[:64]


def _number(header: Dataset, keyword: str) -> float | None:
    try:
        value = float(str(_value(header, keyword)))
    except (TypeError, ValueError):
        return None
    return value if value == value and abs(value) != float("inf") else None


def _integer(header: Dataset, keyword: str) -> int | None:
    value = _number(header, keyword)
    return int(value) if value is not None else None


def _date(text: str) -> date | None:
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
