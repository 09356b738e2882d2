"""The model as DICOM equipment: checked once, then written into every result's provenance.

Contributing Equipment Sequence (0018,A001) is where a reader (and an auditor) finds which
algorithm, which version and which device made a derived object (PS3.3 C.12.1.1.5).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.uid import RE_VALID_UID

if TYPE_CHECKING:
    from dicom_ai.domain import ModelInfo

# Purpose of Reference: DCM 109102 "Processing Equipment".
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment
UI_MAX_CHARS = 64
LO_MAX_CHARS = 64  # Manufacturer, Manufacturer's Model Name, Software Versions are LO
ST_MAX_CHARS = 1024  # Contribution Description is ST
NOT_FOR_CLINICAL_USE = "NOT FOR DIAGNOSTIC USE - SYNTHETIC DEMO MODEL"


def check_model(model: ModelInfo) -> None:
    """Raise ValueError naming the ModelInfo field that cannot go into DICOM as it is."""
    if len(model.device_uid) > UI_MAX_CHARS or not re.fullmatch(RE_VALID_UID, model.device_uid):
        raise ValueError(f"ModelInfo.device_uid {model.device_uid!r} of model {model.name!r} is not a valid UID")
    for field_name in ("name", "version", "manufacturer", "display_name"):
        value = getattr(model, field_name)
        if not value or not value.strip():
            raise ValueError(f"ModelInfo.{field_name} of model {model.name!r} is empty")
        if len(value) > LO_MAX_CHARS or "\\" in value:
            raise ValueError(
                f"ModelInfo.{field_name} {value!r} must be at most {LO_MAX_CHARS} characters without a backslash"
            )


def contribution_description(model: ModelInfo) -> str:
    """What the model did, in words, with the not-for-clinical-use warning when it applies."""
    text = f"{model.display_name} {model.version}: {model.intended_use}".strip()
    if model.not_for_clinical_use:
        text = f"{NOT_FOR_CLINICAL_USE}. {text}"
    return text[:ST_MAX_CHARS]


def contributing_equipment(model: ModelInfo, when: datetime) -> hd.ContributingEquipment:
    """One Contributing Equipment item for the model (Purpose of Reference 109102 Processing Equipment)."""
    check_model(model)
    item = hd.ContributingEquipment(
        manufacturer=model.manufacturer,
        purpose_of_reference=PROCESSING_EQUIPMENT,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        contribution_datetime=when,
        contribution_description=contribution_description(model),
    )
    item.DeviceUID = model.device_uid
    return item
