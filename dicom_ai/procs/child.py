"""One role of the node in its own process: `python -m dicom_ai.procs.child ROLE [NAME]`.

Started by the supervisor (supervisor.py) with the same environment (settings come from it, the TOML
file through DICOM_AI_CONFIG). It dies with the supervisor (PR_SET_PDEATHSIG: a killed supervisor leaves
no process holding the port or a study), says it is ready by writing to the pipe the supervisor gave
it, and stops cleanly on SIGINT/SIGTERM. Only the worker role imports the models (and torch).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Protocol

READY_FD_ENV = "DICOM_AI_READY_FD"  # the write end of the supervisor's pipe
GO_FD_ENV = "DICOM_AI_GO_FD"  # the read end of a pipe: wait for "go" on it before start()
PARENT_ENV = "DICOM_AI_SUPERVISOR_PID"
ROLES = ("receiver", "worker", "sender")
PR_SET_PDEATHSIG = 1

log = logging.getLogger("dicom_ai.procs")


class Role(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the supervisor ends, however it ends (Linux; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the supervisor was already gone before prctl
        os._exit(1)


def build(role: str, worker_id: str) -> Role:
    from dicom_ai.config import load_settings

    settings = load_settings()
    if role == "receiver":
        from dicom_ai.procs.receiver import Receiver

        return Receiver(settings, primary=worker_id in ("", "receiver-1"))
    if role == "sender":
        from dicom_ai.procs.sender import Sender

        return Sender(settings)
    from dicom_ai.procs.worker import Worker

    if settings.worker_nice:  # inference waits a little under load; a PACS forwarding to us must not
        os.nice(settings.worker_nice)
    return Worker(settings, worker_id, report_problems=worker_id.startswith("worker-1:"))


def _setup_logging(level: str, label: str) -> None:
    """As `dicom-ai serve` logs (cli.py), each line tagged with the role that wrote it."""
    from dicom_ai.errors import PeerErrorsOnOneLine

    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)-7s [{label}] %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(PeerErrorsOnOneLine())
    for noisy in ("pynetdicom", "urllib3", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)


def _tell(ready_fd: str | None, line: str) -> None:
    """Answer the supervisor's start-up pipe once: "ready" or "error: <one line>"."""
    if ready_fd:
        with os.fdopen(int(ready_fd), "wb") as ready:
            ready.write(line.encode() + b"\n")


def main(argv: list[str]) -> int:
    role, worker_id = argv[0], (argv[1] if len(argv) > 1 else "")
    if role not in ROLES:
        sys.stderr.write(f"unknown role {role!r}: one of {', '.join(ROLES)}\n")
        return 2
    if PARENT_ENV in os.environ:
        die_with_parent(int(os.environ[PARENT_ENV]))
    from dicom_ai.config import ConfigError, load_settings

    try:
        level = load_settings().log_level
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    label = worker_id.split(":")[0] if worker_id else role
    _setup_logging(level, label)
    stop = threading.Event()

    def _handler(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    ready_fd = os.environ.get(READY_FD_ENV)
    try:
        running = build(role, worker_id)
        # Ray's driver (executor ray: ray.init while building) puts its own SIGTERM handler in, which aborts
        # the process: ours again, so a stop finishes the current study and exits 0.
        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)
        go_fd = os.environ.get(GO_FD_ENV)
        if go_fd:  # built (imports done) while the others start; start only when the supervisor says so
            go = os.read(int(go_fd), 3)  # unbuffered: several receivers share the pipe, one "go\n" each
            os.close(int(go_fd))
            if go != b"go\n":
                return 1  # the supervisor gave up on starting
        running.start()
    except Exception as exc:  # the supervisor reports it (or, on a restart, this log line): no traceback
        if not ready_fd:
            log.error("%s could not start: %s", label, exc)
        _tell(ready_fd, f"error: {exc}".replace("\n", " "))
        return 1
    _tell(ready_fd, "ready")
    try:
        stop.wait()
    finally:
        running.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
