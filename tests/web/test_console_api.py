"""The console through Starlette's test client: who may read and change what, sessions and CSRF,
the API's searches and the audit trail, over a real database."""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from dicom_ai.config import Settings
from dicom_ai.domain import Priority
from dicom_ai.store import Stores
from dicom_ai.store.accounts import FAILURES_FREE
from dicom_ai.web.app import build_app
from dicom_ai.web.auth import SESSION_COOKIE
from dicom_ai.web.context import WebContext
from tests.prioritize.test_worklist import _study
from tests.web.console_support import PASSWORD, add_user, basic, context


@pytest.fixture
def ctx(tmp_path: Path) -> WebContext:
    store = Stores.open(tmp_path / "db.sqlite")
    now = time.time()
    _study(store, "1.1", minutes_ago=0.02, priority=Priority.ROUTINE, now=now)
    _study(store, "1.2", minutes_ago=0.01, priority=Priority.STAT, now=now)
    _study(store, "1.3", minutes_ago=60 * 24 * 3, priority=Priority.URGENT, now=now)  # three days old
    made = context(store, tmp_path, settings=Settings(home=tmp_path, http_port=0))
    for name, role in (("ada", "admin"), ("rita", "radiologist"), ("vera", "viewer")):
        add_user(made, name, role)
    return made


def signed_in(ctx: WebContext, name: str) -> tuple[TestClient, str]:
    """A browser signed in as `name`, and the CSRF token its pages carry."""
    client = TestClient(build_app(ctx), follow_redirects=False)
    answer = client.post("/login", data={"username": name, "password": PASSWORD, "next": "/worklist"})
    assert answer.status_code == 303 and answer.headers["location"] == "/worklist"
    page = client.get("/worklist").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    return client, token.group(1)


def test_anonymous_gets_401_from_the_api_a_redirect_from_pages_and_only_health_and_metrics(ctx: WebContext) -> None:
    client = TestClient(build_app(ctx), follow_redirects=False)
    for path in ("/api/studies", "/api/worklist", "/api/status", "/api/models", "/api/audit", "/api/users",
                 "/api/studies/1.1"):
        answer = client.get(path)
        assert answer.status_code == 401, path
        assert answer.headers["www-authenticate"].startswith("Basic")
    for path in ("/", "/studies", "/studies/1.1", "/worklist", "/models", "/users", "/audit", "/audit.csv"):
        answer = client.get(path)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next="), path
        assert "P1" not in answer.text
    assert client.post("/studies/1.1/priority", data={"level": "STAT", "reason": "x"}).status_code == 303
    assert client.get("/healthz").text == "ok\n"
    assert client.get("/metrics").status_code == 200
    assert client.get("/login").status_code == 200


def test_the_worklist_api_lists_studies_in_reading_order(ctx: WebContext) -> None:
    client = TestClient(build_app(ctx))
    entries = client.get("/api/worklist", headers=basic("vera")).json()
    assert [e["study_instance_uid"] for e in entries] == ["1.3", "1.2", "1.1"]  # aged URGENT -> STAT, late
    assert entries[0]["priority"] == "STAT" and "URGENT target" in entries[0]["reasons"][-1]
    today = client.get("/api/worklist?today=1", headers=basic("vera")).json()
    assert "1.3" not in [e["study_instance_uid"] for e in today]


def test_the_session_cookie_is_httponly_strict_and_signing_out_ends_it(ctx: WebContext) -> None:
    client = TestClient(build_app(ctx), follow_redirects=False)
    answer = client.post("/login", data={"username": "vera", "password": PASSWORD, "next": "//evil.example/x"})
    assert answer.headers["location"] == "/"  # no open redirect
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie and "Path=/" in cookie
    page = client.get("/")
    assert page.status_code == 200 and "Dashboard" in page.text and "vera (viewer)" in page.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    assert client.get("/").status_code == 303
    kinds = [e["kind"] for e in ctx.reports.audit()]
    assert "signed_in" in kinds and "signed_out" in kinds


def test_under_https_the_cookie_is_secure(ctx: WebContext) -> None:
    from dataclasses import replace

    client = TestClient(build_app(replace(ctx, https=True)), base_url="https://testserver", follow_redirects=False)
    answer = client.post("/login", data={"username": "vera", "password": PASSWORD})
    assert "Secure" in answer.headers["set-cookie"]


def test_a_session_unused_longer_than_the_idle_limit_is_signed_out(ctx: WebContext) -> None:
    from dataclasses import replace

    short = replace(ctx, session_idle_s=0.5)
    client = TestClient(build_app(short), follow_redirects=False)
    client.post("/login", data={"username": "vera", "password": PASSWORD})
    assert client.get("/").status_code == 200
    time.sleep(1.0)
    assert client.get("/").status_code == 303
    assert ctx.reports.database.query("select count(*) as n from sessions")[0]["n"] == 0


def test_failed_sign_ins_are_slowed_down_per_name(ctx: WebContext) -> None:
    client = TestClient(build_app(ctx), follow_redirects=False)
    for _ in range(FAILURES_FREE):
        assert client.post("/login", data={"username": "ada", "password": "wrong password"}).status_code == 401
    refused = client.post("/login", data={"username": "ada", "password": PASSWORD})
    assert refused.status_code == 429 and "too many failed sign-ins" in refused.text
    assert int(refused.headers["retry-after"]) >= 1
    api = client.get("/api/studies", headers=basic("ada"))
    assert api.status_code == 429
    assert client.get("/api/studies", headers=basic("vera")).status_code == 429  # the same address


def test_a_viewer_is_refused_changes_with_403_and_nothing_changes(ctx: WebContext) -> None:
    client, token = signed_in(ctx, "vera")
    answer = client.post("/studies/1.1/priority", data={"csrf_token": token, "level": "STAT", "reason": "mine"})
    assert answer.status_code == 403 and "takes the radiologist role" in answer.text
    assert client.post("/studies/1.1/retry", data={"csrf_token": token}).status_code == 403
    assert client.get("/users").status_code == 403
    api = TestClient(build_app(ctx))
    assert api.post("/api/studies/1.1/priority", json={"level": "STAT", "reason": "x"}, headers=basic("vera")).status_code == 403
    assert api.get("/api/users", headers=basic("vera")).status_code == 403
    assert ctx.reports.study("1.1").priority_override is None  # type: ignore[union-attr]


def test_a_change_without_the_sessions_csrf_token_is_refused(ctx: WebContext) -> None:
    client, token = signed_in(ctx, "rita")
    for data in ({"level": "STAT", "reason": "r"}, {"level": "STAT", "reason": "r", "csrf_token": "forged"}):
        answer = client.post("/studies/1.1/priority", data=data)
        assert answer.status_code == 403 and "reload the page" in answer.text
    assert ctx.reports.study("1.1").priority_override is None  # type: ignore[union-attr]
    answer = client.post("/studies/1.1/priority", data={"csrf_token": token, "level": "STAT", "reason": "r",
                                                        "back": "/worklist"})
    assert answer.status_code == 303 and answer.headers["location"].startswith("/worklist?done=")


def test_a_radiologist_overrides_a_priority_with_a_reason_and_it_is_audited(ctx: WebContext) -> None:
    client, token = signed_in(ctx, "rita")
    missing = client.post("/studies/1.1/priority", data={"csrf_token": token, "level": "STAT", "reason": " "})
    assert "reason+is+required" in missing.headers["location"]
    client.post("/studies/1.1/priority", data={"csrf_token": token, "level": "STAT", "reason": "clinical call"})
    row = ctx.reports.study("1.1")
    assert row is not None and (row.priority_override, row.priority_override_by) == ("STAT", "rita")
    [event] = [e for e in TestClient(build_app(ctx)).get("/api/audit?kind=priority_overridden&by=rita",
                                                          headers=basic("ada")).json()]
    assert event["study_instance_uid"] == "1.1" and '"new": "STAT"' in event["detail"] and '"ai": "ROUTINE"' in event["detail"]
    page = client.get("/worklist").text
    assert "clinical call" in page  # the worklist says why


def test_scripts_change_over_http_basic_with_json_only(ctx: WebContext) -> None:
    api = TestClient(build_app(ctx))
    form = api.post("/api/studies/1.2/priority", data={"level": "ROUTINE", "reason": "x"}, headers=basic("rita"))
    assert form.status_code == 415  # a cross-site form cannot send JSON
    done = api.post("/api/studies/1.2/priority", json={"level": "ROUTINE", "reason": "read already"}, headers=basic("rita"))
    assert done.status_code == 200 and done.json()["ok"] is True
    assert ctx.reports.study("1.2").priority_override == "ROUTINE"  # type: ignore[union-attr]
    unknown = api.post("/api/studies/9.9/priority", json={"level": "STAT", "reason": "x"}, headers=basic("rita"))
    assert unknown.status_code == 404
    wrong = api.get("/api/studies", headers=basic("rita", "not the password"))
    assert wrong.status_code == 401


def test_admins_retry_studies_and_manage_users(ctx: WebContext) -> None:
    client, token = signed_in(ctx, "ada")
    answer = client.post("/studies/1.1/retry", data={"csrf_token": token})
    assert "done=" in answer.headers["location"] and ctx.reports.study("1.1").state == "complete"  # type: ignore[union-attr]
    client.post("/users", data={"csrf_token": token, "name": "newbie", "role": "viewer", "password": "long enough pw"})
    assert ctx.accounts.user("newbie") is not None
    short = client.post("/users", data={"csrf_token": token, "name": "x", "role": "viewer", "password": "short"})
    assert "too+short" in short.headers["location"]
    client.post("/users/newbie/role", data={"csrf_token": token, "role": "radiologist"})
    assert ctx.accounts.user("newbie").role == "radiologist"  # type: ignore[union-attr]
    last = client.post("/users/ada/remove", data={"csrf_token": token})
    assert "last+admin" in last.headers["location"]
    users = TestClient(build_app(ctx)).get("/api/users", headers=basic("ada")).json()
    assert {u["name"] for u in users} == {"ada", "rita", "vera", "newbie"} and "password_hash" not in users[0]
    kinds = {e["kind"] for e in ctx.reports.audit(by="ada")}
    assert {"study_requeued", "user_added", "user_role_changed"} <= kinds
    role_change = ctx.reports.audit(kind="user_role_changed")[0]["detail"]
    assert '"before": {"role": "viewer"}' in role_change and '"after": {"role": "radiologist"}' in role_change


def test_study_search_filters_in_sql(ctx: WebContext) -> None:
    api = TestClient(build_app(ctx))

    def uids(query: str) -> list[str]:
        answer = api.get(f"/api/studies?{query}", headers=basic("vera"))
        assert answer.status_code == 200, answer.text
        return sorted(row["study_instance_uid"] for row in answer.json())

    assert uids("") == ["1.1", "1.2", "1.3"]
    assert uids("patient_id=P2") == ["1.2"]
    assert uids("priority=STAT") == ["1.2"]
    assert uids("model=m") == ["1.1", "1.2", "1.3"] and uids("model=other") == []
    assert uids("state=done&priority=URGENT") == ["1.3"]
    assert api.get("/api/studies?limit=x", headers=basic("vera")).status_code == 400
    detail = api.get("/api/studies/1.2", headers=basic("vera")).json()
    assert detail["study"]["patient_id"] == "P2" and [e["kind"] for e in detail["events"]][0] == "study_opened"
    assert api.get("/api/studies/9.9", headers=basic("vera")).status_code == 404


def test_every_page_renders_for_a_signed_in_admin(ctx: WebContext) -> None:
    client, _ = signed_in(ctx, "ada")
    for path, text in (("/", "Dashboard"), ("/studies?patient_id=P1", "1.1"), ("/studies/1.1", "Timeline"),
                       ("/worklist", "Reading worklist"), ("/worklist?today=1", "What to read first today"),
                       ("/models", "Models"), ("/users", "Add a user"), ("/audit", "signed_in")):
        answer = client.get(path)
        assert answer.status_code == 200 and text in answer.text, path
    assert client.get("/studies/9.9").status_code == 404
    assert client.get("/nope").status_code == 404


def test_the_audit_exports_csv_with_its_filters(ctx: WebContext) -> None:
    client, token = signed_in(ctx, "rita")
    client.post("/studies/1.3/priority", data={"csrf_token": token, "level": "ROUTINE", "reason": "prior read"})
    answer = client.get("/audit.csv?kind=priority_overridden")
    assert answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [(r["event"], r["by"], r["study_instance_uid"]) for r in rows] == [("priority_overridden", "rita", "1.3")]
    assert client.get("/audit?since=yesterday").status_code == 400


def test_the_api_schema_lists_the_read_endpoints(ctx: WebContext) -> None:
    schema = TestClient(build_app(ctx)).get("/api/schema", headers=basic("vera")).json()
    assert {"/api/studies", "/api/worklist", "/api/status", "/api/models", "/api/audit"} <= set(schema["paths"])


def test_the_session_cookie_is_stored_only_as_a_hash(ctx: WebContext) -> None:
    client = TestClient(build_app(ctx), follow_redirects=False)
    client.post("/login", data={"username": "vera", "password": PASSWORD})
    token = client.cookies[SESSION_COOKIE]
    stored = ctx.reports.database.query("select token_hash from sessions")
    assert stored and all(token not in row["token_hash"] for row in stored)


def test_admins_switch_a_model_off_and_on_without_deleting_it(ctx: WebContext) -> None:
    from dataclasses import replace

    from dicom_ai.infer.registry import ModelRegistry
    from dicom_ai.store.model_switches import disabled_models
    from tests.conftest import REPO

    with_models = replace(ctx, models=ModelRegistry(REPO / "models"))
    client, token = signed_in(with_models, "ada")
    assert "Switch off" in client.get("/models").text
    answer = client.post("/models/chest-xray-demo/disable", data={"csrf_token": token, "back": "/models"})
    assert "switched+off" in answer.headers["location"]
    assert disabled_models(ctx.reports.database) == {"chest-xray-demo"}
    assert "switched off</b>" in client.get("/models").text
    api = TestClient(build_app(with_models))
    models = {m["name"]: m for m in api.get("/api/models", headers=basic("vera")).json()}
    assert models["chest-xray-demo"]["enabled"] is False and models["brain-mr-demo"]["enabled"] is True
    assert api.post("/api/models/chest-xray-demo", json={"enabled": True}, headers=basic("vera")).status_code == 403
    assert api.post("/api/models/no-such-model", json={"enabled": False}, headers=basic("ada")).status_code == 404
    assert api.post("/api/models/chest-xray-demo", json={"enabled": True}, headers=basic("ada")).json()["ok"]
    assert disabled_models(ctx.reports.database) == set()
    [on, off] = ctx.reports.audit(kind=None, by="ada")[:2]
    assert (on["kind"], off["kind"]) == ("model_enabled", "model_disabled")
    assert '"before": {"enabled": true}, "after": {"enabled": false}' in off["detail"]


def test_a_shadow_models_findings_are_shown_as_not_sent(ctx: WebContext) -> None:
    assert ctx.stores is not None
    from dicom_ai.domain import PriorityDecision

    ctx.stores.studies.requeue("1.1", by="test")
    ctx.stores.studies.claim_complete_study()
    ctx.stores.studies.save_outcome("1.1", rules=["r"], models=["m@1", "shadow-model@2 (shadow)"], findings=[],
                                    results=[], outbox=[], priority=PriorityDecision(Priority.ROUTINE, 0.1, ("x",)),
                                    shadow_models=["shadow-model"])
    ctx.reports.database.connect().execute(
        "insert into findings (study_instance_uid, sop_instance_uid, model, model_version, label, probability, present)"
        " values ('1.1', '1.1.1', 'shadow-model', '2', 'Nodule', 0.9, 1)")
    client, _ = signed_in(ctx, "vera")
    page = client.get("/studies/1.1").text
    assert re.search(r"shadow-model 2 <b class=\"URGENT\">shadow: not sent</b>", page)


def test_admins_discard_a_failed_study_which_leaves_the_open_problems(ctx: WebContext) -> None:
    from dicom_ai.domain import StudyState

    assert ctx.stores is not None and ctx.status is not None
    ctx.stores.studies.requeue("1.1", by="test")
    ctx.stores.studies.claim_complete_study()
    ctx.stores.studies.finish_without_results("1.1", StudyState.FAILED, "model x failed on the study: boom")
    assert any("1 failed study" in a for a in ctx.status().attention)
    client, token = signed_in(ctx, "ada")
    assert "/studies/1.1/discard" in client.get("/").text
    api = TestClient(build_app(ctx))
    assert api.post("/api/studies/1.1/discard", json={}, headers=basic("rita")).status_code == 403
    answer = client.post("/studies/1.1/discard", data={"csrf_token": token, "back": "/"})
    assert "done=" in answer.headers["location"]
    row = ctx.reports.study("1.1")
    assert row is not None and row.state == "no_match" and row.error == "discarded by ada after: model x failed on the study: boom"
    assert not any("failed study" in a for a in ctx.status().attention)
    assert api.post("/api/studies/1.1/discard", json={}, headers=basic("ada")).status_code == 400  # not failed now
    [event] = ctx.reports.audit(kind="study_discarded")
    assert '"before": {"state": "failed"}, "after": {"state": "no_match"}' in event["detail"]


def test_a_console_that_reads_cards_only_says_the_workers_load_the_models(ctx: WebContext) -> None:
    from dataclasses import replace

    from dicom_ai.infer.registry import ModelRegistry
    from tests.conftest import REPO

    for registry, state in ((ModelRegistry(REPO / "models", load=False), "in the workers"),
                            (ModelRegistry(REPO / "models"), "not loaded")):
        api = TestClient(build_app(replace(ctx, models=registry)))
        models = {m["name"]: m for m in api.get("/api/models", headers=basic("vera")).json()}
        assert models["chest-xray-demo"]["state"] == state
