"""The supervised node (dicom_ai/procs/) with executor: ray and no cluster named: the supervisor starts
one local Ray and every pipeline worker joins it (none starts a Ray of its own); a chest CR study is
processed on a Ray actor and its results reach the PACS once; SIGTERM stops the node and its Ray."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_ai.train.phantom_dicom import write_chest_cr_study
from tests.integration.node_process import NodeProcess, Pacs, settled, storescu

pytestmark = [pytest.mark.ray]


def test_the_workers_share_the_local_ray_the_supervisor_started(tmp_path: Path) -> None:
    pacs = Pacs(tmp_path / "pacs")
    node = NodeProcess(tmp_path / "node", pacs, stable_after=0.5, DICOM_AI_WORKERS="2", DICOM_AI_EXECUTOR="ray",
                       DICOM_AI_RAY_ADDRESS="", DICOM_AI_HEATMAPS="none")
    node.env.pop("RAY_ADDRESS", None)
    try:
        node.start()
        files = write_chest_cr_study(tmp_path / "cr", 105, True, patient_id="RAY-PROCS")
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        assert storescu(node.port, files)
        node.wait_until("the study processed and sent", lambda: settled(node, [study_uid]), 240)
        log = node.log()
        started = re.findall(r"started a local Ray at (\S+)", log)
        assert len(started) == 1, log[-4000:]  # by the supervisor, once
        joined = re.findall(r"\[(worker-\d)\] \S+: Ray: joined the cluster at (\S+)", log)
        assert sorted(name for name, _ in joined) == ["worker-1", "worker-2"], log[-4000:]
        assert {address for _, address in joined} == {started[0]}
        assert re.search(r"Ray: model chest-xray-demo \S+ loaded by pid \d+", log), log[-4000:]
        assert all(n == 1 for n in pacs.received(study_uid).values()) and pacs.received(study_uid)
        node.stop()
        assert node.process is not None and node.process.returncode == 0
        assert "Traceback" not in node.log(), node.log()[-4000:]
    finally:
        node.kill()
        pacs.stop()
