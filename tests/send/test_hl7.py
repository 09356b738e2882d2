"""HL7 ORU^R01 over MLLP to a real listener on loopback; the message passes hl7apy's strict validation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from pydicom import dcmread

from dicom_ai.config import Settings
from dicom_ai.domain import Code, Finding, ModelInfo, Priority, PriorityDecision
from dicom_ai.send.carriers.hl7 import oru_message
from dicom_ai.domain import Carrier
from dicom_ai.send.outbox import Outbox
from dicom_ai.store import Stores
from tests.conftest import MllpListener, sample
from tests.send.test_outbox import _done_study

MODEL = ModelInfo("chest-xray-demo", "1.0.0", "2.25.1", "dicom-ai", "Chest demo", True, "demo")
FINDINGS = [Finding("Consolidation", Code("95436008", "SCT", "Lung consolidation"), 0.973, 0.5)]


@pytest.fixture
def listener() -> Iterator[MllpListener]:
    running = MllpListener(rejections=1)
    yield running
    running.close()


def test_oru_is_valid_hl7_with_priority_and_findings() -> None:
    header = dcmread(sample("RG1_UNCR.dcm"), stop_before_pixels=True)
    decision = PriorityDecision(Priority.STAT, 0.973, ("Consolidation 97% >= STAT threshold 90%",))
    text = oru_message(header, decision, FINDINGS, [MODEL], "RIS", "HOSPITAL")
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    assert message.validate()
    assert message.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    result = message.oru_r01_patient_result
    assert result.oru_r01_patient.pid.pid_3.to_er7() == str(header.PatientID)
    order = result.oru_r01_order_observation
    assert order.oru_r01_timing_qty.tq1.tq1_9.to_er7() == "S^Stat^HL70485"
    first, note = order.oru_r01_observation
    assert first.obx.obx_3.to_er7() == "95436008^Lung consolidation^SCT"
    assert first.obx.obx_5.to_er7() == "97.3" and first.obx.obx_8.to_er7() == "A"
    assert "NOT FOR CLINICAL USE" in note.obx.obx_5.to_er7()


def test_oru_has_one_observation_per_label_over_a_studys_images() -> None:
    header = dcmread(sample("RG1_UNCR.dcm"), stop_before_pixels=True)
    views = [Finding("Mass", Code("4147007", "SCT", "Mass"), p, 0.5) for p in (0.1, 0.92, 0.2, 0.05)]
    decision = PriorityDecision(Priority.URGENT, 0.92, ("Mass 92% >= URGENT threshold 50%",))
    message = parse_message(oru_message(header, decision, views, [MODEL], "RIS", ""),
                            validation_level=VALIDATION_LEVEL.STRICT)
    mass, note = message.oru_r01_patient_result.oru_r01_order_observation.oru_r01_observation
    assert mass.obx.obx_3.to_er7() == "4147007^Mass^SCT"
    assert mass.obx.obx_5.to_er7() == "92.0" and mass.obx.obx_8.to_er7() == "A"
    assert (note.obx.obx_1.to_er7(), note.obx.obx_2.to_er7()) == ("2", "TX")
    assert note.obx.obx_5.to_er7().endswith("NOT FOR CLINICAL USE (demo model).")
    [nte] = note.nte
    assert "Findings: Mass 92% (present on 1 of 4 images)." in nte.nte_3.to_er7()
    assert nte.nte_3.to_er7().endswith("NOT FOR CLINICAL USE (demo model).")


def test_long_reasons_are_shortened_in_obx_and_whole_in_the_note() -> None:
    header = dcmread(sample("RG1_UNCR.dcm"), stop_before_pixels=True)
    reasons = tuple(f"prior study {n} of this patient showed the same finding at 9{n}%" for n in range(8))
    text = oru_message(header, PriorityDecision(Priority.STAT, 0.97, reasons), FINDINGS, [MODEL], "RIS", "")
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    assert message.validate()
    _, note = message.oru_r01_patient_result.oru_r01_order_observation.oru_r01_observation
    short = note.obx.obx_5.to_er7()
    assert len(short) <= 199 and "..." in short and short.endswith("NOT FOR CLINICAL USE (demo model).")
    assert all(reason in note.nte[0].nte_3.to_er7() for reason in reasons)


def test_oru_is_sent_over_mllp_and_retried_on_a_negative_ack(tmp_path: Path, listener: MllpListener) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    header = dcmread(sample("RG1_UNCR.dcm"), stop_before_pixels=True)
    text = oru_message(header, PriorityDecision(Priority.URGENT, 0.7, ("x",)), FINDINGS, [MODEL], "RIS", "")
    destination = f"127.0.0.1:{listener.port}"
    _done_study(store, "1.2.7", [(Carrier.HL7, "1.2.7", destination, text)])
    outbox = Outbox(store.outbox, Settings(home=tmp_path, send_retry_initial=0.05))
    assert outbox.deliver_due() == 0
    assert "answered AE" in store.reports.outbox_rows("1.2.7")[0]["last_error"]
    time.sleep(0.1)
    assert outbox.deliver_due() == 1
    [received] = listener.messages
    parsed = parse_message(received, validation_level=VALIDATION_LEVEL.STRICT)
    assert parsed.oru_r01_patient_result.oru_r01_order_observation.oru_r01_timing_qty.tq1.tq1_9.to_er7() == (
        "A^ASAP^HL70485")


def test_patient_name_keeps_its_parts_and_long_values_never_break_the_message() -> None:
    header = dcmread(sample("RG1_UNCR.dcm"), stop_before_pixels=True)
    header.PatientName = "Müller^Anna^Maria^Dr.^PhD"
    long_meaning = Finding("Mass", Code("4147007", "SCT", "Mass " + "x" * 300), 0.9, 0.5)
    text = oru_message(header, PriorityDecision(Priority.STAT, 0.9, ("x",)), [long_meaning], [MODEL], "RIS", "")
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    assert message.validate()
    result = message.oru_r01_patient_result
    assert result.oru_r01_patient.pid.pid_5.to_er7() == "Müller^Anna^Maria^PhD^Dr."  # HL7 puts the suffix first
    assert message.msh.msh_18.to_er7() == "UNICODE UTF-8"
    first, _ = result.oru_r01_order_observation.oru_r01_observation
    assert first.obx.obx_3.to_er7().startswith("4147007^Mass xxx")
