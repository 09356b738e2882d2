"""`dicom-ai serve` as a process beside a counting PACS, for tests that kill it at awkward moments.

The PACS is a second real DICOM SCP (our own receiver with its own database), so every C-STORE the
node makes is counted: a repeated SOP Instance UID shows as a receive count above one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dicom_ai.receive.scp import start_scp
from dicom_ai.store import Spool, Stores
from tests.conftest import free_port, wait_for

CLI = Path(sys.executable).parent / "dicom-ai"


class Pacs:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.store = Stores.open(root / "pacs.sqlite")
        self.server = start_scp("PACS", "127.0.0.1", self.port, 0, Spool(root / "spool"), self.store.studies)

    def received(self, study_uid: str) -> dict[str, int]:
        """SOP Instance UID -> how many times the node sent it."""
        return self.store.reports.receive_counts(study_uid)

    def stop(self) -> None:
        self.server.shutdown()
        self.store.close()


class NodeProcess:
    """One node home, started and killed as often as a test likes; the log accumulates."""

    def __init__(self, home: Path, pacs: Pacs, stable_after: float, **settings: str) -> None:
        self.home = home
        self.port = free_port()
        self.log_path = home / "node.log"
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "DICOM_AI_HOME": str(home), "DICOM_AI_HOST": "127.0.0.1",
                    "DICOM_AI_PORT": str(self.port), "DICOM_AI_PACS": f"PACS@127.0.0.1:{pacs.port}",
                    "DICOM_AI_STABLE_AFTER": str(stable_after), "DICOM_AI_HTTP_PORT": "0",
                    "DICOM_AI_SEND_RETRY_INITIAL": "1", "DICOM_AI_SEND_RETRY_MAX": "2", **settings}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, crash_at: str | None = None) -> NodeProcess:
        env = {**self.env, **({"DICOM_AI_TEST_CRASH_AT": crash_at} if crash_at else {})}
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([str(CLI), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the node exited at start:\n{self.log()[-3000:]}")
            return b"dicom-ai ready" in self.log_path.read_bytes()[offset:]

        wait_for("the node to start", ready, 180, lambda: self.log()[-3000:])
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def store(self) -> Stores:
        return Stores.open(self.home / "dicom-ai.sqlite")

    def wait_until(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        return wait_for(what, check, timeout, lambda: self.log()[-4000:])


def storescu(port: int, files: Sequence[Path], timeout: float = 60) -> bool:
    """dcmtk's storescu, as a modality or PACS sends; True when every file was acknowledged with Success."""
    done = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "DICOM_AI", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TCP_NODELAY": "1"})
    return done.returncode == 0 and not any(line.startswith(("E:", "F:")) for line in done.stderr.splitlines())


def settled(node: NodeProcess, study_uids: Sequence[str]) -> bool:
    """Every study done and nothing left to send."""
    store = node.store()
    try:
        for uid in study_uids:
            row = store.reports.study(uid)
            if row is None or row.state != "done" or row.pending_sends:
                return False
        return True
    finally:
        store.close()


def done_events(store: Stores, study_uid: str) -> int:
    return sum(1 for event in store.reports.events(study_uid, limit=1000) if event["kind"] == "study_done")


def current_result_uids(store: Stores, study_uid: str) -> set[str]:
    rows = store.database.query("select sop_instance_uid from results where study_instance_uid = ? and superseded_by is null",
                        [study_uid])
    return {row["sop_instance_uid"] for row in rows}
