"""Delivery from the outbox over real sockets, with retry when the peer is down."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_ai.config import Settings
from dicom_ai.domain import Priority, PriorityDecision
from dicom_ai.send.carriers.orthanc_metadata import OrthancFlagError, flags_payload
from dicom_ai.receive.scp import start_scp
from dicom_ai.domain import Carrier, OutboxEntry
from dicom_ai.send.outbox import Outbox
from dicom_ai.store import Spool, Stores
from dicom_ai.domain import ReceivedInstance, ResultFile
from tests.conftest import copy_as_new_study, free_port, sample


def _done_study(store: Stores, study: str, outbox: list[tuple[Carrier, str, str, str]]) -> None:
    store.studies.record_instance(
        ReceivedInstance(sop_instance_uid=study + ".1", sop_class_uid="1.2", series_instance_uid=study + ".0",
                         study_instance_uid=study, modality="CR", transfer_syntax_uid="1.2.840.10008.1.2.1",
                         path=Path("/x"), size=1, calling_aet="X"),
        now=1.0,
    )
    store.studies.complete_quiet_studies(quiet_since=1.0)
    store.studies.claim_complete_study()
    store.studies.save_outcome(study, rules=["r"], models=["m@1"], findings=[],
                       results=[ResultFile(o[1], "9", "SR", "m", "1", Path(o[3])) for o in outbox if o[0] == Carrier.DICOM],
                       priority=PriorityDecision(Priority.ROUTINE, 0.1, ()), outbox=[OutboxEntry(*o) for o in outbox])


def test_sends_after_peer_comes_up(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, send_retry_initial=0.2)
    store = Stores.open(tmp_path / "db.sqlite")
    result = copy_as_new_study(sample("CT_small.dcm"), tmp_path / "results")
    sop = dcmread(result).SOPInstanceUID
    port = free_port()
    peer = f"PACS@127.0.0.1:{port}"
    _done_study(store, "1.2.3", [(Carrier.DICOM, sop, peer, str(result))])
    outbox = Outbox(store.outbox, settings)

    assert outbox.deliver_due() == 0  # nobody listening yet
    [row] = store.reports.outbox_rows("1.2.3")
    assert row["state"] == "pending" and row["attempts"] == 1 and "PACS@127.0.0.1" in row["last_error"]
    assert outbox.deliver_due() == 0  # not due yet: backing off

    pacs_store = Stores.open(tmp_path / "pacs.sqlite")
    server = start_scp("PACS", "127.0.0.1", port, 0, Spool(tmp_path / "pacs"), pacs_store.studies)
    try:
        time.sleep(0.25)
        assert outbox.deliver_due() == 1
        assert pacs_store.reports.receive_counts(dcmread(result).StudyInstanceUID) == {sop: 1}
        assert outbox.deliver_due() == 0  # sent once only
    finally:
        server.shutdown()


class _FlakyOrthanc:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.fail_next = True

    def publish(self, study: str, payload: str) -> None:
        if self.fail_next:
            self.fail_next = False
            raise OrthancFlagError("Orthanc at http://127.0.0.1:1: connection refused")
        self.calls.append((study, json.loads(payload)))


def test_flags_retry_and_carry_the_priority(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, send_retry_initial=0.01)
    store = Stores.open(tmp_path / "db.sqlite")
    fake = _FlakyOrthanc()
    payload = flags_payload(PriorityDecision(Priority.STAT, 0.97, ("Consolidation 97% >= STAT threshold 90%",)), [], [])
    _done_study(store, "1.2.4", [(Carrier.ORTHANC_METADATA, "1.2.4", "http://127.0.0.1:1", payload)])
    outbox = Outbox(store.outbox, settings, orthanc_client=lambda url: fake)  # type: ignore[arg-type,return-value]
    assert outbox.deliver_due() == 0
    time.sleep(0.05)
    assert outbox.deliver_due() == 1
    [(study, values)] = fake.calls
    assert study == "1.2.4"
    assert values["AiPriority"] == "STAT"
    assert values["AiReasons"] == "Consolidation 97% >= STAT threshold 90%"


def test_gives_up_after_max_attempts(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, send_max_attempts=2, send_retry_initial=0.01)
    store = Stores.open(tmp_path / "db.sqlite")
    _done_study(store, "1.2.5", [(Carrier.DICOM, "7.7", f"PACS@127.0.0.1:{free_port()}", str(tmp_path / "none.dcm"))])
    outbox = Outbox(store.outbox, settings)
    outbox.deliver_due()
    time.sleep(0.05)
    outbox.deliver_due()
    [row] = store.reports.outbox_rows("1.2.5")
    assert row["state"] == "failed" and row["attempts"] == 2


def _results(tmp_path: Path, n: int) -> list[Path]:
    study = generate_uid()
    return [copy_as_new_study(sample("CT_small.dcm"), tmp_path / "results", StudyInstanceUID=study) for _ in range(n)]


def test_given_up_sends_resume_once_the_pacs_answers_again(tmp_path: Path) -> None:
    # Probes every 60 s, and the test says what time it is: a loaded machine cannot make the probe due early.
    settings = Settings(home=tmp_path, send_max_attempts=2, send_retry_initial=0.01, send_retry_max=60)
    store = Stores.open(tmp_path / "db.sqlite")
    files = _results(tmp_path, 3)
    port = free_port()
    peer = f"PACS@127.0.0.1:{port}"
    _done_study(store, "1.2.6", [(Carrier.DICOM, str(dcmread(f).SOPInstanceUID), peer, str(f)) for f in files])
    outbox = Outbox(store.outbox, settings)
    for _ in range(3):  # the PACS is down: every send is given up
        outbox.deliver_due()
        time.sleep(0.05)
    assert {row["state"] for row in store.reports.outbox_rows("1.2.6")} == {"failed"}

    pacs_store = Stores.open(tmp_path / "pacs.sqlite")
    server = start_scp("PACS", "127.0.0.1", port, 0, Spool(tmp_path / "pacs"), pacs_store.studies)
    try:
        assert outbox.deliver_due(now=time.time()) == 0  # probed at most once per send_retry_max
        later = time.time() + 61
        assert outbox.deliver_due(now=later) == 1  # the probe: one given-up send tried again, and it went
        assert {row["state"] for row in store.reports.outbox_rows("1.2.6")} == {"sent", "pending"}
        assert outbox.deliver_due(now=later) == 2  # the rest resumed by themselves, no re-inference, no admin
        study = str(dcmread(files[0]).StudyInstanceUID)
        assert sorted(pacs_store.reports.receive_counts(study).values()) == [1, 1, 1]
        assert any(e["kind"] == "sends_resumed" for e in store.reports.events("1.2.6"))
    finally:
        server.shutdown()
        pacs_store.close()


def test_resend_queues_a_studys_sends_again_without_reinference(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, send_max_attempts=1)
    store = Stores.open(tmp_path / "db.sqlite")
    files = _results(tmp_path, 2)
    _done_study(store, "1.2.7", [(Carrier.DICOM, str(dcmread(f).SOPInstanceUID), f"PACS@127.0.0.1:{free_port()}", str(f))
                                 for f in files])
    Outbox(store.outbox, settings).deliver_due()
    assert {row["state"] for row in store.reports.outbox_rows("1.2.7")} == {"failed"}
    assert store.outbox.requeue_sends(["1.2.7"], by="admin") == 2
    assert {(row["state"], row["attempts"]) for row in store.reports.outbox_rows("1.2.7")} == {("pending", 0)}
    assert store.outbox.requeue_sends(None, by="admin") == 0  # nothing given up any more
    assert store.outbox.requeue_sends(["1.2.7"], by="admin", include_sent=True) == 0  # pending ones stay as they are
