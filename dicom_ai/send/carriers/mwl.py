"""Carrier MWL: the reading priority as a Modality Worklist entry. RIS/PACS that speak MWL understand
Requested Procedure Priority (0040,1003); Orthanc's worklist plugin serves the .wl files we write.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from dicom_ai.dicom_values import usable_text
from dicom_ai.domain import Carrier, OutboxEntry, OutboxItem, PriorityDecision
from dicom_ai.send.errors import DeliveryError
from dicom_ai.store.spool import fsync_directory

if TYPE_CHECKING:
    from dicom_ai.config import Settings
    from dicom_ai.send.carriers import DeliveryContext, Publication

CARRIER = Carrier.MWL

# PS3.3 C.4.11: the Defined Terms of Requested Procedure Priority.
MWL_PRIORITY = {"STAT": "STAT", "URGENT": "HIGH", "ROUTINE": "ROUTINE"}
# Modality Worklist Information Model - FIND: the SOP class a .wl file stands for.
MWL_SOP_CLASS = "1.2.840.10008.5.1.4.31"


def mwl_payload(header: Dataset, priority: str, reasons: str) -> str:
    """What the entry needs from the study, as JSON for the outbox (so a retry writes the same)."""
    keys = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyInstanceUID",
            "StudyDescription", "Modality", "StudyDate", "StudyTime", "SpecificCharacterSet")
    where = f"study {header.get('StudyInstanceUID', '?')}, worklist entry"
    values = {key: usable_text(header, key, where) for key in keys}  # a malformed value would break the entry
    values.update(priority=priority, reasons=reasons)
    return json.dumps(values, sort_keys=True)


def with_priority(payload: str, priority: str, reasons: str) -> str:
    """The same entry with a new priority (a radiologist's override)."""
    values = json.loads(payload)
    values.update(priority=priority, reasons=reasons)
    return json.dumps(values, sort_keys=True)


def worklist_entry(payload: str) -> Dataset:
    values = json.loads(payload)
    ds = Dataset()
    if values.get("SpecificCharacterSet"):
        ds.SpecificCharacterSet = values["SpecificCharacterSet"]
    for key in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                "StudyInstanceUID"):
        setattr(ds, key, values.get(key, ""))
    ds.RequestedProcedureID = values.get("AccessionNumber") or values["StudyInstanceUID"][-16:]
    ds.RequestedProcedureDescription = (f"AI {values['priority']}: {values.get('StudyDescription', '')}")[:64]
    ds.RequestedProcedurePriority = MWL_PRIORITY[values["priority"]]
    ds.ReasonForTheRequestedProcedure = values.get("reasons", "")[:64]
    step = Dataset()
    step.Modality = values.get("Modality", "") or "OT"
    step.ScheduledStationAETitle = ""
    step.ScheduledProcedureStepStartDate = values.get("StudyDate", "")
    step.ScheduledProcedureStepStartTime = values.get("StudyTime", "")
    step.ScheduledProcedureStepDescription = f"Read: AI priority {values['priority']}"[:64]
    step.ScheduledProcedureStepID = ds.RequestedProcedureID
    ds.ScheduledProcedureStepSequence = [step]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(MWL_SOP_CLASS)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[values["StudyInstanceUID"]])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def write_entry(folder: Path, study_uid: str, payload: str) -> Path:
    """Write (or replace) the study's .wl file atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{study_uid}.wl"
    handle, name = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(handle)
    try:
        worklist_entry(payload).save_as(name, enforce_file_format=True)
        with open(name, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(name, final)
        fsync_directory(folder)
    except Exception:
        Path(name).unlink(missing_ok=True)
        raise
    return final


def build(publication: Publication, settings: Settings) -> OutboxEntry | None:
    """The study's worklist entry, when a worklist folder is configured (mwl_dir)."""
    if settings.mwl_dir is None:
        return None
    priority = publication.priority
    payload = mwl_payload(publication.header, priority.level.name, "; ".join(priority.reasons))
    return OutboxEntry(CARRIER, publication.study_instance_uid, str(settings.mwl_dir), payload)


def rebuild(previous: str | None, study_uid: str, priority: PriorityDecision, settings: Settings) -> OutboxEntry | None:
    """The entry again with a new priority (an override), if one was written for the study."""
    if settings.mwl_dir is None or previous is None:
        return None
    return OutboxEntry(CARRIER, study_uid, str(settings.mwl_dir),
                       with_priority(previous, priority.level.name, "; ".join(priority.reasons)))


def deliver(item: OutboxItem, context: DeliveryContext) -> None:
    try:
        write_entry(Path(item.destination), item.study_instance_uid, item.payload)
    except (OSError, ValueError, KeyError) as exc:
        raise DeliveryError(f"cannot write worklist entry in {item.destination}: {exc}") from exc
