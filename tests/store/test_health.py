"""`dicom-ai status` and GET /api/status: queues and failures, each with what to do, and exit 1 on trouble."""

from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner
from starlette.testclient import TestClient

from dicom_ai.cli import main
from dicom_ai.domain import StudyState
from dicom_ai.store import Spool, Stores
from dicom_ai.store.health import STALE_SEND_S, node_health
from dicom_ai.web.app import build_app, start_web
from tests.store.test_retention import _finished, _receive
from tests.web.console_support import PASSWORD, add_user, context, get_json


def test_a_healthy_node_is_ok(tmp_path: Path) -> None:
    store, spool = Stores.open(tmp_path / "dicom-ai.sqlite"), Spool(tmp_path / "spool")
    _finished(store, spool, "1.2.3")
    _receive(store, spool, "1.2.4", "1.2.4.1.1")
    health = node_health(store.reports, tmp_path, retention_days=14)
    assert health.ok and health.attention == ()
    assert health.studies == {"done": 1, "receiving": 1}
    assert health.sends == [{"kind": "dicom", "state": "sent", "n": 1}]
    assert health.held_files == 2 and health.held_bytes == 2000 and health.disk_free_bytes > 0
    store.close()
    outcome = CliRunner().invoke(main, ["status"], env={"DICOM_AI_HOME": str(tmp_path)})
    assert outcome.exit_code == 0, outcome.output
    assert outcome.output.startswith("OK: 1 done, 1 receiving") and "1 dicom sent" in outcome.output


def test_failures_and_a_stale_send_need_attention(tmp_path: Path) -> None:
    store, spool = Stores.open(tmp_path / "dicom-ai.sqlite"), Spool(tmp_path / "spool")
    _finished(store, spool, "1.2.3", sent=False)  # the PACS has not taken the SR
    [item] = store.outbox.due_outbox(now=time.time() + 1)
    store.outbox.mark_failed_attempt(item, "association with PACS@127.0.0.1:4242 was rejected or failed", time.time() + 60)
    _receive(store, spool, "1.2.5", "1.2.5.1.1")
    store.studies.complete_quiet_studies(time.time())
    store.studies.claim_complete_study()
    store.studies.finish_without_results("1.2.5", StudyState.FAILED, "model chest-xray-demo failed on the study: boom")
    health = node_health(store.reports, tmp_path, None, now=time.time() + STALE_SEND_S + 60)
    assert not health.ok
    assert any("1 failed study(ies)" in a and "dicom-ai retry" in a for a in health.attention)
    assert any("dicom send to PACS@127.0.0.1:4242 has waited" in a and "rejected or failed" in a
               for a in health.attention)
    ctx = context(store, tmp_path)
    add_user(ctx, "vera", "viewer")
    server = start_web("127.0.0.1", 0, ctx)
    try:
        base = f"http://127.0.0.1:{server.port}"
        status = get_json(f"{base}/api/status", "vera")
        page = TestClient(build_app(ctx))
        page.post("/login", data={"username": "vera", "password": PASSWORD})
        text = page.get("/").text
        assert "<b>Node needs attention</b>" in text and "1 failed study(ies)" in text
    finally:
        server.stop()
    assert status["ok"] is False and status["studies"]["failed"] == 1
    store.close()
    outcome = CliRunner().invoke(main, ["status", "--json"], env={"DICOM_AI_HOME": str(tmp_path)})
    assert outcome.exit_code == 1 and json.loads(outcome.output)["studies"] == {"done": 1, "failed": 1}


def test_a_study_done_with_a_skipped_carrier_is_shown_and_needs_attention(tmp_path: Path) -> None:
    from dicom_ai.domain import Priority, PriorityDecision

    store, spool = Stores.open(tmp_path / "dicom-ai.sqlite"), Spool(tmp_path / "spool")
    _receive(store, spool, "1.2.6", "1.2.6.1.1")
    store.studies.complete_quiet_studies(time.time())
    store.studies.claim_complete_study()
    assert store.studies.save_outcome("1.2.6", rules=["r"], models=["m@1"], findings=[], results=[],
                              priority=PriorityDecision(Priority.ROUTINE, 0.1, ()), outbox=[],
                              skipped=["hl7 to 127.0.0.1:2575: ValueError: no room"])
    [row] = store.reports.studies()
    assert row.state == StudyState.DONE and row.error == "result carrier skipped: hl7 to 127.0.0.1:2575: ValueError: no room"
    assert "publication_skipped" in [e["kind"] for e in store.reports.events("1.2.6")]
    health = node_health(store.reports, tmp_path, None)
    assert not health.ok and any("1 study(ies) done with a result carrier skipped" in a for a in health.attention)
    store.close()
