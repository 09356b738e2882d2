"""Critical-result notices to a real HTTP receiver on loopback, retried until accepted."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_ai.config import Settings
from dicom_ai.domain import Code, Finding, ModelInfo, Priority, PriorityDecision
from dicom_ai.domain import Carrier
from dicom_ai.send.outbox import Outbox
from dicom_ai.send.carriers.email import email_payload
from dicom_ai.send.carriers.webhook import notice_payload
from dicom_ai.store import Stores
from tests.conftest import HttpReceiver
from tests.send.test_outbox import _done_study

MODEL = ModelInfo("chest-xray-demo", "1.0.0", "2.25.1", "dicom-ai", "Chest demo", True, "demo")
FINDING = Finding("Consolidation", Code("95436008", "SCT", "Lung consolidation"), 0.97, 0.5)


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    running = HttpReceiver(failures=1)
    yield running
    running.stop()


def test_notice_has_no_patient_identifiers_unless_asked() -> None:
    decision = PriorityDecision(Priority.STAT, 0.97, ("Consolidation 97% >= STAT threshold 90%",))
    anonymous = json.loads(notice_payload("1.2.3", decision, [FINDING], [MODEL], None))
    assert "patient" not in anonymous
    assert anonymous["priority"] == "STAT" and anonymous["not_for_clinical_use"] is True
    assert anonymous["findings"] == [{"label": "Consolidation", "code": "SCT 95436008", "probability": 0.97,
                                      "present": True, "images": 1, "images_present": 1}]
    named = json.loads(notice_payload("1.2.3", decision, [FINDING], [MODEL], {"PatientID": "P1"}))
    assert named["patient"] == {"PatientID": "P1"}


def test_a_finding_on_several_images_is_one_entry_with_its_count() -> None:
    views = [Finding("Mass", Code("4147007", "SCT", "Mass"), p, 0.5) for p in (0.1, 0.92, 0.2, 0.05)]
    decision = PriorityDecision(Priority.URGENT, 0.92, ("Mass 92% >= URGENT threshold 50%",))
    notice = notice_payload("1.2.3", decision, [*views, FINDING], [MODEL], None)
    assert json.loads(notice)["findings"] == [
        {"label": "Consolidation", "code": "SCT 95436008", "probability": 0.97, "present": True, "images": 1,
         "images_present": 1},
        {"label": "Mass", "code": "SCT 4147007", "probability": 0.92, "present": True, "images": 4,
         "images_present": 1},
    ]
    body = json.loads(email_payload(notice, "a@localhost", ["b@localhost"]))["body"]
    assert "Mass (SCT 4147007): 92% PRESENT on 1 of 4 images" in body
    assert "Consolidation (SCT 95436008): 97% PRESENT\n" in body


def test_notice_is_retried_until_the_receiver_accepts(tmp_path: Path, receiver: HttpReceiver) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    payload = notice_payload("1.2.9", PriorityDecision(Priority.STAT, 0.97, ("x",)), [FINDING], [MODEL], None)
    _done_study(store, "1.2.9", [(Carrier.WEBHOOK, "1.2.9", receiver.url, payload)])
    outbox = Outbox(store.outbox, Settings(home=tmp_path, send_retry_initial=0.05))
    assert outbox.deliver_due() == 0  # 503
    [row] = store.reports.outbox_rows("1.2.9")
    assert "HTTP 503" in row["last_error"]
    time.sleep(0.1)
    assert outbox.deliver_due() == 1
    assert [b["study_instance_uid"] for b in receiver.bodies] == ["1.2.9"]
    assert outbox.deliver_due() == 0  # once
