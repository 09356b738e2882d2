"""Shadow and fallback rules end to end, through a real Orthanc that forwards what storescu sends it:
a shadow rule's model runs and its results are recorded, but nothing reaches Orthanc (no SR, no
priority metadata); a fallback rule catches a study no other rule routes, and its SR arrives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.conftest import HttpReceiver, MllpListener, free_port, require_binary
from tests.e2e.conftest import RouterProcess, wait_for
from tests.e2e.orthanc_server import OrthancServer, storescu
from tests.e2e.test_triage import phantom_study

pytestmark = pytest.mark.e2e
CLI = str(Path(sys.executable).parent / "dicom-ai")
RULES = """rules:
  - name: chest-candidate
    shadow: true
    study: {PatientID: {regex: '^SH'}}
    series: {Modality: CR}
    models: [chest-xray-demo]
  - name: ct-only
    series: {Modality: CT}
    models: [ct-head-demo]
  - name: catch-all
    fallback: true
    study: {PatientID: {regex: '^FB'}}
    models: [chest-xray-demo]
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[OrthancServer, RouterProcess]]:
    for tool in ("storescu", "Orthanc"):
        require_binary(tool)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "features.yaml").write_text(RULES, encoding="utf-8")
    webhook, ris, router_port = HttpReceiver(failures=0), MllpListener(), free_port()
    orthanc = OrthancServer(tmp_path / "orthanc", router_aet="DICOM_AI", router_port=router_port, stable_age=1)
    orthanc.start()
    try:
        router = RouterProcess(tmp_path / "router", router_port, orthanc, webhook.url, ris.port,
                               DICOM_AI_RULES_DIR=str(rules))
    except Exception:
        orthanc.stop()
        raise
    yield orthanc, router
    router.stop()
    orthanc.stop()
    webhook.stop()
    ris.close()
    assert "Traceback" not in router.log(), router.log()


def study_json(router: RouterProcess, study_uid: str) -> dict:  # type: ignore[type-arg]
    done = subprocess.run([CLI, "study", study_uid, "--json"], env={**os.environ, "DICOM_AI_HOME": str(router.home)},
                          capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout) if done.returncode == 0 else {}


def test_shadow_results_stay_home_and_a_fallback_rule_catches_the_rest(
        stack: tuple[OrthancServer, RouterProcess], tmp_path: Path) -> None:
    orthanc, router = stack
    shadow_uid, shadow_file = phantom_study(tmp_path / "in", f"SH{generate_uid()[-8:]}", seed=7, finding=True)
    caught_uid, caught_file = phantom_study(tmp_path / "in", f"FB{generate_uid()[-8:]}", seed=8, finding=True)
    storescu([shadow_file], orthanc.dicom_port)
    wait_for("the shadow study to be done",
             lambda: study_json(router, shadow_uid).get("study", {}).get("state") == "done", 120, router)
    storescu([caught_file], orthanc.dicom_port)

    # The fallback rule's SR reaches Orthanc (image + SR, at least), with the priority metadata.
    caught_id = wait_for("the fallback study in Orthanc", lambda: orthanc.find_study(caught_uid), 60, router)
    wait_for("the fallback study's results in Orthanc",
             lambda: len(orthanc.get_json(f"/studies/{caught_id}/instances")) >= 2, 120, router)
    wait_for("the fallback study's priority in Orthanc",
             lambda: "AiPriority" in orthanc.get_json(f"/studies/{caught_id}/metadata"), 60, router)
    caught = study_json(router, caught_uid)
    assert caught["study"]["state"] == "done"
    assert not caught["study"]["models"][0].endswith("(shadow)")

    # By now the shadow study's results would have gone out long before: Orthanc still holds only the image.
    shadow = study_json(router, shadow_uid)
    assert shadow["study"]["models"][0].startswith("chest-xray-demo@")
    assert shadow["study"]["models"][0].endswith(" (shadow)")
    assert shadow["findings"], "the shadow model's findings are recorded"
    assert shadow["study"]["results"] >= 1, "the shadow model's result files are recorded"
    assert shadow["sends"] == []
    assert "shadow_results" in {event["kind"] for event in shadow["events"]}
    shadow_id = orthanc.find_study(shadow_uid)
    assert shadow_id is not None
    assert len(orthanc.get_json(f"/studies/{shadow_id}/instances")) == 1
    assert "AiPriority" not in orthanc.get_json(f"/studies/{shadow_id}/metadata")
