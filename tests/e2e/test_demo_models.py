"""End to end for every demo model: a synthetic study of each kind (written as DICOM by
phantom_dicom, sent by dcmtk's storescu to the real Orthanc) is forwarded to the node, routed by
the rules in rules/ to its model, and comes back as a valid SR plus heatmap SCs marked as a demo:
mammograms by view, brain MR slices, a head CT series as one volume (heatmaps on its most salient
slices) and colour colonoscopy frames."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from orthanc_api_client import OrthancApiClient
from pydicom import dcmread

from dicom_ai.train import phantom_dicom
from tests.conftest import HttpReceiver, MllpListener
from tests.e2e.conftest import RouterProcess, wait_for
from tests.e2e.orthanc_server import OrthancServer, storescu
from tests.e2e.test_backbone import SC_CLASS, SR_CLASS, by_class, study_instances, validate_with_dciodvfy

Stack = tuple[OrthancServer, RouterProcess, HttpReceiver, MllpListener]

pytestmark = pytest.mark.e2e

# writer, model, coded finding meaning, heatmap SCs expected for a study with a finding
DEMOS: dict[str, tuple[Callable[..., list[Path]], str, str, int]] = {
    "mammography": (phantom_dicom.write_mammography_study, "mammography-demo", "Mass", 4),
    "brain-mr": (phantom_dicom.write_brain_mr_study, "brain-mr-demo", "Neoplasm of brain", 5),
    "ct-head": (phantom_dicom.write_ct_volume_study, "ct-head-demo", "Intracranial hemorrhage", 3),
    "endoscopy": (phantom_dicom.write_endoscopy_study, "endoscopy-demo", "Polyp of colon", 2),
}


@pytest.mark.parametrize("kind", sorted(DEMOS))
def test_demo_model_routes_and_returns_sr_and_heatmaps(kind: str, node_stack: Stack, tmp_path: Path) -> None:
    orthanc, router, _, _ = node_stack
    writer, model, meaning, heatmaps = DEMOS[kind]
    client = OrthancApiClient(orthanc.http_url)
    files = writer(tmp_path / "in", seed=7, finding=True, patient_id=f"E2E-{kind.upper()}")
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    storescu(files, orthanc.dicom_port)

    instances = wait_for(
        f"{heatmaps} heatmap SCs and the SR of the {kind} study",
        lambda: (found := study_instances(client, study_uid)) and by_class(found, SR_CLASS)
        and len(by_class(found, SC_CLASS)) == heatmaps and found,
        timeout=180, router=router,
    )
    [sr] = by_class(instances, SR_CLASS)
    assert "DEMO" in sr["SeriesDescription"]  # marked as a demo wherever a viewer lists series
    for instance in [sr, *by_class(instances, SC_CLASS)]:
        path = tmp_path / f"{instance['ID']}.dcm"
        path.write_bytes(client.instances.get_file(instance["ID"]))
        validate_with_dciodvfy(path)
    dump = subprocess.run(["dsrdump", str(tmp_path / f"{sr['ID']}.dcm")], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert meaning in dump.stdout and model in dump.stdout
    orthanc_id = client.studies.lookup(study_uid)
    priority = wait_for("AiPriority on the study",
                        lambda: client.studies.get_string_metadata(orthanc_id, "AiPriority", default_value=""),
                        timeout=60, router=router)
    assert priority in ("STAT", "URGENT", "ROUTINE")
    assert f"-> {model} " in router.log()  # routed by its rule to its model
