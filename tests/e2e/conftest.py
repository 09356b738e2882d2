"""The running stack for end-to-end tests: a real Orthanc, the installed `dicom-ai serve`, a webhook
receiver and an MLLP listener, started once per session on free loopback ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from tests import conftest
from tests.conftest import HttpReceiver, MllpListener, free_port, require_binary
from tests.e2e.orthanc_server import OrthancServer

STABLE_AFTER = 1.0  # our quiet time; Orthanc's StableAge is 1 s in the test config


class RouterProcess:
    """`dicom-ai serve` as an admin would run it, configured through the environment.

    With one pipeline worker (DICOM_AI_WORKERS=1) unless a test passes its own: these tests do not test
    parallelism, and on a 2-core CI machine the default (a worker per core) would load every model twice
    at each start and split torch's threads between the workers, so each study would take longer.
    test_worker_crash.py runs two workers, as do tests/integration/test_workers.py and the crash tests
    (tests/integration: the default)."""

    def __init__(self, home: Path, port: int, orthanc: OrthancServer, webhook: str, mllp: int,
                 **settings: str) -> None:
        self.home = home
        self.port = port
        self.log_path = home / "dicom-ai.log"
        self.http_port = free_port()
        home.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "DICOM_AI_HOME": str(home),
            "DICOM_AI_HOST": "127.0.0.1",
            "DICOM_AI_PORT": str(port),
            "DICOM_AI_PACS": f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
            "DICOM_AI_ORTHANC_URL": orthanc.http_url,
            "DICOM_AI_STABLE_AFTER": str(STABLE_AFTER),
            "DICOM_AI_WEBHOOK_URL": webhook,
            "DICOM_AI_MWL_DIR": str(orthanc.worklist_dir),
            "DICOM_AI_HL7_MLLP": f"127.0.0.1:{mllp}",
            "DICOM_AI_HTTP_PORT": str(self.http_port),
            "DICOM_AI_WEBHOOK_LEVELS": "STAT,URGENT,ROUTINE",  # notify whatever the demo model says
            "DICOM_AI_WORKERS": "1",
            **settings,
        }
        cli = Path(sys.executable).parent / "dicom-ai"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen([str(cli), "serve"], env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180  # the workers load every model first (dicom_ai/procs/)
        while b"dicom-ai ready" not in self.log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dicom-ai serve did not start:\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def node_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OrthancServer, RouterProcess, HttpReceiver, MllpListener]]:
    for tool in ("storescu", "findscu", "dciodvfy", "dsrdump", "Orthanc"):
        require_binary(tool)
    root = tmp_path_factory.mktemp("e2e")
    webhook = HttpReceiver(failures=0)
    ris = MllpListener()
    router_port = free_port()
    orthanc = OrthancServer(root / "orthanc", router_aet="DICOM_AI", router_port=router_port, stable_age=1)
    orthanc.start()
    try:
        router = RouterProcess(root / "router", router_port, orthanc, webhook.url, ris.port)
    except Exception:
        orthanc.stop()
        webhook.stop()
        ris.close()
        raise
    yield orthanc, router, webhook, ris
    router.stop()
    orthanc.stop()
    webhook.stop()
    ris.close()
    assert "Traceback" not in router.log(), router.log()


def wait_for(what: str, check: Callable[[], Any], timeout: float, router: RouterProcess) -> Any:
    return conftest.wait_for(what, check, timeout, lambda: f"router log:\n{router.log()[-4000:]}")


def mwl_priority(orthanc: OrthancServer, study_uid: str, folder: Path) -> str | None:
    """Ask Orthanc's modality worklist with dcmtk's findscu, as a RIS would."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("rsp*.dcm"):
        old.unlink()
    done = subprocess.run(
        ["findscu", "-W", "-aet", "RIS", "-aec", orthanc.aet, "127.0.0.1", str(orthanc.dicom_port),
         "-k", f"StudyInstanceUID={study_uid}", "-k", "RequestedProcedurePriority", "-k", "AccessionNumber",
         "-X", "-od", str(folder)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"},
    )
    assert done.returncode == 0, done.stderr
    answers = [dcmread(p) for p in sorted(folder.glob("rsp*.dcm"))]
    return str(answers[0].RequestedProcedurePriority) if answers else None
