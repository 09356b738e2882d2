"""Triage end to end: several studies arrive in one order and come out in priority order, with
reasons, in Orthanc's AI worklist, in the modality worklist and in our own view; the patient's
history changes a priority; waiting promotes a study.

Images are synthetic frontal chest phantoms from our own generator (dicom_ai.train.phantoms),
wrapped in the header of the real chest CR from pydicom-data: with and without a consolidation, so
the demo model gives clearly different results (measured: ~0.2 without, 0.6-0.99 with).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_ai.train.phantoms import chest_phantom
from tests.conftest import HttpReceiver, MllpListener, copy_as_new_study, sample
from tests.e2e.conftest import RouterProcess, mwl_priority, wait_for
from tests.e2e.orthanc_server import OrthancServer, storescu

pytestmark = pytest.mark.e2e
CLI = str(Path(sys.executable).parent / "dicom-ai")
MWL = {"STAT": "STAT", "URGENT": "HIGH", "ROUTINE": "ROUTINE"}


def phantom_study(folder: Path, patient: str, seed: int, finding: bool) -> tuple[str, Path]:
    """A one-image CR study: a 224-pixel phantom (the model's training size) enlarged to 672."""
    phantom = chest_phantom(np.random.default_rng(seed), finding=finding, size=224)
    pixels = np.kron(phantom.image.astype(np.uint16) * 16, np.ones((3, 3), dtype=np.uint16))
    ds = dcmread(sample("RG1_UNCR.dcm"))
    ds.Rows, ds.Columns = pixels.shape
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = pixels.tobytes()
    ds.PatientID, ds.PatientName = patient, f"Phantom^{patient}"
    ds.AccessionNumber = f"A{seed}{patient}"[-16:]
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return str(ds.StudyInstanceUID), path


def our_worklist(router: RouterProcess, **env: str) -> list[dict]:  # type: ignore[type-arg]
    done = subprocess.run([CLI, "worklist", "--json"], env={**os.environ, "DICOM_AI_HOME": str(router.home), **env},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_studies_come_out_in_priority_order_with_history_and_aging(
    node_stack: tuple[OrthancServer, RouterProcess, HttpReceiver, MllpListener], tmp_path: Path
) -> None:
    orthanc, router, _, _ = node_stack
    patient_a, patient_b, patient_c = (f"T{generate_uid()[-8:]}{x}" for x in "ABC")
    prior_uid, prior = phantom_study(tmp_path / "in", patient_a, seed=100, finding=False)
    # C's only prior is a CT (2004-01-19) that no rule routes: the PACS knows it, no AI result does.
    ct_prior = copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in", PatientID=patient_c)
    storescu([prior, ct_prior], orthanc.dicom_port)
    wait_for("the prior studies", lambda: {e["study_instance_uid"]: e["state"] for e in our_worklist(router)}.get(
        prior_uid) == "done", 120, router)

    # Then, in this order: C (clear), A's follow-up (new consolidation), B (large consolidation).
    later = [
        phantom_study(tmp_path / "in", patient_c, seed=101, finding=False),
        phantom_study(tmp_path / "in", patient_a, seed=100, finding=True),
        phantom_study(tmp_path / "in", patient_b, seed=101, finding=True),
    ]
    for _, path in later:
        storescu([path], orthanc.dicom_port)
    (c_uid, _), (a_uid, _), (b_uid, _) = later
    ours = {prior_uid, c_uid, a_uid, b_uid}
    entries = wait_for("all four studies done", lambda: (found := [e for e in our_worklist(router)
                       if e["study_instance_uid"] in ours and e["state"] == "done"]) and len(found) == 4 and found,
                       180, router)

    by_uid = {e["study_instance_uid"]: e for e in entries}
    assert by_uid[b_uid]["priority"] == "STAT"
    assert by_uid[c_uid]["priority"] == "ROUTINE" and by_uid[prior_uid]["priority"] == "ROUTINE"
    # History by C-FIND: the PACS's prior CT, which no AI analysed, is named for comparison.
    assert "prior CT study of 2004-01-19 in the PACS, without AI result: compare" in by_uid[c_uid]["reasons"]
    # A's follow-up alone would be URGENT (present, below STAT 90%); new after a prior negative -> STAT
    history = by_uid[a_uid]
    assert history["ai_priority"] == "STAT" and any(r.startswith("new Consolidation: absent on prior study")
                                                    for r in history["reasons"]), history

    # Our view: STAT first (the one waiting longest first), then ROUTINE, oldest first.
    order = [e["study_instance_uid"] for e in entries]
    assert order == [a_uid, b_uid, prior_uid, c_uid], json.dumps(entries, indent=1)

    # Orthanc's AI worklist, once the flags arrived, has the same order.
    def orthanc_order() -> list[str] | None:
        listed = [e for e in orthanc.get_json("/dicom-ai/worklist") if e["StudyInstanceUID"] in ours]
        return [e["StudyInstanceUID"] for e in listed] if all(e["AiPriority"] for e in listed) and len(listed) == 4 \
            else None

    assert wait_for("the flags in Orthanc", orthanc_order, 60, router) == [a_uid, b_uid, prior_uid, c_uid]
    # The modality worklist carries each study's priority in Requested Procedure Priority.
    for uid in ours:
        assert wait_for("the worklist entry", lambda: mwl_priority(orthanc, uid, tmp_path / "mwl"), 30,
                        router) == MWL[by_uid[uid]["priority"]]

    # Aging: with a one-second ROUTINE target, the waiting ROUTINE studies rise to URGENT, with the reason.
    aged = {e["study_instance_uid"]: e for e in our_worklist(router, DICOM_AI_TURNAROUND_ROUTINE_MINUTES="0.016")
            if e["study_instance_uid"] in ours}
    assert aged[c_uid]["priority"] == "URGENT" and "ROUTINE target" in aged[c_uid]["reasons"][-1]
    assert aged[b_uid]["priority"] == "STAT"
