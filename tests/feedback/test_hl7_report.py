"""An inbound ORU^R01 read into what matching and derivation need; anything else is malformed (AR)."""

from __future__ import annotations

import re

import pytest

from dicom_ai.feedback.hl7_report import MalformedMessage, ack, control_id_of, parse_report
from tests.validation_support import oru


def test_report_gives_accession_patient_date_status_text_and_observations() -> None:
    message = oru("ACC7", r"No focal consolidation.\.br\Small \F\ effusion.", control_id="C-9",
                  extra="OBX|2|CE|95436008^Lung consolidation^SCT||2667000^Absent^SCT||||||F\rNTE|1||Signed by Dr Who\r")
    report = parse_report(message)
    assert report.control_id == "C-9"
    assert report.accessions == ("ACC7", "PL-ACC7")  # OBR-3 first, then OBR-2
    assert (report.patient_id, report.study_date, report.status, report.final) == ("P1", "20240115", "F", True)
    assert report.text == "No focal consolidation.\nSmall | effusion.\nSigned by Dr Who"  # escapes undone
    coded = report.observations[1]
    assert (coded.identifier, coded.value_type, coded.value) == ("95436008", "CE", "2667000 Absent")
    assert report.sender == "RIS^HOSP"


def test_preliminary_report_is_not_final() -> None:
    assert not parse_report(oru("A1", "Consolidation.", status="P")).final


@pytest.mark.parametrize(("message", "why"), [
    ("", "empty"),
    ("hello world", "does not start with an MSH"),
    ("MSH|^~\\&|RIS||||2024||ADT^A01|X|P|2.5\rPID|1\r", "only ORU^R01"),
    ("MSH|^~\\&|RIS||||2024||ORU^R01||P|2.5\rPID|1\rOBR|1\r", "MSH-10"),
    ("MSH|^~\\&|RIS||||2024||ORU^R01|X|P|2.5\rOBX|1|TX|A||b\r", "needs a PID and an OBR"),
    ("MSH|^~\\&|RIS||||2024||ORU^R01|X|P|2.5\rPID|1\rOBR|1\rgarbage line\r", "not an HL7 segment"),
])
def test_malformed_messages_say_what_is_wrong(message: str, why: str) -> None:
    with pytest.raises(MalformedMessage, match=re.escape(why)):
        parse_report(message)


def test_ack_carries_the_code_the_control_id_and_a_clean_reason() -> None:
    text = ack("C-9", "AE", "no study with accession A|B^C\r yet")
    segments = text.split("\r")
    assert segments[0].startswith("MSH|^~\\&|DICOM_AI|") and "|ACK^R01^ACK|AC-9|P|2.5" in segments[0]
    assert segments[1] == "MSA|AE|C-9|no study with accession A B C  yet"
    assert control_id_of("MSH|^~\\&|RIS||||2024||ADT^A01|X-1|P|2.5\rgarbage") == "X-1"
    assert control_id_of("not hl7") == ""
