"""The Rules page and /api/rules through the test client: a broken draft shows its file:line error
next to the line, a valid one replays over stored studies, is tested on a received study or an
uploaded file, is activated (written, versioned, audited) and restored; viewers only read."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from dicom_ai.config import Settings
from dicom_ai.store import Spool, Stores
from dicom_ai.web.app import build_app
from dicom_ai.web.context import WebContext
from tests.conftest import sample
from tests.route.test_route_drafts import ANY_CR, CHEST, CT, receive
from tests.web.console_support import PASSWORD, add_user, basic, context


@pytest.fixture
def ctx(tmp_path: Path) -> WebContext:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a-chest.yaml").write_text(CHEST, encoding="utf-8")
    (rules / "b-ct.yaml").write_text(CT, encoding="utf-8")
    store, spool = Stores.open(tmp_path / "home" / "dicom-ai.sqlite"), Spool(tmp_path / "home" / "spool")
    made = context(store, tmp_path, settings=Settings(home=tmp_path / "home", rules_dir=rules, http_port=0), spool=spool)
    add_user(made, "ada", "admin")
    add_user(made, "vera", "viewer")
    return made


def _browser(ctx: WebContext, name: str) -> tuple[TestClient, str]:
    client = TestClient(build_app(ctx), follow_redirects=False)
    client.post("/login", data={"username": name, "password": PASSWORD})
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/rules").text)
    assert token is not None
    return client, token.group(1)


def test_a_broken_draft_shows_its_file_line_error_next_to_the_line_and_nothing_is_written(ctx: WebContext) -> None:
    client, token = _browser(ctx, "ada")
    page = client.get("/rules?file=a-chest.yaml").text
    assert "chest" in page and "a-chest.yaml" in page and "b-ct.yaml" in page
    broken = CHEST.replace("Modality: CR", "Modalty: CR")
    answer = client.post("/rules", data={"csrf_token": token, "file": "a-chest.yaml", "text": broken, "action": "activate"})
    text = html.unescape(answer.text)
    assert answer.status_code == 422 and "a-chest.yaml:4: rules[0].series.Modalty:" in text
    assert re.search(r"  4  +Modalty: CR</span>  <b class=\"STAT\">← a-chest.yaml:4", text)
    assert (ctx.settings.rules_dir / "a-chest.yaml").read_text() == CHEST  # type: ignore[union-attr]


def test_replay_test_activate_and_restore_a_draft(ctx: WebContext) -> None:
    assert ctx.stores is not None and ctx.spool is not None and ctx.settings is not None
    now = time.time()
    chest = receive(ctx.stores, ctx.spool, "CT_small.dcm", now - 60)  # a CT: b-ct routes it
    client, token = _browser(ctx, "ada")
    replay = client.post("/rules", data={"csrf_token": token, "file": "b-ct.yaml", "days": "1",
                                         "text": CT.replace("ct-head-demo", "brain-mr-demo"), "action": "replay"})
    assert replay.status_code == 200
    assert "1 more study to brain-mr-demo, 0 fewer; 0 more studies to ct-head-demo, 1 fewer; 1 study changes model" \
        in html.unescape(replay.text)
    tested = client.post("/rules", data={"csrf_token": token, "file": "a-chest.yaml", "text": ANY_CR, "action": "test",
                                         "study_uid": chest})
    assert f"study {chest} (1 series)" in tested.text and "ct: MATCH -&gt; ct-head-demo" in tested.text
    with open(sample("CT_small.dcm"), "rb") as upload:
        uploaded = client.post("/rules", data={"csrf_token": token, "file": "a-chest.yaml", "text": ANY_CR,
                                               "action": "test"}, files={"upload": ("x.dcm", upload, "application/dicom")})
    assert "ct: MATCH" in uploaded.text and "chest: no match" in uploaded.text

    activated = client.post("/rules", data={"csrf_token": token, "file": "a-chest.yaml", "text": ANY_CR, "action": "activate"})
    assert activated.status_code == 303 and "activated" in activated.headers["location"]
    assert (ctx.settings.rules_dir / "a-chest.yaml").read_text() == ANY_CR
    page = client.get("/rules?file=a-chest.yaml").text
    versions = re.findall(r'action="/rules/versions/(\d+)/restore"', page)
    assert len(versions) == 2  # the file as it was on disk, then the activation
    restored = client.post(f"/rules/versions/{min(map(int, versions))}/restore", data={"csrf_token": token})
    assert restored.status_code == 303 and "restored" in restored.headers["location"]
    assert (ctx.settings.rules_dir / "a-chest.yaml").read_text() == CHEST
    audit = TestClient(build_app(ctx)).get("/api/audit?by=ada&kind=rules_activated", headers=basic("ada")).json()
    assert len(audit) == 2 and all('"file": "a-chest.yaml"' in e["detail"] for e in audit)


def test_viewers_read_the_rules_but_are_refused_every_change(ctx: WebContext) -> None:
    client, token = _browser(ctx, "vera")
    assert "Modality: CR" in client.get("/rules?file=a-chest.yaml").text
    for action in ("check", "replay", "test", "activate"):
        answer = client.post("/rules", data={"csrf_token": token, "file": "a-chest.yaml", "text": ANY_CR, "action": action})
        assert answer.status_code == 403, action
    assert client.post("/rules/versions/1/restore", data={"csrf_token": token}).status_code == 403
    api = TestClient(build_app(ctx))
    assert api.post("/api/rules", json={"file": "a-chest.yaml", "text": ANY_CR, "action": "activate"},
                    headers=basic("vera")).status_code == 403
    assert (ctx.settings.rules_dir / "a-chest.yaml").read_text() == CHEST  # type: ignore[union-attr]


def test_the_rules_api_checks_replays_and_activates(ctx: WebContext) -> None:
    api = TestClient(build_app(ctx))
    listed = api.get("/api/rules", headers=basic("vera")).json()
    assert set(listed["files"]) == {"a-chest.yaml", "b-ct.yaml"} and {r["name"] for r in listed["rules"]} == {"chest", "ct"}
    broken = api.post("/api/rules", json={"file": "a-chest.yaml", "text": "rules:\n  - name: x\n", "action": "check"},
                      headers=basic("ada"))
    assert broken.status_code == 422 and broken.json()["problems"][0]["file"] == "a-chest.yaml"
    replay = api.post("/api/rules", json={"file": "a-chest.yaml", "text": ANY_CR, "action": "replay", "days": 3},
                      headers=basic("ada")).json()
    assert replay["replay"]["summary"].startswith("no study changes routing")
    done = api.post("/api/rules", json={"file": "c-new.yaml", "text": CT.replace("name: ct", "name: ct-2"),
                                        "action": "activate"}, headers=basic("ada")).json()
    assert done["ok"] and done["version"]["author"] == "ada"
    assert (ctx.settings.rules_dir / "c-new.yaml").is_file()  # type: ignore[union-attr]
