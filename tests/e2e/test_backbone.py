"""End to end with real parts only: dcmtk storescu -> Orthanc (Debian) -> its plugin forwards the
stable study -> our node (the installed `dicom-ai serve`) -> SR + heatmap SC back into the same
study in Orthanc, priority metadata set, outputs valid under dciodvfy and dsrdump, nothing
forwarded twice, and a study that no rule matches passes through untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from orthanc_api_client import OrthancApiClient
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_ai.store import Stores
from tests.conftest import HttpReceiver, MllpListener, copy_as_new_study, sample
from tests.e2e.conftest import STABLE_AFTER, RouterProcess, mwl_priority, wait_for
from tests.e2e.orthanc_server import OrthancServer, storescu
from tests.web.console_support import add_node_user, get_json, signed_in_opener

Stack = tuple[OrthancServer, RouterProcess, HttpReceiver, MllpListener]

pytestmark = pytest.mark.e2e

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
def study_instances(client: OrthancApiClient, study_uid: str) -> list[dict[str, Any]]:
    orthanc_id = client.studies.lookup(study_uid)
    if not orthanc_id:
        return []
    instances = client.get_json(f"studies/{orthanc_id}/instances")
    return [client.get_json(f"instances/{i['ID']}/simplified-tags") | {"ID": i["ID"]} for i in instances]


def by_class(instances: list[dict[str, Any]], sop_class: str) -> list[dict[str, Any]]:
    return [i for i in instances if i.get("SOPClassUID") == sop_class]


def validate_with_dciodvfy(path: Path) -> None:
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
    assert not errors, f"dciodvfy found errors in {path.name}:\n" + "\n".join(errors)


def test_chest_radiograph_comes_back_with_sr_heatmaps_and_priority(
    node_stack: Stack, tmp_path: Path
) -> None:
    orthanc, router, webhook, ris = node_stack
    client = OrthancApiClient(orthanc.http_url)
    study_uid = generate_uid()
    # The real chest PA CR, once uncompressed and once in JPEG 2000 (which Orthanc 1.10 cannot transcode).
    files = [
        copy_as_new_study(sample("RG1_UNCR.dcm"), tmp_path / "in", StudyInstanceUID=study_uid),
        copy_as_new_study(sample("RG1_J2KR.dcm"), tmp_path / "in", StudyInstanceUID=study_uid),
    ]
    originals = {str(dcmread(f).SOPInstanceUID) for f in files}
    storescu(files[:1], orthanc.dicom_port)
    storescu(files[1:], orthanc.dicom_port, options=["-xv"])  # propose JPEG 2000 lossless
    sent_at = time.monotonic()

    instances = wait_for(
        "the SR in Orthanc",
        lambda: (found := study_instances(client, study_uid)) and by_class(found, SR_CLASS) and found,
        timeout=180, router=router,
    )
    sr_arrived = time.monotonic() - sent_at
    orthanc_id = client.studies.lookup(study_uid)
    priority = wait_for(
        "AiPriority on the study",
        lambda: client.studies.get_string_metadata(orthanc_id, "AiPriority", default_value=""),
        timeout=60, router=router,
    )
    assert priority in ("STAT", "URGENT", "ROUTINE")
    findings = client.studies.get_string_metadata(orthanc_id, "AiFindings")
    assert "Consolidation" in findings
    instances = wait_for(
        "two heatmap SCs", lambda: len(by_class(found := study_instances(client, study_uid), SC_CLASS)) == 2 and found,
        timeout=60, router=router,
    )
    [sr] = by_class(instances, SR_CLASS)
    assert priority in sr["SeriesDescription"]  # every viewer's series list shows it
    for instance in [sr, *by_class(instances, SC_CLASS)]:
        path = tmp_path / f"{instance['ID']}.dcm"
        path.write_bytes(client.instances.get_file(instance["ID"]))
        validate_with_dciodvfy(path)
        dataset = dcmread(path)
        assert dataset.StudyInstanceUID == study_uid
    dump = subprocess.run(["dsrdump", "+Pu", str(tmp_path / f"{sr['ID']}.dcm")], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert "Consolidation" in dump.stdout and "chest-xray-demo" in dump.stdout
    for source in originals:
        assert source in dump.stdout  # the SR references both analysed images

    # The results made the study stable again in Orthanc: wait past that and check the loop guard.
    time.sleep(4)
    instances = study_instances(client, study_uid)
    assert len(instances) == 2 + 1 + 2, [i["SOPClassUID"] for i in instances]  # nothing duplicated in the PACS
    store = Stores.open(router.home / "dicom-ai.sqlite")
    try:
        assert store.reports.receive_counts(study_uid) == {uid: 1 for uid in originals}  # no result came back to us
        [row] = [r for r in store.reports.studies() if r.study_instance_uid == study_uid]
        assert row.state == "done" and row.pending_sends == 0
        assert [r for r in store.reports.outbox_rows(study_uid) if r["attempts"] != 1] == []  # each result sent once
    finally:
        store.close()
    # The notice (webhook) went out once, with the priority and no patient identifiers by default.
    [notice] = wait_for("the webhook notice", lambda: [b for b in webhook.bodies
                                                       if b["study_instance_uid"] == study_uid], 30, router)
    assert notice["priority"] == priority and "patient" not in notice and notice["not_for_clinical_use"] is True

    # The RIS got an ORU^R01 over MLLP with the priority in TQ1-9, valid under strict HL7 v2.5 rules.
    [oru] = wait_for("the HL7 result", lambda: [m for m in ris.messages if study_uid[-22:] in m or
                                                 str(dcmread(files[0]).PatientID) in m], 30, router)
    parsed = parse_message(oru, validation_level=VALIDATION_LEVEL.STRICT)
    tq1 = parsed.oru_r01_patient_result.oru_r01_order_observation.oru_r01_timing_qty.tq1.tq1_9.to_er7()
    assert tq1.split("^")[0] == {"STAT": "S", "URGENT": "A", "ROUTINE": "R"}[priority]

    # Our own worklist page lists it with its priority and reasons, to a signed-in viewer.
    base = f"http://127.0.0.1:{router.http_port}"
    add_node_user(router.home, "backbone-viewer", "viewer")
    page = signed_in_opener(base, "backbone-viewer").open(f"{base}/worklist?today=1", timeout=10).read().decode()
    assert study_uid in page and priority in page
    [entry] = [e for e in get_json(f"{base}/api/worklist", "backbone-viewer") if e["study_instance_uid"] == study_uid]
    assert entry["priority"] == priority and entry["reasons"]

    # The modality worklist carries the priority in its standard field.
    mwl = {"STAT": "STAT", "URGENT": "HIGH", "ROUTINE": "ROUTINE"}
    assert wait_for("the worklist entry", lambda: mwl_priority(orthanc, study_uid, tmp_path / "mwl"), 30,
                    router) == mwl[priority]

    # A radiologist overrides the priority: audited by the node, and Orthanc's flags follow.
    new_level = "ROUTINE" if priority != "ROUTINE" else "URGENT"
    override = subprocess.run(
        [str(Path(sys.executable).parent / "dicom-ai"), "priority", study_uid, new_level, "--reason", "e2e check",
         "--by", "dr.e2e"],
        env={**os.environ, "DICOM_AI_HOME": str(router.home), "DICOM_AI_ORTHANC_URL": orthanc.http_url,
             "DICOM_AI_MWL_DIR": str(orthanc.worklist_dir)},
        capture_output=True, text=True, timeout=60,
    )
    assert override.returncode == 0, override.stderr
    wait_for("the override in Orthanc",
             lambda: client.studies.get_string_metadata(orthanc_id, "AiPriority") == new_level, timeout=30, router=router)
    assert "dr.e2e" in client.studies.get_string_metadata(orthanc_id, "AiReasons")
    wait_for("the overridden worklist entry",
             lambda: mwl_priority(orthanc, study_uid, tmp_path / "mwl") == mwl[new_level], 30, router)
    print(f"\nturnaround storescu end -> SR in Orthanc: {sr_arrived:.2f} s "
          f"(includes Orthanc StableAge 1 s and our stable_after {STABLE_AFTER:.0f} s)")


def test_study_without_a_matching_rule_passes_through(
    node_stack: Stack, tmp_path: Path
) -> None:
    orthanc, router, webhook, ris = node_stack
    client = OrthancApiClient(orthanc.http_url)
    ct = copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in")
    study_uid = str(dcmread(ct).StudyInstanceUID)
    storescu([ct], orthanc.dicom_port)

    def finished() -> str | None:
        completed = subprocess.run(
            [str(Path(sys.executable).parent / "dicom-ai"), "studies", "--json"],
            env={**os.environ, "DICOM_AI_HOME": str(router.home)}, capture_output=True, text=True, timeout=60,
        )
        assert completed.returncode == 0, completed.stderr
        rows = [r for r in json.loads(completed.stdout) if r["study_instance_uid"] == study_uid]
        return rows[0]["state"] if rows and rows[0]["state"] not in ("receiving", "complete", "processing") else None

    assert wait_for("the CT study to be handled", finished, timeout=60, router=router) == "no_match"
    time.sleep(1.5)
    instances = study_instances(client, study_uid)
    assert [i["SOPClassUID"] for i in instances] == ["1.2.840.10008.5.1.4.1.1.2"]  # only the CT itself
    orthanc_id = client.studies.lookup(study_uid)
    assert client.studies.get_string_metadata(orthanc_id, "AiPriority", default_value="") == ""
    assert f"study {study_uid}: no rule matched" in router.log()
    assert not [b for b in webhook.bodies if b["study_instance_uid"] == study_uid]  # no result, no notice
