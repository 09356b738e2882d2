"""GET /metrics, anonymous, parsed with prometheus_client's own parser: every number comes from the
database's rows (a study received, processed, its SR acknowledged; a send given up), and no label
holds a patient or study identifier."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from dicom_ai.domain import Carrier, OutboxEntry, Priority, PriorityDecision, ResultFile
from dicom_ai.route.loader import RuleWatcher
from dicom_ai.store import Stores
from dicom_ai.web.app import build_app
from tests.prioritize.test_worklist import _study
from tests.web.console_support import context

PACS = "PACS@127.0.0.1:4242"


def _processed(store: Stores, uid: str, sent: bool) -> None:
    """A study received from ORTHANC whose model ran and whose SR (and, for one, a flag) was queued."""
    _study(store, uid, minutes_ago=1.0, priority=None, now=time.time())
    store.studies.requeue(uid, by="test")
    store.studies.claim_complete_study()
    store.studies.record_model_run(uid, "chest-xray-demo", "1.0", 0.3, 1)
    sr = ResultFile(uid + ".9", uid + ".8", "SR", "chest-xray-demo", "1.0", Path("/nowhere"))
    store.studies.save_outcome(uid, rules=["r"], models=["chest-xray-demo@1.0"], findings=[], results=[sr],
                               outbox=[OutboxEntry(Carrier.DICOM, sr.sop_instance_uid, PACS, "/nowhere"),
                                       OutboxEntry(Carrier.ORTHANC_METADATA, uid, "http://o", "{}")],
                               priority=PriorityDecision(Priority.URGENT, 0.8, ("x",)))
    for item in store.outbox.due_outbox():
        if item.study_instance_uid != uid:
            continue
        if sent and item.kind == Carrier.DICOM:
            store.outbox.mark_sent(item)
        elif item.kind == Carrier.ORTHANC_METADATA and not sent:
            store.outbox.mark_failed_attempt(item, "refused", None)


def test_metrics_come_from_the_database_without_identifiers(tmp_path: Path) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    _processed(store, "1.2.3.1", sent=True)
    _processed(store, "1.2.3.2", sent=False)
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    watcher = RuleWatcher(rules_dir)
    client = TestClient(build_app(context(store, tmp_path, rules=watcher)))
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    assert "1.2.3" not in text and "P1" not in text and "P2" not in text  # no study UID, no patient ID
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(name: str, sample: str, **labels: str) -> float:
        found = [s.value for s in families[name].samples if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) == 1, (sample, labels, families[name].samples)
        return found[0]

    assert value("dicom_ai_instances_received", "dicom_ai_instances_received_total", calling_ae="ORTHANC") == 2
    assert value("dicom_ai_studies", "dicom_ai_studies", state="done") == 2
    assert value("dicom_ai_sends", "dicom_ai_sends_total", carrier="dicom", outcome="sent") == 1
    assert value("dicom_ai_sends", "dicom_ai_sends_total", carrier="orthanc_metadata", outcome="failed") == 1
    assert value("dicom_ai_outbox_depth", "dicom_ai_outbox_depth", carrier="dicom") == 1
    assert value("dicom_ai_outbox_depth", "dicom_ai_outbox_depth", carrier="orthanc_metadata") == 1
    assert 0 <= value("dicom_ai_outbox_oldest_age_seconds", "dicom_ai_outbox_oldest_age_seconds", carrier="dicom") < 600
    assert value("dicom_ai_turnaround_seconds", "dicom_ai_turnaround_seconds_count") == 1
    turnaround = value("dicom_ai_turnaround_seconds", "dicom_ai_turnaround_seconds_sum")
    assert 55 <= turnaround < 120  # the last instance came a minute before the SR was acknowledged
    assert value("dicom_ai_turnaround_seconds", "dicom_ai_turnaround_seconds_bucket", le="60.0") == 0
    assert value("dicom_ai_turnaround_seconds", "dicom_ai_turnaround_seconds_bucket", le="120.0") == 1
    assert value("dicom_ai_inference_seconds", "dicom_ai_inference_seconds_count", model="chest-xray-demo") == 2
    assert value("dicom_ai_inference_seconds", "dicom_ai_inference_seconds_bucket", model="chest-xray-demo", le="0.25") == 0
    assert value("dicom_ai_inference_seconds", "dicom_ai_inference_seconds_bucket", model="chest-xray-demo", le="0.5") == 2
    assert value("dicom_ai_rules_reloads", "dicom_ai_rules_reloads_total", outcome="ok") == 0
    assert value("dicom_ai_disk_free_bytes", "dicom_ai_disk_free_bytes") > 0

    (rules_dir / "bad.yaml").write_text("rules: [")
    watcher.refresh()
    text = client.get("/metrics").text
    reloads = {s.labels["outcome"]: s.value for f in text_string_to_metric_families(text) if f.name == "dicom_ai_rules_reloads"
               for s in f.samples}
    assert reloads == {"ok": 0, "error": 1}
    store.close()
