"""E-mail notices through a real SMTP server on loopback (aiosmtpd)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Message

from dicom_ai.config import Settings
from dicom_ai.domain import Code, Finding, ModelInfo, Priority, PriorityDecision
from dicom_ai.domain import Carrier
from dicom_ai.send.outbox import Outbox
from dicom_ai.send.carriers.email import email_payload
from dicom_ai.send.carriers.webhook import notice_payload
from dicom_ai.store import Stores
from tests.conftest import free_port
from tests.send.test_outbox import _done_study

MODEL = ModelInfo("chest-xray-demo", "1.0.0", "2.25.1", "dicom-ai", "Chest demo", True, "demo")
FINDING = Finding("Consolidation", Code("95436008", "SCT", "Lung consolidation"), 0.97, 0.5)


class Inbox(Message):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list = []  # type: ignore[type-arg]

    def handle_message(self, message) -> None:  # type: ignore[no-untyped-def]
        self.messages.append(message)


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def test_email_reaches_a_real_smtp_server_without_patient_identifiers(
    tmp_path: Path, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    notice = notice_payload("1.2.8", PriorityDecision(Priority.STAT, 0.97, ("Consolidation 97% >= STAT threshold 90%",)),
                            [FINDING], [MODEL], None)
    mail = email_payload(notice, "dicom-ai@localhost", ["reading-room@localhost"])
    store = Stores.open(tmp_path / "db.sqlite")
    _done_study(store, "1.2.8", [(Carrier.EMAIL, "1.2.8", f"127.0.0.1:{port}", mail)])
    assert Outbox(store.outbox, Settings(home=tmp_path)).deliver_due() == 1
    deadline = time.monotonic() + 10
    while not inbox.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    [message] = inbox.messages
    assert message["Subject"].startswith("[dicom-ai] STAT result")
    body = message.get_payload()
    assert "Consolidation 97% >= STAT threshold 90%" in body and "NOT FOR CLINICAL USE" in body
    assert "PatientID" not in body


def test_unreachable_smtp_is_retried(tmp_path: Path) -> None:
    mail = email_payload(json.dumps({"priority": "STAT", "reasons": [], "study_instance_uid": "1.2.9", "findings": [],
                                     "models": [], "not_for_clinical_use": False}), "a@localhost", ["b@localhost"])
    store = Stores.open(tmp_path / "db.sqlite")
    _done_study(store, "1.2.9", [(Carrier.EMAIL, "1.2.9", f"127.0.0.1:{free_port()}", mail)])
    assert Outbox(store.outbox, Settings(home=tmp_path)).deliver_due() == 0
    [row] = store.reports.outbox_rows("1.2.9")
    assert row["state"] == "pending" and "SMTP server 127.0.0.1" in row["last_error"]
