"""A node's database with processed studies (findings, a real AI SR in the spool), for the validation loop's tests."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_ai.config import Settings
from dicom_ai.domain import (
    Code,
    Finding,
    FindingRow,
    ImageProperties,
    ImageResult,
    Instance,
    ModelInfo,
    Priority,
    PriorityDecision,
    ReceivedInstance,
    ReportRule,
    ResultFile,
)
from dicom_ai.encode import encode_results
from dicom_ai.send.carriers import dicom
from dicom_ai.store import Spool, Stores
from tests.conftest import sample

MODEL = "chest-xray-demo"
LABEL = "Consolidation"
CONSOLIDATION = Code("95436008", "SCT", "Lung consolidation")
RULES = {MODEL: [ReportRule(MODEL, LABEL, ("95436008",), ("consolidation", "airspace opacity"))]}


def model_info() -> ModelInfo:
    return ModelInfo(MODEL, "1.0.0", "2.25.311528451287467318112830843208215151823", "dicom-ai",
                     "Chest radiograph consolidation (demo)", True, "demo")


def processed_study(stores: Stores, settings: Settings, *, accession: str, probability: float,
                    patient_id: str = "P1", study_date: str = "20240115", threshold: float = 0.35,
                    now: float = 1_700_000_000.0, manufacturer: str = "ACME", rows: int = 672) -> str:
    """A CR study received, processed by the chest model (one image) and done: its AI SR is in the spool."""
    spool = Spool(settings.spool_dir)
    source = dcmread(sample("RG1_UNCR.dcm"), stop_before_pixels=True)
    source = copy.deepcopy(source)
    source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    source.PatientID, source.AccessionNumber, source.StudyDate = patient_id, accession, study_date
    study_uid = str(source.StudyInstanceUID)
    path = spool.studies / f"{source.SOPInstanceUID}.dcm"
    stores.studies.record_instance(ReceivedInstance(
        str(source.SOPInstanceUID), str(source.SOPClassUID), str(source.SeriesInstanceUID), study_uid, "CR",
        "1.2.840.10008.1.2.1", path, 1, "ORTHANC", patient_id=patient_id, accession_number=accession,
        study_date=study_date), now=now)
    stores.studies.complete_quiet_studies(now + 10)
    while stores.studies.claim_complete_study() not in (study_uid, None):
        pass
    finding = Finding(LABEL, CONSOLIDATION, probability, threshold)
    instance = Instance(str(source.SOPInstanceUID), str(source.SOPClassUID), str(source.SeriesInstanceUID), study_uid, path)
    image = ImageResult(instance, (finding,), np.zeros((8, 8), dtype=np.uint8), None)
    decision = PriorityDecision(Priority.ROUTINE, probability, ("test",))
    encoded = encode_results([image], {str(source.SOPInstanceUID): source}, model_info(), decision)
    sr_path = spool.result_path(study_uid, str(encoded.sr.SOPInstanceUID))
    spool.write_dataset(encoded.sr, sr_path)
    result = ResultFile(str(encoded.sr.SOPInstanceUID), str(encoded.sr.SeriesInstanceUID), "SR", MODEL, "1.0.0", sr_path)
    properties = ImageProperties(str(source.SOPInstanceUID), MODEL, manufacturer=manufacturer, photometric="MONOCHROME2",
                                 rows=rows, columns=rows, pixel_spacing=0.43, patient_sex="F", patient_age=50.0,
                                 body_part="CHEST", modality="CR")
    assert stores.studies.save_outcome(
        study_uid, rules=["chest"], models=[f"{MODEL}@1.0.0"],
        findings=[FindingRow(str(source.SOPInstanceUID), MODEL, "1.0.0", finding)], results=[result],
        priority=decision, outbox=dicom.build_results([result], settings), images=[properties])
    return study_uid


def oru(accession: str, text: str, *, control_id: str = "MSG1", status: str = "F", patient: str = "P1",
        when: str = "20240115093000", extra: str = "") -> str:
    """A radiology report as a RIS sends it (ER7, CR between segments)."""
    return (f"MSH|^~\\&|RIS|HOSP|DICOM_AI|NODE|20240115120000||ORU^R01^ORU_R01|{control_id}|P|2.5\r"
            f"PID|1||{patient}^^^HOSP||Doe^Jane\r"
            f"OBR|1|PL-{accession}|{accession}|71045^XR CHEST 1 VIEW^CPT|||{when}|||||||||||||||20240115110000||CR|{status}\r"
            f"OBX|1|TX|IMP^Impression^L||{text}||||||{status}\r{extra}")
