"""The priority carriers built from the study header (HL7 ORU, Modality Worklist entry, webhook and
e-mail notices) cope with the same odd headers as the SR: a valid message or entry every time."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from pydicom import Dataset, dcmread

from dicom_ai.dicom_values import why_invalid
from dicom_ai.domain import Code, Finding, ModelInfo, Priority, PriorityDecision
from dicom_ai.send.carriers.hl7 import oru_message
from dicom_ai.send.carriers.mwl import mwl_payload, write_entry
from dicom_ai.send.carriers.email import email_payload
from dicom_ai.send.carriers.webhook import notice_payload
from tests.conftest import sample
from tests.odd_headers import CASES, stored

MODEL = ModelInfo("chest-xray-demo", "1.0.0", "2.25.1", "dicom-ai", "Chest demo", True, "demo")
FINDINGS = [Finding("Consolidation", Code("95436008", "SCT", "Lung consolidation"), 0.973, 0.5)]
STAT = PriorityDecision(Priority.STAT, 0.97, ("Consolidation 97%",))


def odd_header(change: Callable[[Dataset], None], folder: Path) -> Dataset:
    return stored(change, dcmread(sample("RG1_UNCR.dcm"), stop_before_pixels=True), folder / "received.dcm")


@pytest.mark.parametrize("change", list(CASES.values()), ids=list(CASES))
def test_hl7_result_is_valid_for_odd_headers(change: Callable[[Dataset], None], tmp_path: Path) -> None:
    header = odd_header(change, tmp_path)
    text = oru_message(header, STAT, FINDINGS, [MODEL], "RIS", "")
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    assert message.validate()
    pid = message.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_3.to_er7() and pid.pid_5.to_er7()  # required fields, whatever the header lacks


def test_a_study_without_a_name_gets_an_unspecified_name_not_an_hl7_null(tmp_path: Path) -> None:
    header = odd_header(CASES["PatientName removed"], tmp_path)
    message = parse_message(oru_message(header, STAT, FINDINGS, [MODEL], "RIS", ""))
    assert message.oru_r01_patient_result.oru_r01_patient.pid.pid_5.to_er7() == "^^^^^^U"


@pytest.mark.parametrize("change", list(CASES.values()), ids=list(CASES))
def test_worklist_entry_holds_only_valid_values(change: Callable[[Dataset], None], tmp_path: Path) -> None:
    header = odd_header(change, tmp_path)
    entry = dcmread(write_entry(tmp_path / "worklists", str(header.StudyInstanceUID),
                                mwl_payload(header, "STAT", "Consolidation 97%")))
    invalid = []
    for element in entry.iterall():
        values = element.value if element.VM > 1 else [element.value]
        invalid += [f"{element.keyword} {v!r} {why}" for v in values
                    if element.VR != "SQ" and (why := why_invalid(element.VR, v, element.keyword))]
    assert not invalid
    assert entry.RequestedProcedurePriority == "STAT"


@pytest.mark.parametrize("change", list(CASES.values()), ids=list(CASES))
def test_notices_are_json_for_odd_headers(change: Callable[[Dataset], None], tmp_path: Path) -> None:
    header = odd_header(change, tmp_path)
    patient = {key: str(header.get(key, "")) for key in ("PatientID", "PatientName", "AccessionNumber")}  # as publish.py
    notice = notice_payload(str(header.StudyInstanceUID), STAT, FINDINGS, [MODEL], patient)
    assert json.loads(notice)["patient"] == patient
    mail = json.loads(email_payload(notice, "dicom-ai@localhost", ["ward@localhost"]))
    assert "AI priority: STAT" in mail["body"]


def test_control_characters_never_reach_the_hl7_message() -> None:
    """Found by fuzzing (tests/fuzz/crashes/hl7): MLLP's framing bytes (VT, FS) or a CR in a value
    cut the message; a PatientID of control characters only left the required PID-3 empty."""
    header = Dataset()
    header.StudyInstanceUID = "1.2.3\x0b"
    header.PatientID = "\x0b\x1c\r\x00"
    header.PatientName = "Doe\x1c^Jane\x0b"
    header.AccessionNumber = "A\x0b1"
    text = oru_message(header, STAT, FINDINGS, [MODEL], "RIS\x1c", "")
    assert not any(ch in text for ch in "\x0b\x1c\x00")
    assert [segment[:3] for segment in text.split("\r") if segment] == ["MSH", "PID", "ORC", "OBR", "TQ1", "OBX", "OBX",
                                                                          "NTE"]
    pid = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT).oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_3.to_er7() == "UNKNOWN" and pid.pid_5.to_er7() == "Doe^Jane"
