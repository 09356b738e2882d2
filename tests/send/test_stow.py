"""Results by DICOMweb STOW-RS: the same outbox, retries, per-file acknowledgement and idempotency as
C-STORE, against a fake origin server over real HTTP (dicomweb-client as the node sends)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_ai.config import Settings
from dicom_ai.domain import (
    Carrier,
    OutboxEntry,
    Priority,
    PriorityDecision,
    ReceivedInstance,
    ResultFile,
)
from dicom_ai.send.carriers import stow
from dicom_ai.send.outbox import Outbox
from dicom_ai.store import Stores
from tests.conftest import copy_as_new_study, free_port, sample
from tests.send.stow_fake import FakeStow


@pytest.fixture
def fake() -> Iterator[FakeStow]:
    server = FakeStow()
    yield server
    server.stop()


def _study_with_results(store: Stores, tmp_path: Path, url: str, n: int) -> tuple[str, list[str]]:
    """A done study whose `n` result files (in the study, as encode writes them) wait for STOW."""
    study = generate_uid()
    files = [copy_as_new_study(sample("CT_small.dcm"), tmp_path / "results", StudyInstanceUID=study) for _ in range(n)]
    uids = [str(dcmread(f).SOPInstanceUID) for f in files]
    store.studies.record_instance(
        ReceivedInstance(sop_instance_uid=study + ".1", sop_class_uid="1.2", series_instance_uid=study + ".0",
                         study_instance_uid=study, modality="CT", transfer_syntax_uid="1.2.840.10008.1.2.1",
                         path=Path("/x"), size=1, calling_aet="X"), now=1.0)
    store.studies.complete_quiet_studies(quiet_since=1.0)
    store.studies.claim_complete_study()
    results = [ResultFile(uid, "9", "SC", "m", "1", f) for uid, f in zip(uids, files)]
    settings = Settings(home=tmp_path, stow_url=url)
    store.studies.save_outcome(study, rules=["r"], models=["m@1"], findings=[], results=results,
                               priority=PriorityDecision(Priority.ROUTINE, 0.1, ()),
                               outbox=stow.build_results(results, settings))
    return study, uids


def _rows(store: Stores, study: str) -> dict[str, dict[str, object]]:
    return {str(row["key"]): row for row in store.reports.outbox_rows(study)}


def test_entries_only_when_a_dicomweb_server_is_configured(tmp_path: Path) -> None:
    result = ResultFile("1.2.3.4", "1.2.3", "SR", "m", "1", tmp_path / "sr.dcm")
    assert stow.build_results([result], Settings(home=tmp_path)) == []
    assert stow.build_results([result], Settings(home=tmp_path, stow_url="http://127.0.0.1:1/dicom-web/")) == [
        OutboxEntry(Carrier.STOW, "1.2.3.4", "http://127.0.0.1:1/dicom-web", str(tmp_path / "sr.dcm"))]


def test_each_study_goes_in_one_request_and_once(tmp_path: Path, fake: FakeStow) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    first, first_uids = _study_with_results(store, tmp_path, fake.url, 3)
    second, second_uids = _study_with_results(store, tmp_path, fake.url, 2)
    outbox = Outbox(store.outbox, Settings(home=tmp_path, stow_url=fake.url))

    assert outbox.deliver_due() == 5
    assert sorted(map(sorted, fake.requests)) == sorted([sorted(first_uids), sorted(second_uids)])
    assert fake.paths == ["/dicom-web/studies"] * 2
    assert {row["state"] for row in [*_rows(store, first).values(), *_rows(store, second).values()]} == {"sent"}
    assert outbox.deliver_due() == 0 and len(fake.requests) == 2  # sent once

    # An admin re-sends (the archive lost them): the same SOP Instance UIDs, so the archive keeps one copy each.
    assert store.outbox.requeue_sends([first], by="test", include_sent=True) == 3
    assert outbox.deliver_due() == 3
    assert sorted(fake.requests[-1]) == sorted(first_uids)
    assert set(fake.stored) == set(first_uids) | set(second_uids)


def test_a_refused_instance_fails_alone_with_the_servers_reason(tmp_path: Path, fake: FakeStow) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    study, uids = _study_with_results(store, tmp_path, fake.url, 3)
    fake.refuse[uids[1]] = 0xA900
    outbox = Outbox(store.outbox, Settings(home=tmp_path, stow_url=fake.url, send_retry_initial=0.05))

    assert outbox.deliver_due() == 2  # HTTP 202: two stored, one refused
    rows = _rows(store, study)
    assert rows[uids[0]]["state"] == rows[uids[2]]["state"] == "sent"
    assert rows[uids[1]]["state"] == "pending" and rows[uids[1]]["attempts"] == 1
    assert rows[uids[1]]["last_error"] == (f"{fake.url} refused it: FailureReason 0xA900 "
                                           "(error: data set does not match SOP Class)")

    fake.refuse[uids[1]] = 0xA700  # only that one is left: HTTP 409, the reason still per instance
    time.sleep(0.1)
    assert outbox.deliver_due() == 0
    assert fake.requests[-1] == [uids[1]]
    assert _rows(store, study)[uids[1]]["last_error"] == (f"{fake.url} refused it: FailureReason 0xA700 "
                                                          "(refused: out of resources)")
    del fake.refuse[uids[1]]
    time.sleep(0.2)
    assert outbox.deliver_due() == 1
    assert {row["state"] for row in _rows(store, study).values()} == {"sent"}


def test_an_http_error_fails_the_batch_in_one_line_and_is_retried(tmp_path: Path, fake: FakeStow) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    study, uids = _study_with_results(store, tmp_path, fake.url, 2)
    fake.http_errors = [503]
    outbox = Outbox(store.outbox, Settings(home=tmp_path, stow_url=fake.url, send_retry_initial=0.05))

    assert outbox.deliver_due() == 0
    errors = {row["last_error"] for row in _rows(store, study).values()}
    assert errors == {f"{fake.url} answered HTTP 503 Service Unavailable: the archive is busy"}
    time.sleep(0.1)
    assert outbox.deliver_due() == 2
    assert set(fake.stored) == set(uids)


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    study, _ = _study_with_results(store, tmp_path, url, 1)
    assert Outbox(store.outbox, Settings(home=tmp_path, stow_url=url)).deliver_due() == 0
    [row] = _rows(store, study).values()
    assert str(row["last_error"]).startswith(f"STOW-RS to {url} failed: ") and "\n" not in str(row["last_error"])


@pytest.mark.parametrize("auth", [{"stow_user": "ai", "stow_password": "s3cret"}, {"stow_token": "t0ken"}])
def test_basic_or_bearer_auth(tmp_path: Path, auth: dict[str, str]) -> None:
    fake = FakeStow(user=auth.get("stow_user"), password=auth.get("stow_password"), token=auth.get("stow_token"))
    try:
        store = Stores.open(tmp_path / "db.sqlite")
        study, uids = _study_with_results(store, tmp_path, fake.url, 1)
        wrong = Outbox(store.outbox, Settings(home=tmp_path, stow_url=fake.url, send_retry_initial=0.01))
        assert wrong.deliver_due() == 0
        assert "HTTP 401" in str(_rows(store, study)[uids[0]]["last_error"])
        assert "check stow_user/stow_password or stow_token" in str(_rows(store, study)[uids[0]]["last_error"])
        time.sleep(0.05)
        right = Outbox(store.outbox, Settings(home=tmp_path, stow_url=fake.url, **auth))  # type: ignore[arg-type]
        assert right.deliver_due() == 1 and list(fake.stored) == uids
    finally:
        fake.stop()


def test_an_unreadable_result_file_fails_alone(tmp_path: Path, fake: FakeStow) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    study, uids = _study_with_results(store, tmp_path, fake.url, 2)
    broken = Path(str(_rows(store, study)[uids[0]]["payload"]))
    broken.write_bytes(b"not DICOM")
    assert Outbox(store.outbox, Settings(home=tmp_path, stow_url=fake.url)).deliver_due() == 1
    assert str(_rows(store, study)[uids[0]]["last_error"]).startswith(f"cannot read {broken}:")
    assert list(fake.stored) == [uids[1]]
