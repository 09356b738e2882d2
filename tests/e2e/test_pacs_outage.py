"""The PACS goes down for a minute while the node holds results for it: nothing is lost, the node
keeps retrying (with backoff, without giving up), and once Orthanc is back the SR, the heatmap and the
priority metadata arrive, each once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from orthanc_api_client import OrthancApiClient
from pydicom.uid import generate_uid

from dicom_ai.store import Stores
from tests.conftest import HttpReceiver, MllpListener, copy_as_new_study, free_port, require_binary, sample
from tests.e2e.conftest import RouterProcess, wait_for
from tests.e2e.orthanc_server import OrthancServer, storescu
from tests.e2e.test_backbone import SC_CLASS, SR_CLASS, by_class, study_instances

pytestmark = pytest.mark.e2e

OUTAGE_S = 60.0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[OrthancServer, RouterProcess]]:
    for tool in ("storescu", "Orthanc"):
        require_binary(tool)
    webhook, ris = HttpReceiver(failures=0), MllpListener()
    router_port = free_port()
    orthanc = OrthancServer(tmp_path / "orthanc", router_aet="DICOM_AI", router_port=router_port, stable_age=1)
    orthanc.start()
    router = RouterProcess(tmp_path / "router", router_port, orthanc, webhook.url, ris.port,
                           DICOM_AI_SEND_RETRY_INITIAL="2", DICOM_AI_SEND_RETRY_MAX="8",
                           # quiet for 6 s before processing: the PACS is surely down before results go out (with
                           # 1 s, a quiet machine delivered the SR while Orthanc was still shutting down)
                           DICOM_AI_STABLE_AFTER="6")
    yield orthanc, router
    router.stop()
    orthanc.stop()
    webhook.stop()
    ris.close()
    assert "Traceback" not in router.log(), router.log()


def _received(router: RouterProcess, study_uid: str) -> bool:
    store = Stores.open(router.home / "dicom-ai.sqlite")
    try:
        return store.reports.study(study_uid) is not None
    finally:
        store.close()


def _sends(router: RouterProcess, study_uid: str) -> list[dict[str, object]]:
    store = Stores.open(router.home / "dicom-ai.sqlite")
    try:
        return store.reports.outbox_rows(study_uid)
    finally:
        store.close()


def test_results_reach_the_pacs_after_a_one_minute_outage(stack: tuple[OrthancServer, RouterProcess],
                                                          tmp_path: Path) -> None:
    orthanc, router = stack
    study_uid = generate_uid()
    storescu([copy_as_new_study(sample("RG1_UNCR.dcm"), tmp_path / "in", StudyInstanceUID=study_uid)],
             orthanc.dicom_port, called=orthanc.aet)
    wait_for("the node to receive the study", lambda: _received(router, study_uid), 60, router)
    orthanc.stop()  # the PACS goes down before the results are out (the node waits 6 s of quiet first)
    down_at = time.monotonic()
    wait_for("the results to wait for the PACS", lambda: any(
        row["kind"] == "dicom" and (row["attempts"] or 0) >= 2 for row in _sends(router, study_uid)), 60, router)
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
    waiting = [row for row in _sends(router, study_uid) if row["kind"] == "dicom"]
    assert waiting and {row["state"] for row in waiting} == {"pending"}  # still trying, nothing given up
    assert all(f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}" in str(row["last_error"]) for row in waiting)
    attempts = max(int(row["attempts"]) for row in waiting)  # type: ignore[call-overload]

    orthanc.start()  # back, on the same storage and ports
    client = OrthancApiClient(orthanc.http_url)
    wait_for("the SR and heatmap in Orthanc", lambda: by_class(study_instances(client, study_uid), SR_CLASS)
             and by_class(study_instances(client, study_uid), SC_CLASS), 60, router)
    orthanc_id = client.studies.lookup(study_uid)
    wait_for("the priority metadata", lambda: "AiPriority" in client.get_json(f"studies/{orthanc_id}/metadata"), 60,
             router)
    instances = study_instances(client, study_uid)
    assert len(by_class(instances, SR_CLASS)) == 1 and len(by_class(instances, SC_CLASS)) == 1
    assert {row["state"] for row in _sends(router, study_uid)} == {"sent"}
    print(f"PACS down {OUTAGE_S:.0f} s: {attempts} attempt(s) per result while down, all delivered once after")
