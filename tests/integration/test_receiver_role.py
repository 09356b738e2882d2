"""The receiver role (dicom_ai/procs/receiver.py) runs the jobs of node.py that belong next to receive:
a study whose rule's `complete` expectation is met becomes complete long before its quiet time, and a
study waiting for a rule's time window is queued again once the window opens (no worker does either)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_ai.config import Settings
from dicom_ai.domain import ReceivedInstance, StudyState
from dicom_ai.procs.receiver import Receiver
from dicom_ai.receive.keep import read_identity
from dicom_ai.store import Spool, Stores
from dicom_ai.train.phantom_dicom import write_brain_mr_study
from tests.conftest import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
RULE = """rules:
  - name: mr
    series: {Modality: MR}
    models: [brain-mr-demo]
    complete: {series: 1, series_quiet: 0.2}
"""


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[Receiver, Stores, Spool]]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "rules.yaml").write_text(RULE, encoding="utf-8")
    settings = Settings(home=tmp_path / "home", host="127.0.0.1", port=free_port(), http_port=0, stable_after=600,
                        rules_dir=rules, models_dir=REPO / "models")
    role = Receiver(settings, tick=0.1)
    store, spool = Stores.open(settings.database_path), Spool(settings.spool_dir)
    role.start()
    yield role, store, spool
    role.stop()
    store.close()


def _receive(store: Stores, spool: Spool, files: list[Path]) -> str:
    for path in files:
        identity = read_identity(path, str(dcmread(path, stop_before_pixels=True).SOPInstanceUID), "TEST",
                                 "1.2.840.10008.1.2.1")
        final = spool.free_instance_path(identity.study_instance_uid, identity.series_instance_uid,
                                         identity.sop_instance_uid)
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, final)
        store.studies.record_instance(ReceivedInstance(**{**identity.__dict__, "path": final, "size": final.stat().st_size}))
    return identity.study_instance_uid


def _state(store: Stores, uid: str) -> StudyState:
    [row] = store.reports.studies(study_uid=uid)
    return row.state


def test_the_receiver_completes_a_study_when_its_rule_expects_no_more(receiver: tuple[Receiver, Stores, Spool],
                                                                      tmp_path: Path) -> None:
    _, store, spool = receiver
    uid = _receive(store, spool, write_brain_mr_study(tmp_path / "mr", seed=3, finding=False, slices=2, size=(64, 64)))
    wait_for("the rule's expectation to complete the study", lambda: _state(store, uid) == StudyState.COMPLETE, 15)
    reason = next(json.loads(e["detail"])["reason"] for e in store.reports.events(uid) if e["kind"] == "study_complete")
    assert reason == "rule mr: 1 of 1 expected series arrived"


def test_the_receiver_queues_a_waiting_study_again_when_its_window_opens(receiver: tuple[Receiver, Stores, Spool],
                                                                         tmp_path: Path) -> None:
    _, store, spool = receiver
    uid = _receive(store, spool, write_brain_mr_study(tmp_path / "mr", seed=4, finding=False, slices=2, size=(64, 64)))
    store.studies.complete_quiet_studies(time.time() + 1000)  # complete whatever the receiver did
    assert store.studies.claim_complete_study("worker-1:test") == uid
    assert store.studies.wait_for_window(uid, time.time() + 1.5, ["brain-mr-demo"])
    assert _state(store, uid) == StudyState.WAITING
    wait_for("the window to open and the study to be queued again", lambda: _state(store, uid) == StudyState.COMPLETE, 15)
    assert any(e["kind"] == "window_open" for e in store.reports.events(uid))
