"""A pipeline worker killed (kill -9) in the middle of a study, with the real Orthanc forwarding to the
node: the supervisor starts another worker, the study is processed again, and Orthanc holds exactly one
SR per study (the same result UIDs, sent once)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from orthanc_api_client import OrthancApiClient
from pydicom import dcmread

from dicom_ai.procs.supervisor import role_pids
from dicom_ai.store import Stores
from dicom_ai.train.phantom_dicom import write_brain_mr_study
from tests import conftest
from tests.conftest import HttpReceiver, MllpListener, free_port, require_binary
from tests.e2e.conftest import RouterProcess, wait_for
from tests.e2e.orthanc_server import OrthancServer, storescu
from tests.e2e.test_backbone import SR_CLASS, by_class, study_instances

pytestmark = pytest.mark.e2e

STUDIES = 3


def test_a_worker_killed_mid_study_leaves_one_sr_per_study_in_orthanc(tmp_path: Path) -> None:
    for tool in ("storescu", "Orthanc"):
        require_binary(tool)
    webhook, ris = HttpReceiver(failures=0), MllpListener()
    router_port = free_port()
    orthanc = OrthancServer(tmp_path / "orthanc", router_aet="DICOM_AI", router_port=router_port, stable_age=1)
    orthanc.start()
    router: RouterProcess | None = None
    try:
        router = RouterProcess(tmp_path / "router", router_port, orthanc, webhook.url, ris.port, DICOM_AI_WORKERS="2")
        client = OrthancApiClient(orthanc.http_url)
        studies = [write_brain_mr_study(tmp_path / f"s{n}", seed=40 + n, finding=True, slices=3, size=(96, 96))
                   for n in range(STUDIES)]
        uids = [str(dcmread(files[0]).StudyInstanceUID) for files in studies]
        for files in studies:
            storescu(files, orthanc.dicom_port)
        store = Stores.open(router.home / "dicom-ai.sqlite")
        try:
            def held() -> tuple[str, str] | None:
                rows = store.database.query("select study_instance_uid, claimed_by from studies where state = 'processing'")
                return (rows[0]["study_instance_uid"], rows[0]["claimed_by"]) if rows else None

            # Caught mid-study: freeze the workers the moment one holds a study, then kill that one.
            study, claimant = conftest.wait_for("a study in processing", held, 180, router.log, poll=0.002)
            workers = role_pids(router.process.pid)["worker"]
            for pid in workers:
                os.kill(pid, signal.SIGSTOP)
            assert (study, claimant) in {(r["study_instance_uid"], r["claimed_by"]) for r in store.database.query(
                "select study_instance_uid, claimed_by from studies where state = 'processing'")}, \
                "the worker finished before it was frozen"
            victim = next(pid for pid in workers if claimant.encode() in Path(f"/proc/{pid}/cmdline").read_bytes())
            os.kill(victim, signal.SIGKILL)
            for pid in workers:
                if pid != victim:
                    os.kill(pid, signal.SIGCONT)

            for uid in uids:
                wait_for(f"the SR of {uid} in Orthanc", lambda uid=uid: by_class(study_instances(client, uid), SR_CLASS),
                         timeout=240, router=router)
            time.sleep(4)  # whatever a second run would send has been sent by now
            for uid in uids:
                srs = by_class(study_instances(client, uid), SR_CLASS)
                assert len(srs) == 1, (uid, srs)
            released = [e for e in store.reports.events(study, limit=100) if e["kind"] == "study_released"]
            assert len(released) == 1 and claimant in released[0]["detail"]
            done = [e for e in store.reports.events(study, limit=100) if e["kind"] == "study_done"]
            assert len(done) == 1
        finally:
            store.close()
        log = router.log()
        assert "died (signal SIGKILL)" in log and "started the worker" in log
    finally:
        if router is not None:
            router.stop()
        orthanc.stop()
        webhook.stop()
        ris.close()
    assert "Traceback" not in router.log()
