"""End to end on a two-node Ray cluster (two raylets on this machine, ray.cluster_utils.Cluster;
Ray's driver rewrites a loopback address to the machine's own, so the cluster uses that): studies
sent by dcmtk's storescu to the real Orthanc are forwarded to `dicom-ai serve` with executor: ray,
whose models run on actors on both Ray nodes; the first forward pass kills its actor's worker process
(SIGKILL, the ray.actor_run crash point, once for the whole cluster). Every study still ends with
exactly one SR (and its heatmaps) in Orthanc, read back over REST, and the positive head CT is found."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from orthanc_api_client import OrthancApiClient
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_ai.crashpoints import CRASH_ENV, CRASH_ONCE_ENV
from dicom_ai.train.phantom_dicom import write_chest_cr_study, write_ct_volume_study
from tests.conftest import HttpReceiver, MllpListener, require_binary
from tests.e2e.conftest import RouterProcess, wait_for
from tests.e2e.orthanc_server import OrthancServer, storescu
from tests.e2e.test_backbone import SC_CLASS, SR_CLASS, by_class, study_instances

pytestmark = [pytest.mark.ray, pytest.mark.e2e]

OBJECT_STORE_BYTES = 100 * 1024 * 1024  # Ray's minimum is 75 MiB; the prepared inputs are a few MB
NODE_CPUS = 2  # an actor of each demo model the studies need (1 CPU each) fits on each node


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    from ray.cluster_utils import Cluster

    crashed = tmp_path_factory.mktemp("ray") / "actor-crashed"
    saved = {key: os.environ.get(key) for key in (CRASH_ENV, CRASH_ONCE_ENV, "RAY_ADDRESS")}
    os.environ.pop("RAY_ADDRESS", None)
    os.environ[CRASH_ENV] = "ray.actor_run"  # the raylets' workers inherit it: the actors see it
    os.environ[CRASH_ONCE_ENV] = str(crashed)
    running = Cluster(initialize_head=True, head_node_args={
        "num_cpus": NODE_CPUS, "object_store_memory": OBJECT_STORE_BYTES, "include_dashboard": False})
    try:
        running.add_node(num_cpus=NODE_CPUS, object_store_memory=OBJECT_STORE_BYTES)
        running.wait_for_nodes()
        for key, value in saved.items():  # only the cluster's processes crash
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        yield running.address, crashed
    finally:
        running.shutdown()


def test_studies_on_a_two_node_cluster_end_with_one_sr_each_though_an_actor_died(
        cluster: tuple[str, Path], tmp_path: Path) -> None:
    for tool in ("storescu", "Orthanc"):
        require_binary(tool)
    address, crashed = cluster
    from tests.conftest import free_port

    webhook, ris = HttpReceiver(failures=0), MllpListener()
    router_port = free_port()
    orthanc = OrthancServer(tmp_path / "orthanc", router_aet="DICOM_AI", router_port=router_port, stable_age=1)
    orthanc.start()
    router = None
    try:
        router = RouterProcess(tmp_path / "router", router_port, orthanc, webhook.url, ris.port,
                               DICOM_AI_EXECUTOR="ray", DICOM_AI_RAY_ADDRESS=address)
        studies: dict[str, tuple[str, int]] = {}  # study UID -> (kind, heatmaps)
        for seed, finding in ((2, True), (3, False)):
            files = write_ct_volume_study(tmp_path / f"ct{seed}", seed, finding, patient_id=f"RAY-CT-{seed}",
                                          study_instance_uid=generate_uid())
            studies[str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)] = ("ct", 3)
            storescu(files, orthanc.dicom_port)
        files = write_chest_cr_study(tmp_path / "cr", 105, True, patient_id="RAY-CR")
        studies[str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)] = ("cr", 1)
        storescu(files, orthanc.dicom_port)

        client = OrthancApiClient(orthanc.http_url)
        for study_uid, (kind, heatmaps) in studies.items():
            wait_for(f"the {kind} study's SR and {heatmaps} heatmap(s) in Orthanc",
                     lambda uid=study_uid, n=heatmaps: len(by_class(study_instances(client, uid), SC_CLASS)) >= n
                     and by_class(study_instances(client, uid), SR_CLASS), timeout=240, router=router)
        wait_for("the outbox to drain", lambda: "sent" in router.log(), timeout=30, router=router)
        for study_uid, (kind, heatmaps) in studies.items():
            found = study_instances(client, study_uid)
            assert len(by_class(found, SR_CLASS)) == 1, (kind, found)  # exactly one, though a pass was lost
            assert len(by_class(found, SC_CLASS)) == heatmaps, (kind, found)

        log = router.log()
        assert crashed.exists()  # an actor's worker process did die in a forward pass
        assert "lost its actor" in log
        nodes = set(re.findall(r"Ray: model ct-head-demo \S+ loaded by pid \d+ on node (\w+)", log))
        assert len(nodes) == 2, log[-4000:]  # one actor per model per Ray node
        assert f"joined the cluster at {address}" in log
        assert "Traceback" not in log, log[-4000:]
    finally:
        if router is not None:
            router.stop()
        orthanc.stop()
        webhook.stop()
        ris.close()
