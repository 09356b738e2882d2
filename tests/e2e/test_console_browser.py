"""The console in a real headless Chromium (Debian's, driven by Playwright) against a running node
and a real Orthanc: studies go storescu -> Orthanc -> the node -> results back.

An admin signs in and sees the dashboard, a study's page with its heatmaps, the worklist, models
and audit; breaks a rule and sees its file:line error, fixes it, replays it, activates it, and the
next study sent with storescu is routed by the new rule; then rolls back. A viewer is refused an
edit (403). A radiologist overrides a priority in the worklist and Orthanc's metadata gets it, then
judges a finding on a study's page (the judgement appears, its assessment SR reaches Orthanc) and
opens the model's page with its live numbers and report figures.
Screenshots of the main pages go to tests/artifacts/console-*.png (git ignores the folder).
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from orthanc_api_client import OrthancApiClient
from playwright.sync_api import Browser, Page, sync_playwright
from pydicom.uid import generate_uid

from dicom_ai.store.accounts import Role
from tests.conftest import REPO, HttpReceiver, MllpListener, copy_as_new_study, free_port, require_binary, sample
from tests.e2e.conftest import RouterProcess, wait_for
from tests.e2e.ohif import CHROMIUM, CHROMIUM_ARGS
from tests.e2e.orthanc_server import OrthancServer, storescu
from tests.web.console_support import PASSWORD, add_node_user, basic

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO / "tests" / "artifacts"
RULES_FILE = "chest-radiograph.yaml"
RESULTS_TIMEOUT = 180.0
SCREEN = {"width": 1400, "height": 1000}


class Stack:
    def __init__(self, root: Path) -> None:
        for tool in ("storescu", "Orthanc"):
            require_binary(tool)
        self.rules = root / "rules"
        shutil.copytree(REPO / "rules", self.rules)  # activation writes here, never into the repository
        self.webhook, self.ris = HttpReceiver(failures=0), MllpListener()
        router_port = free_port()
        self.orthanc = OrthancServer(root / "orthanc", router_aet="DICOM_AI", router_port=router_port, stable_age=1)
        self.orthanc.start()
        try:
            self.router = RouterProcess(root / "router", router_port, self.orthanc, self.webhook.url, self.ris.port,
                                        DICOM_AI_RULES_DIR=str(self.rules))
        except Exception:
            self.orthanc.stop()
            raise
        self.base = f"http://127.0.0.1:{self.router.http_port}"
        for name, role in (("ada", Role.ADMIN), ("rita", Role.RADIOLOGIST), ("vera", Role.VIEWER)):
            add_node_user(self.router.home, name, role)

    def send_chest(self, tmp_path: Path) -> str:
        study_uid = generate_uid()
        storescu([copy_as_new_study(sample("RG1_UNCR.dcm"), tmp_path / study_uid, StudyInstanceUID=study_uid)],
                 self.orthanc.dicom_port)
        return study_uid

    def api(self, path: str) -> object:
        request = urllib.request.Request(f"{self.base}{path}", headers=basic("ada"))
        return json.loads(urllib.request.urlopen(request, timeout=10).read())

    def stop(self) -> None:
        self.router.stop()
        self.orthanc.stop()
        self.webhook.stop()
        self.ris.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("console"))
    yield running
    running.stop()
    assert "Traceback" not in running.router.log(), running.router.log()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def sign_in(browser: Browser, stack: Stack, name: str) -> Page:
    page = browser.new_context(viewport=SCREEN).new_page()  # type: ignore[arg-type]
    page.goto(f"{stack.base}/")
    assert "/login" in page.url  # anonymous: sent to the sign-in page
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("nav")
    return page


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)


def sr_in_orthanc(stack: Stack, study_uid: str) -> str:
    """Wait until the study's SR is back in Orthanc; the study's Orthanc ID."""
    client = OrthancApiClient(stack.orthanc.http_url)

    def arrived() -> str | None:
        orthanc_id = client.studies.lookup(study_uid)
        if not orthanc_id:
            return None
        series = client.get_json(f"studies/{orthanc_id}/series")
        return orthanc_id if any(s["MainDicomTags"].get("Modality") == "SR" for s in series) else None

    try:
        return str(wait_for("the SR in Orthanc", arrived, RESULTS_TIMEOUT, stack.router))
    except Exception as exc:  # once seen: Orthanc stopped answering mid-test; say whether it exited, and how
        process = stack.orthanc.process
        if process is not None and process.poll() is not None:
            raise AssertionError(f"Orthanc exited with {process.returncode}: {stack.orthanc.log_tail()}") from exc
        raise


def test_admin_viewer_and_radiologist_in_the_browser(stack: Stack, browser: Browser, tmp_path: Path) -> None:
    first = stack.send_chest(tmp_path)
    orthanc_id = sr_in_orthanc(stack, first)

    # The admin: dashboard, the study with its heatmaps, worklist, models, audit.
    admin = sign_in(browser, stack, "ada")
    assert admin.locator("h1").inner_text() == "Dashboard" and "ada (admin)" in admin.inner_text("nav")
    assert "Turnaround, 24 h" in admin.inner_text("main") and "chest-xray-demo" in admin.inner_text("main")
    shot(admin, "dashboard")
    admin.goto(f"{stack.base}/studies")
    admin.click(f"a:text('{first}')")
    admin.wait_for_selector("h2:text('Findings')")
    assert "Consolidation" in admin.inner_text("main") and "chest-xray-demo" in admin.inner_text("pre")
    heatmap = admin.locator("figure img").first
    heatmap.wait_for()
    assert admin.evaluate("img => img.complete && img.naturalWidth > 0", heatmap.element_handle())
    shot(admin, "study")
    for path, name in (("/worklist", "worklist"), ("/models", "models"), ("/audit", "audit")):
        admin.goto(f"{stack.base}{path}")
        shot(admin, name)
    assert "signed_in" in admin.inner_text("main")

    # Break the rule: its file:line error; fix it (a new name), replay, activate.
    original = (stack.rules / RULES_FILE).read_text()
    admin.goto(f"{stack.base}/rules?file={RULES_FILE}")
    admin.fill("textarea[name=text]", original.replace("Modality: [CR, DX]", "Modalty: [CR, DX]", 1))
    admin.click("button[value=check]")
    problems = admin.inner_text("#problems")
    assert re.search(rf"{RULES_FILE}:\d+: rules\[0\]\.series\.Modalty", problems), problems
    shot(admin, "rules-error")
    fixed = original.replace("name: chest-radiograph ", "name: chest-radiograph-v2 ", 1)
    assert fixed != original
    admin.fill("textarea[name=text]", fixed)
    admin.fill("input[name=days]", "1")
    admin.click("button[value=replay]")
    assert "Replay over 1 study(ies)" in admin.inner_text("#replay")  # same model: "no study changes routing"
    shot(admin, "rules-replay")
    admin.click("button[value=activate]")
    admin.wait_for_selector("p.flash:text('activated')")
    assert (stack.rules / RULES_FILE).read_text() == fixed
    wait_for("the node's reload", lambda: "routing rules in" in stack.router.log() and "reloaded" in stack.router.log(),
             30, stack.router)
    second = stack.send_chest(tmp_path)
    sr_in_orthanc(stack, second)
    assert f"study {second}: rule chest-radiograph-v2 ->" in stack.router.log()

    # Roll back to the file as it was.
    admin.goto(f"{stack.base}/rules?file={RULES_FILE}")
    versions = [int(v) for v in re.findall(r"/rules/versions/(\d+)/restore", admin.content())]
    admin.click(f"form[action='/rules/versions/{min(versions)}/restore'] button")
    admin.wait_for_selector("p.flash:text('restored')")
    assert (stack.rules / RULES_FILE).read_text() == original

    # The viewer reads but is refused an edit.
    viewer = sign_in(browser, stack, "vera")
    assert viewer.goto(f"{stack.base}/users").status == 403  # type: ignore[union-attr]
    viewer.goto(f"{stack.base}/worklist")
    assert viewer.locator("form.override").count() == 0  # no override form for a viewer
    token = viewer.get_attribute("input[name=csrf_token]", "value")
    refused = viewer.request.post(f"{stack.base}/studies/{first}/priority",
                                  form={"csrf_token": token or "", "level": "STAT", "reason": "try"}, max_redirects=0)
    assert refused.status == 403
    shot(viewer, "viewer-worklist")

    # The radiologist overrides the first study's priority; Orthanc's metadata gets it.
    detail = stack.api(f"/api/studies/{first}")
    ai_level = detail["study"]["priority"]  # type: ignore[index]
    level = "ROUTINE" if ai_level == "STAT" else "STAT"
    radiologist = sign_in(browser, stack, "rita")
    radiologist.goto(f"{stack.base}/worklist")
    row = radiologist.locator(f"tr:has-text('{first}')")
    row.locator("select[name=level]").select_option(level)
    row.locator("input[name=reason]").fill("clinical history")
    row.locator("button").click()
    radiologist.wait_for_selector("p.flash")
    assert f"set to {level} by rita: clinical history" in radiologist.inner_text("p.flash")
    shot(radiologist, "override")
    client = OrthancApiClient(stack.orthanc.http_url)
    wait_for(f"AiPriority {level} in Orthanc",
             lambda: client.studies.get_string_metadata(orthanc_id, "AiPriority", default_value="") == level,
             60, stack.router)
    overridden = [e for e in stack.api("/api/audit?kind=priority_overridden&by=rita")]  # type: ignore[union-attr]
    assert overridden and overridden[0]["study_instance_uid"] == first


def test_a_radiologist_judges_a_finding_and_the_model_page_shows_the_loop(stack: Stack, browser: Browser,
                                                                          tmp_path: Path) -> None:
    study = stack.send_chest(tmp_path)
    sr_in_orthanc(stack, study)

    # A viewer reads the judgements but has no form to judge.
    viewer = sign_in(browser, stack, "vera")
    viewer.goto(f"{stack.base}/studies/{study}")
    assert viewer.locator("table#judgements").count() == 1 and viewer.locator("form.feedback").count() == 0

    # The radiologist judges the first finding on the study page; the judgement and its history appear.
    radiologist = sign_in(browser, stack, "rita")
    radiologist.goto(f"{stack.base}/studies/{study}")
    row = radiologist.locator("tr.judgement").first
    model, label = row.get_attribute("data-model"), row.get_attribute("data-label")
    assert "not judged" in row.locator("td.current").inner_text()
    row.locator("select[name=truth]").select_option("present")
    row.locator("input[name=comment]").fill("dense opacity, right lower lobe")
    row.locator("button").click()
    radiologist.wait_for_selector("p.flash")
    flash = radiologist.inner_text("p.flash")
    assert f"{model} {label} judged present by rita; assessment SR" in flash, flash
    current = radiologist.locator(f"tr.judgement[data-label='{label}'] td.current").inner_text()
    assert "present (radiologist rita" in current and "dense opacity" in current, current
    shot(radiologist, "feedback")

    # The assessment SR goes to the PACS through the outbox like any result.
    assessment = re.search(r"assessment SR ([0-9.]+) queued", flash).group(1)  # type: ignore[union-attr]

    def sent() -> bool:
        sends = stack.api(f"/api/studies/{study}")["sends"]  # type: ignore[index]
        return any(s["key"] == assessment and s["state"] == "sent" for s in sends)

    wait_for("the assessment SR sent to Orthanc", sent, 60, stack.router)
    judged = stack.api("/api/audit?kind=judged&by=rita")
    assert [e["study_instance_uid"] for e in judged] == [study]  # type: ignore[union-attr]

    # The model page: the live table counts the judged study; the figures are drawn in the background.
    radiologist.goto(f"{stack.base}/models/{model}")
    assert label in radiologist.inner_text("table#performance")

    def figures() -> bool:
        radiologist.reload()
        return radiologist.locator("#figures img").count() >= 4

    wait_for("the model's report figures", figures, 60, stack.router)
    for image in radiologist.locator("#figures img").all():
        assert radiologist.evaluate("img => img.complete && img.naturalWidth > 0", image.element_handle())
    shot(radiologist, "model")
