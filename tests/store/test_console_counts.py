"""The counts behind the dashboard, `dicom-ai status` and /metrics, read through indexes (migration
013): each one picks exactly the rows it did when it read them all (rows written by hand here, so
that every state, carrier and missing value is present at once)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import sqlite_utils

from dicom_ai.store import Stores
from dicom_ai.store.migrations import migrations
from tests.web.test_metrics import _processed

NOW = 1_800_000_000.0


def _study(conn, uid: str, state: str, **values: object) -> None:  # type: ignore[no-untyped-def]
    row = {"study_instance_uid": uid, "state": state, "last_received_at": NOW - 1000, **values}
    conn.execute(f"insert into studies ({', '.join(row)}) values ({', '.join('?' * len(row))})", list(row.values()))


def _sent(conn, kind: str, key: str, uid: str, sent_at: float) -> None:  # type: ignore[no-untyped-def]
    conn.execute("insert into outbox (kind, key, study_instance_uid, destination, payload, state, attempts,"
                 " next_attempt_at, created_at, sent_at) values (?,?,?,'D','p','sent',1,0,?,?)",
                 [kind, key, uid, sent_at - 5, sent_at])


def _store(tmp_path: Path) -> Stores:
    store = Stores.open(tmp_path / "db.sqlite")
    conn = store.database.connect()
    _study(conn, "1.1", "processing", completed_at=NOW - 500, processed_at=NOW - 100, waiting_until=NOW - 1)
    _study(conn, "1.2", "processing", completed_at=NOW - 700, last_received_at=NOW - 10)
    _study(conn, "1.3", "done", completed_at=NOW - 9000, processed_at=NOW - 50, error="hl7: no message")
    _study(conn, "1.4", "waiting", completed_at=NOW - 8000, waiting_until=NOW + 60)
    _study(conn, "1.5", "waiting", completed_at=NOW - 8000, waiting_until=NOW + 30)
    _study(conn, "1.6", "failed", completed_at=NOW - 9500, error="model broke")
    _study(conn, "1.7", "done", completed_at=NOW - 9000, processed_at=NOW - 20)
    for uid in ("1.1", "1.3", "1.7"):
        conn.execute("insert into results (sop_instance_uid, study_instance_uid, series_instance_uid, kind, model,"
                     " model_version, path, created_at) values (?,?,?,'SR','m','1','/x',?)", [uid + ".9", uid, uid + ".8", NOW])
        conn.execute("insert into results (sop_instance_uid, study_instance_uid, series_instance_uid, kind, model,"
                     " model_version, path, created_at) values (?,?,?,'SC','m','1','/x',?)", [uid + ".7", uid, uid + ".8", NOW])
    _sent(conn, "dicom", "1.3.9", "1.3", NOW - 900)  # 100 s after the last instance
    _sent(conn, "stow", "1.3.9", "1.3", NOW - 800)  # the study's last acknowledgement: 200 s
    _sent(conn, "dicom", "1.3.7", "1.3", NOW - 700)  # a heatmap, not the SR
    _sent(conn, "hl7", "1.3", "1.3", NOW - 600)  # a notice, not a result
    _sent(conn, "stow", "1.7.9", "1.7", NOW - 960)  # 40 s, by STOW-RS alone
    _sent(conn, "dicom", "1.1.9", "1.1", NOW - 90_000)  # acknowledged before the window
    conn.execute("insert into events (at, kind, study_instance_uid, detail) values (?,?,?,?)",
                 [NOW - 10, "model_ran", "1.3", json.dumps({"model": "chest", "seconds": 0.5})])
    conn.execute("insert into events (at, kind, study_instance_uid, detail) values (?,?,?,?)",
                 [NOW - 10, "model_ran", "1.7", json.dumps({})])
    conn.execute("insert into events (at, kind, study_instance_uid, detail) values (?,?,?,?)",
                 [NOW - 90_000, "model_ran", "1.7", json.dumps({"model": "old", "seconds": 9.0})])
    return store


def test_health_times_come_from_their_own_states(tmp_path: Path) -> None:
    counts = _store(tmp_path).reports.health_counts()
    assert counts["last_received"] == NOW - 10
    assert counts["last_processed"] == NOW - 20
    assert counts["oldest_processing"] == NOW - 700  # not the older done, waiting or failed studies
    assert counts["next_window"] == NOW + 30  # a waiting study's, not the processing one's
    assert counts["done_with_skips"] == 1  # the failed study's error is not a skipped carrier
    assert counts["studies"] == {"processing": 2, "done": 2, "waiting": 2, "failed": 1}


def test_turnaround_is_the_last_sr_acknowledgement_by_either_result_carrier(tmp_path: Path) -> None:
    assert _store(tmp_path).reports.turnarounds(NOW - 86_400) == [40.0, 200.0]


def test_model_runs_in_the_window_with_missing_values(tmp_path: Path) -> None:
    runs = _store(tmp_path).reports.model_runs(NOW - 86_400)
    assert sorted(runs, key=lambda r: str(r["model"])) == [{"model": None, "seconds": 0.0},
                                                             {"model": "chest", "seconds": 0.5}]


def _grouped(store: Stores) -> list[dict[str, object]]:
    return store.database.query("select kind, state, count(*) as n from outbox group by kind, state order by kind, state")


def test_send_counts_follow_inserts_updates_upserts_and_deletes(tmp_path: Path) -> None:
    """The triggers' counts are what a group by over the outbox says, after every way a send changes."""
    store = _store(tmp_path)
    assert store.reports.health_counts()["sends"] == _grouped(store) != []
    _processed(store, "2.1", sent=True)  # queued by save_outcome, then sent (and a metadata send left pending)
    _processed(store, "2.2", sent=False)  # its metadata send failed once: still pending
    conn = store.database.connect()
    conn.execute("update outbox set state = 'failed' where kind = 'orthanc_metadata'")
    store.outbox.requeue_sends(None, by="test")  # failed sends queued again
    conn.execute("update outbox set state = 'failed' where kind = 'orthanc_metadata'")
    store.outbox.discard_sends("2.2", by="test")
    conn.execute("update outbox set state = 'failed' where kind = 'hl7'")
    conn.execute("update outbox set kind = 'webhook' where kind = 'stow' and key = '1.7.9'")
    conn.execute("delete from outbox where kind = 'dicom' and key = '1.1.9'")
    _processed(store, "2.1", sent=True)  # a re-run: the upsert keeps the sent SR sent
    for key in ("k1", "k2"):  # no kind: counted together, as a group by does
        conn.execute("insert into outbox (kind, key, study_instance_uid, destination, payload, state, attempts,"
                     " next_attempt_at, created_at) values (null, ?, '2.1', 'D', 'p', 'pending', 0, 0, 1)", [key])
    grouped = _grouped(store)
    assert store.reports.health_counts()["sends"] == grouped
    assert {(row["kind"], row["state"]) for row in grouped} >= {("webhook", "sent"), ("hl7", "failed"), (None, "pending")}
    oldest = {row["kind"]: row["oldest"] for row in store.database.query(
        "select kind, min(created_at) as oldest from outbox where state = 'pending' group by kind")}
    assert [(r["kind"], r["state"], r["n"], r["oldest"]) for r in store.reports.sends_by_carrier()] == [
        (r["kind"], r["state"], r["n"], oldest[r["kind"]] if r["state"] == "pending" else None) for r in grouped]


def test_the_migration_counts_the_sends_made_before_it(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    migrations.apply(sqlite_utils.Database(conn), stop_before="013_console_speed")
    _study(conn, "1.1", "done")
    for key, state in (("a", "sent"), ("b", "sent"), ("c", "failed")):
        conn.execute("insert into outbox (kind, key, study_instance_uid, destination, payload, state, attempts,"
                     " next_attempt_at, created_at) values ('dicom', ?, '1.1', 'D', 'p', ?, 1, 0, 1)", [key, state])
    conn.close()
    store = Stores.open(tmp_path / "db.sqlite")
    assert store.reports.health_counts()["sends"] == _grouped(store) == [
        {"kind": "dicom", "state": "failed", "n": 1}, {"kind": "dicom", "state": "sent", "n": 2}]
