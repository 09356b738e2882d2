"""DICOMweb end to end with real parts: a real Orthanc with its DICOMweb plugin (Debian orthanc-dicomweb)
and the installed `dicom-ai serve` with no `pacs`: results reach Orthanc by STOW-RS only, once, and a
re-send stores nothing twice; a sender that pushes over DICOMweb (dicomweb-client, as a VNA would) STOWs
a chest CR to the node, which processes it and STOWs its SR back to Orthanc."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from orthanc_api_client import OrthancApiClient
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_ai.store import Stores
from tests.conftest import copy_as_new_study, free_port, require_binary, sample
from tests.e2e.conftest import RouterProcess, wait_for
from tests.e2e.orthanc_server import OrthancServer, storescu
from tests.e2e.test_backbone import SC_CLASS, SR_CLASS, by_class, study_instances

pytestmark = pytest.mark.e2e

Stack = tuple[OrthancServer, RouterProcess]


@pytest.fixture(scope="module")
def dicomweb_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for tool in ("storescu", "Orthanc"):
        require_binary(tool)
    root = tmp_path_factory.mktemp("dicomweb")
    router_port = free_port()
    orthanc = OrthancServer(root / "orthanc", router_aet="DICOM_AI", router_port=router_port, stable_age=1)
    orthanc.start()
    try:
        router = RouterProcess(root / "router", router_port, orthanc, webhook="", mllp=0,
                               DICOM_AI_PACS="", DICOM_AI_HL7_MLLP="",
                               DICOM_AI_STOW_URL=f"{orthanc.http_url}/dicom-web", DICOM_AI_STOW_RECEIVE="true")
    except Exception:
        orthanc.stop()
        raise
    yield orthanc, router
    router.stop()
    orthanc.stop()
    assert "Traceback" not in router.log(), router.log()


def _sends(router: RouterProcess, study_uid: str) -> list[dict[str, object]]:
    store = Stores.open(router.home / "dicom-ai.sqlite")
    try:
        return [row for row in store.reports.outbox_rows(study_uid) if row["key"] != study_uid]
    finally:
        store.close()


def _events(router: RouterProcess, study_uid: str, kind: str) -> int:
    store = Stores.open(router.home / "dicom-ai.sqlite")
    try:
        return sum(1 for event in store.reports.events(study_uid, limit=1000) if event["kind"] == kind)
    finally:
        store.close()


def test_results_reach_orthanc_by_stow_only_once_and_a_resend_stores_nothing_twice(dicomweb_stack: Stack,
                                                                                  tmp_path: Path) -> None:
    orthanc, router = dicomweb_stack
    client = OrthancApiClient(orthanc.http_url)
    study_uid = generate_uid()
    storescu([copy_as_new_study(sample("RG1_UNCR.dcm"), tmp_path / "in", StudyInstanceUID=study_uid)],
             orthanc.dicom_port)
    instances = wait_for("the SR and the heatmap in Orthanc",
                         lambda: len(by_class(found := study_instances(client, study_uid), SC_CLASS)) == 1
                         and by_class(found, SR_CLASS) and found, timeout=180, router=router)
    sends = wait_for("every result acknowledged",
                     lambda: (rows := _sends(router, study_uid)) and all(r["state"] == "sent" for r in rows) and rows,
                     timeout=60, router=router)
    assert {(row["kind"], row["destination"]) for row in sends} == {("stow", f"{orthanc.http_url}/dicom-web")}
    results = by_class(instances, SR_CLASS) + by_class(instances, SC_CLASS)
    assert {row["key"] for row in sends} == {i["SOPInstanceUID"] for i in results}

    # Orthanc's plugin forwards what arrived by DICOMweb back to the node once it is stable: the node
    # takes its own results as such (no second run, nothing new sent), so nothing loops.
    time.sleep(4)
    assert len(study_instances(client, study_uid)) == 1 + 2
    assert _events(router, study_uid, "study_done") == 1
    assert [row["attempts"] for row in _sends(router, study_uid)] == [1, 1]

    # An admin re-sends everything (the archive was restored from an old backup): the same SOP Instance
    # UIDs go again, and Orthanc still holds one copy of each.
    resend = subprocess.run([str(Path(sys.executable).parent / "dicom-ai"), "resend", "--sent", study_uid],
                            env={**os.environ, "DICOM_AI_HOME": str(router.home)}, capture_output=True, text=True,
                            timeout=60)
    assert resend.returncode == 0, resend.stderr
    wait_for("the re-send", lambda: _events(router, study_uid, "sent") >= 4, timeout=60, router=router)
    time.sleep(2)
    again = study_instances(client, study_uid)
    assert sorted(i["SOPInstanceUID"] for i in again) == sorted(i["SOPInstanceUID"] for i in instances)


def _download(client: OrthancApiClient, instance_id: str, folder: Path) -> Path:
    path = folder / f"{instance_id}.dcm"
    path.write_bytes(client.instances.get_file(instance_id))
    return path


def test_a_chest_cr_stowed_to_the_node_comes_back_as_an_sr_in_orthanc(dicomweb_stack: Stack, tmp_path: Path) -> None:
    orthanc, router = dicomweb_stack
    source = dcmread(copy_as_new_study(sample("RG1_UNCR.dcm"), tmp_path / "in"))
    study_uid = str(source.StudyInstanceUID)
    sender = DICOMwebClient(f"http://127.0.0.1:{router.http_port}/dicom-web")
    answer = sender.store_instances([source], study_instance_uid=study_uid)
    assert [str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence] == [str(source.SOPInstanceUID)]
    assert not answer.get("FailedSOPSequence")

    client = OrthancApiClient(orthanc.http_url)
    [sr] = wait_for("the SR in Orthanc", lambda: by_class(study_instances(client, study_uid), SR_CLASS), timeout=180,
                    router=router)
    dataset = dcmread(_download(client, sr["ID"], tmp_path))
    referenced = {str(item.ReferencedSOPInstanceUID) for study in dataset.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert referenced == {str(source.SOPInstanceUID)}
    assert "Consolidation" in dataset.to_json()  # the chest model's finding
    store = Stores.open(router.home / "dicom-ai.sqlite")
    try:
        [row] = store.database.query("select calling_aet from instances where sop_instance_uid = ?",
                                     [str(source.SOPInstanceUID)])
        assert row["calling_aet"] == "STOW-RS"
    finally:
        store.close()
