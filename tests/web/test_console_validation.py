"""The validation loop in the console, through Starlette's test client over a real database and spool:
a radiologist's judgement from the study page or the API is recorded, audited once and its
assessment SR queued for the PACS (as `dicom-ai feedback` does); a viewer is refused; a model's page
shows evaluate_model's numbers, its report figures and its drift; the dashboard names a drift."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from dicom_ai.config import Settings
from dicom_ai.domain import DriftCheck, Judgement, Truth, TruthSource
from dicom_ai.store import Stores
from dicom_ai.validation import evaluate_model, record_feedback
from dicom_ai.web.app import build_app
from dicom_ai.web.context import WebContext
from tests.validation_support import LABEL, MODEL, processed_study
from tests.web.console_support import PASSWORD, add_user, basic, context

PACS = "ORTHANC@127.0.0.1:4242"
FIGURES_WAIT_S = 60.0  # a bounded wait for the background drawing


@pytest.fixture
def node(tmp_path: Path, make_settings: Callable[..., Settings]) -> tuple[WebContext, Stores, Settings]:
    settings = make_settings(pacs=PACS, http_port=0)
    stores = Stores.open(settings.database_path)
    ctx = context(stores, settings.home, settings=settings)
    for name, role in (("ada", "admin"), ("rita", "radiologist"), ("vera", "viewer")):
        add_user(ctx, name, role)
    return ctx, stores, settings


def signed_in(ctx: WebContext, name: str, home: Path) -> tuple[TestClient, str]:
    client = TestClient(build_app(ctx, home=home), follow_redirects=False)
    assert client.post("/login", data={"username": name, "password": PASSWORD, "next": "/"}).status_code == 303
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").text)
    assert token is not None
    return client, token.group(1)


def assessments(stores: Stores, study: str) -> list[dict]:  # type: ignore[type-arg]
    return stores.database.query("select r.sop_instance_uid, o.destination, o.state from results r join outbox o"
                                 " on o.key = r.sop_instance_uid where r.study_instance_uid = ? and r.kind = 'AS'",
                                 [study])


def test_a_radiologist_judges_a_finding_on_the_study_page(node: tuple[WebContext, Stores, Settings]) -> None:
    ctx, stores, settings = node
    study = processed_study(stores, settings, accession="A1", probability=0.9)
    client, token = signed_in(ctx, "rita", settings.home)
    page = client.get(f"/studies/{study}").text
    assert "not judged" in page and 'action="/studies/' + study + '/feedback"' in page
    answer = client.post(f"/studies/{study}/feedback", data={
        "csrf_token": token, "model": MODEL, "label": LABEL, "truth": "absent", "comment": "atelectasis",
        "back": f"/studies/{study}"})
    assert answer.status_code == 303 and "judged+absent+by+rita" in answer.headers["location"], answer.headers
    [row] = stores.database.query("select * from feedback where study_instance_uid = ?", [study])
    assert (row["truth"], row["source"], row["by"], row["comment"]) == ("absent", "radiologist", "rita", "atelectasis")
    judged = [e for e in ctx.reports.audit(kind="judged")]
    assert len(judged) == 1 and json.loads(judged[0]["detail"])["by"] == "rita"  # audited once, by the store
    [queued] = assessments(stores, study)
    assert (queued["destination"], queued["state"]) == (PACS, "pending")
    shown = client.get(f"/studies/{study}").text
    current = re.search(r'<td class="current">(.*?)</td>', shown, re.S)
    assert current is not None and "<b>absent</b> (radiologist rita" in current.group(1) and "atelectasis" in current.group(1)


def test_the_api_takes_feedback_from_a_radiologist_and_shows_judgements_with_history(
        node: tuple[WebContext, Stores, Settings]) -> None:
    ctx, stores, settings = node
    study = processed_study(stores, settings, accession="A1", probability=0.9)
    client = TestClient(build_app(ctx, home=settings.home))
    for truth in ("present", "uncertain"):
        answer = client.post(f"/api/studies/{study}/feedback", headers=basic("rita"),
                             json={"model": MODEL, "label": LABEL, "truth": truth})
        assert answer.status_code == 200 and answer.json()["ok"], answer.text
    detail = client.get(f"/api/studies/{study}", headers=basic("vera")).json()
    [finding] = detail["judgements"]
    assert (finding["model"], finding["label"]) == (MODEL, LABEL)
    assert finding["current"]["truth"] == "uncertain" and finding["current"]["by"] == "rita"
    assert [(h["truth"], h["by"], h["source"]) for h in finding["history"]] == [
        ("present", "rita", "radiologist"), ("uncertain", "rita", "radiologist")]
    assert len(ctx.reports.audit(kind="judged")) == 2


def test_a_viewer_is_refused_and_an_unknown_label_is_named(node: tuple[WebContext, Stores, Settings]) -> None:
    ctx, stores, settings = node
    study = processed_study(stores, settings, accession="A1", probability=0.9)
    client = TestClient(build_app(ctx, home=settings.home))
    refused = client.post(f"/api/studies/{study}/feedback", headers=basic("vera"),
                          json={"model": MODEL, "label": LABEL, "truth": "present"})
    assert refused.status_code == 403 and "viewer" in refused.json()["error"]
    browser, token = signed_in(ctx, "vera", settings.home)
    assert browser.post(f"/studies/{study}/feedback", data={"csrf_token": token, "model": MODEL, "label": LABEL,
                                                             "truth": "present"}).status_code == 403
    assert "Judge</button>" not in browser.get(f"/studies/{study}").text
    unknown = client.post(f"/api/studies/{study}/feedback", headers=basic("rita"),
                          json={"model": MODEL, "label": "Pneumothorax", "truth": "present"})
    assert unknown.status_code == 400 and "'Pneumothorax'" in unknown.json()["error"], unknown.text
    bad = client.post(f"/api/studies/{study}/feedback", headers=basic("rita"),
                      json={"model": MODEL, "label": LABEL, "truth": "maybe"})
    assert bad.status_code == 400 and "'maybe'" in bad.json()["error"]
    missing = client.post("/api/studies/9.9.9/feedback", headers=basic("rita"),
                          json={"model": MODEL, "label": LABEL, "truth": "present"})
    assert missing.status_code == 404 and "9.9.9" in missing.json()["error"]
    assert stores.database.query("select count(*) as n from feedback")[0]["n"] == 0
    assert not assessments(stores, study)


def test_the_model_page_shows_evaluate_models_numbers_and_its_figures(node: tuple[WebContext, Stores, Settings]) -> None:
    ctx, stores, settings = node
    # Ten of each class (AUROC_MIN_PER_CLASS), threshold 0.35: TP 8, FN 2, FP 3, TN 7; one uncertain, one not judged.
    truths = [*((p, Truth.PRESENT) for p in (0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5, 0.4, 0.2, 0.1)),
              *((p, Truth.ABSENT) for p in (0.7, 0.65, 0.5, 0.25, 0.2, 0.15, 0.1, 0.05, 0.03, 0.02)),
              (0.3, Truth.UNCERTAIN), (0.6, None)]
    for n, (probability, truth) in enumerate(truths):
        study = processed_study(stores, settings, accession=f"A{n}", probability=probability, now=1_700_000_000.0 + n)
        if truth is not None:
            record_feedback(stores, settings, Judgement(study, MODEL, LABEL, truth, TruthSource.RADIOLOGIST, "rita"))
    expected = evaluate_model(stores, settings, MODEL, None).labels[LABEL].overall
    assert (expected.tp, expected.fp, expected.tn, expected.fn, expected.uncertain) == (8, 3, 7, 2, 1)

    client, _ = signed_in(ctx, "vera", settings.home)
    page = client.get(f"/models/{MODEL}")
    assert page.status_code == 200, page.text
    table = re.search(r'<table id="performance">(.*?)</table>', page.text, re.S)
    assert table is not None
    cells = re.findall(r"<td>(.*?)</td>", table.group(1), re.S)
    assert cells[:9] == [LABEL, "0.35", "22", "20", "1", expected.sensitivity.describe(), expected.specificity.describe(),
                         expected.ppv.describe(), expected.npv.describe()], cells
    assert cells[10:] == [f"{expected.brier:.3f}", expected.agreement.describe(), "8 / 3 / 7 / 2"], cells
    assert expected.auroc is not None and expected.auroc_ci is not None
    assert cells[9] == f"{expected.auroc:.3f} ({expected.auroc_ci[0]:.3f}-{expected.auroc_ci[1]:.3f})", cells
    numbers = client.get(f"/api/models/{MODEL}/performance", headers=basic("vera")).json()
    assert numbers["labels"][LABEL]["overall"] == json.loads(json.dumps(expected.as_dict()))

    # The figures are drawn off the request path into HOME/console-reports; once there, the page serves them.
    deadline = time.monotonic() + FIGURES_WAIT_S
    while not numbers["figures"] and time.monotonic() < deadline:
        time.sleep(0.2)
        numbers = client.get(f"/api/models/{MODEL}/performance", headers=basic("vera")).json()
    names = {url.rpartition("/")[2] for url in numbers["figures"]}
    assert {f"roc-{LABEL.lower()}.png", f"calibration-{LABEL.lower()}.png", f"scores-{LABEL.lower()}.png",
            f"subgroups-{LABEL.lower()}.png"} <= names, numbers["figures"]
    assert list((settings.home / "console-reports" / MODEL).glob(f"*/roc-{LABEL.lower()}.png"))
    page = client.get(f"/models/{MODEL}").text
    for name in names:
        assert f'src="/models/{MODEL}/figures/{name}"' in page
        image = client.get(f"/models/{MODEL}/figures/{name}")
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert client.get(f"/models/{MODEL}/figures/..%2Fmetrics.json").status_code == 404
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    redraw = client.post(f"/models/{MODEL}/figures", data={"csrf_token": token})
    assert redraw.status_code == 303 and "drawing+new+figures" in redraw.headers["location"], redraw.headers
    assert client.get("/models/no-such-model").status_code == 404
    missing = client.get("/api/models/no-such-model/performance", headers=basic("vera"))
    assert missing.status_code == 404 and MODEL in missing.json()["error"]


def test_a_drift_the_node_recorded_shows_on_the_model_pages_and_the_dashboard(
        node: tuple[WebContext, Stores, Settings]) -> None:
    ctx, stores, settings = node
    processed_study(stores, settings, accession="A1", probability=0.9)
    stores.performance.save_drift([DriftCheck(MODEL, "2026-W48", "rows", 40, 0.9, 0.001, True),
                                   DriftCheck(MODEL, "2026-W48", "score:Consolidation", 40, 0.05, 0.6, False)])
    client, _ = signed_in(ctx, "vera", settings.home)
    dashboard = client.get("/").text
    assert f"model {MODEL} drifted from its validation reference in 2026-W48" in dashboard
    drift = re.search(r'<table id="drift">(.*?)</table>', client.get(f"/models/{MODEL}").text, re.S)
    assert drift is not None and re.search(r"<td>rows</td><td>40</td><td>0.90</td>.*drifted", drift.group(1))
    numbers = client.get(f"/api/models/{MODEL}/performance", headers=basic("vera")).json()
    assert [(c["variable"], c["flagged"]) for c in numbers["drift"]] == [("rows", True), ("score:Consolidation", False)]
