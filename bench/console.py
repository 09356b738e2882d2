"""Console: with N studies in the database (rows inserted in bulk, as a busy node accumulates them:
each with an SR, three delivered sends and a model run), how long the dashboard (with the node's
health counts, as the node serves it), a studies search, /api/studies and /metrics take through the
ASGI app (Starlette's test client, signed in). Target: under 200 ms each with 100,000 studies (issue 13)."""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from bench.stats import median
from dicom_ai.domain import TurnaroundTargets
from dicom_ai.store import Stores
from dicom_ai.store.accounts import Role
from dicom_ai.store.health import node_health
from dicom_ai.web.app import build_app, web_context

log = logging.getLogger(__name__)

PASSWORD = "bench password"
REPEATS = 7
STATES = ("done",) * 8 + ("no_match", "failed")
CARRIERS = ("dicom", "orthanc_metadata", "hl7")
PAGES = (("dashboard", "/"), ("studies_search", "/studies?patient_id=P000123"), ("api_studies", "/api/studies"),
         ("api_studies_filtered", "/api/studies?priority=STAT&model=chest-xray-demo"), ("metrics", "/metrics"))


def fill(database: Path, studies: int, seed: int = 0) -> None:
    """`studies` finished studies over the last 30 days, in one transaction."""
    rng, now = random.Random(seed), time.time()
    store = Stores.open(database)
    conn = store.database.connect()
    conn.execute("begin")
    for i in range(studies):
        uid, at = f"1.2.826.0.1.3680043.10.1.{i}", now - rng.random() * 30 * 86400
        conn.execute(
            "insert into studies (study_instance_uid, patient_id, accession_number, study_date, state, first_received_at,"
            " last_received_at, completed_at, processed_at, instance_count, priority, priority_score, priority_reasons,"
            " models) values (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [uid, f"P{i % 20000:06d}", f"A{i}", time.strftime("%Y%m%d", time.localtime(at)), rng.choice(STATES), at - 5,
             at, at + 10, at + 15, 1, rng.choice(("STAT", "URGENT", "ROUTINE")), 0.5, '["AI says so"]',
             '["chest-xray-demo@1.0.0"]'])
        conn.execute("insert into instances (sop_instance_uid, sop_class_uid, series_instance_uid, study_instance_uid,"
                     " modality, path, size, calling_aet, received_at, receive_count) values (?,?,?,?,?,?,?,?,?,1)",
                     [uid + ".1", "1.2.840.10008.5.1.4.1.1.1", uid + ".2", uid, "CR", "/x", 1000, "ORTHANC", at])
        conn.execute("insert into results (sop_instance_uid, study_instance_uid, series_instance_uid, kind, model,"
                     " model_version, path, created_at) values (?,?,?,?,?,?,?,?)",
                     [uid + ".9", uid, uid + ".8", "SR", "chest-xray-demo", "1.0.0", "/x", at + 15])
        for k, kind in enumerate(CARRIERS):
            conn.execute("insert into outbox (kind, key, study_instance_uid, destination, payload, state, attempts,"
                         " next_attempt_at, created_at, sent_at) values (?,?,?,?,?,'sent',1,0,?,?)",
                         [kind, uid + ".9" if kind == "dicom" else uid, uid, "PACS", "p", at + 15, at + 20 + k])
        conn.execute("insert into events (at, kind, study_instance_uid, detail) values (?,?,?,?)",
                     [at + 12, "model_ran", uid, json.dumps({"model": "chest-xray-demo", "seconds": 0.5})])
    conn.execute("commit")
    store.close()


def measure(database: Path) -> dict[str, float]:
    """Median milliseconds per page, signed in as a viewer (sessions) or over HTTP Basic (the API)."""
    store = Stores.open(database)
    # The dashboard shows the node's health as the node's console does (`dicom-ai status`'s counts).
    ctx = web_context(store.reports, TurnaroundTargets(), lambda: node_health(store.reports, database.parent, None),
                      stores=store)
    ctx.accounts.add_user("bench", Role.VIEWER, PASSWORD, by="bench")
    client = TestClient(build_app(ctx))
    client.post("/login", data={"username": "bench", "password": PASSWORD})
    found: dict[str, float] = {}
    for name, path in PAGES:
        times = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            answer = client.get(path)
            times.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, (path, answer.status_code)
        found[f"{name}_ms"] = median(times)
    store.close()
    return found


def run(workdir: Path, studies: int) -> dict[str, Any]:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    started = time.monotonic()
    fill(workdir / "dicom-ai.sqlite", studies)
    log.info("console: %d studies inserted in %.0f s", studies, time.monotonic() - started)
    result: dict[str, Any] = {"studies": studies, **measure(workdir / "dicom-ai.sqlite")}
    shutil.rmtree(workdir, ignore_errors=True)
    return result
