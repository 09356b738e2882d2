"""A child process running our SCP (and optionally the worklist page) with default limits, for tests
that measure the process from outside (peak memory, file descriptors) or must not share its threads.

    python tests/scp_child.py ROOT PORT [--http-port N [--stow-max-mb MB]] [--nofile N]

Prints "ready" once listening; logs go to stderr; stops when killed. `ScpChild` starts one from a test.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dicom_ai.domain import TurnaroundTargets  # noqa: E402
from dicom_ai.receive.scp import start_scp  # noqa: E402
from dicom_ai.store import Spool, Stores  # noqa: E402
from dicom_ai.web.app import start_web, web_context  # noqa: E402
from dicom_ai.web.stow import StowReceive  # noqa: E402


class ScpChild:
    """The child process seen from a test: its port, its memory, its log."""

    def __init__(self, root: Path, port: int, *extra: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.log_path = root / "child.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen([sys.executable, __file__, str(root), str(port), *extra],
                                        stdout=subprocess.PIPE, stderr=self._log, text=True, env=os.environ.copy())
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            raise AssertionError(f"the SCP child did not start: {self.log()}")

    def memory_mb(self, key: str = "VmHWM") -> float:
        """VmHWM: the peak resident memory so far; VmRSS: now."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"{key} not in /proc/{self.process.pid}/status")

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        self._log.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--nofile", type=int, default=0, help="lower RLIMIT_NOFILE to this")
    parser.add_argument("--stow-max-mb", type=float, default=0, help="also take STOW-RS uploads up to this size")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    if args.nofile:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
    store = Stores.open(args.root / "db.sqlite")
    spool = Spool(args.root / "spool")
    start_scp("DICOM_AI", "127.0.0.1", args.port, 131072, spool, store.studies)
    if args.http_port:
        stow = StowReceive(spool, store.studies, int(args.stow_max_mb * 1e6)) if args.stow_max_mb else None
        start_web("127.0.0.1", args.http_port, web_context(store.reports, TurnaroundTargets()), stow_receive=stow)
    print("ready", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()
