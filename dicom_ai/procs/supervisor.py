"""`dicom-ai serve` with workers: recovery at start, then the role processes, kept running until a signal.

A role process that dies is started again (after RESTART_MIN_S, doubling while it keeps dying young,
at most RESTART_MAX_S); a dead worker's studies (studies.claimed_by) first go back to the queue, so
another worker processes them once more, with the same result UIDs. SIGINT/SIGTERM stop every role
(each finishes what it is doing: the SCP its associations' current instance, a worker its study) and
then the supervisor; a role that does not stop within STOP_TIMEOUT_S is killed (its studies are
recovered at the next start, as after a crash).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from dicom_ai.config import Settings
from dicom_ai.crashpoints import ROLE_ENV
from dicom_ai.procs.child import GO_FD_ENV, PARENT_ENV, READY_FD_ENV
from dicom_ai.store import Spool, Stores
from dicom_ai.store.recovery import recover_after_stop

log = logging.getLogger("dicom_ai.procs")

START_TIMEOUT_S = 600.0  # a role gets this long to be ready (workers load every model first)
STOP_TIMEOUT_S = 30.0
CHECK_S = 0.2  # seconds between two looks at the role processes
RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0
RAY_ADDRESS_ENV = "RAY_ADDRESS"  # where the workers' Ray executors join (ray_address, else this)
YOUNG_S = 10.0  # a role that dies sooner than this after its start waits longer before the next


class StartError(RuntimeError):
    """A role process could not start; the message is its own one-line reason."""


@dataclass
class Slot:
    """One role process the supervisor keeps running (a worker slot keeps its number across restarts)."""

    role: str
    name: str  # receiver | sender | worker-N
    process: subprocess.Popen[bytes] | None = None
    claimant: str = ""  # worker-N:<boot token>, new at each start
    started_at: float = 0.0
    restart_at: float | None = None
    delay: float = RESTART_MIN_S
    ready_fd: int | None = field(default=None, repr=False)


class Supervisor:
    """Starts the receiver, `settings.workers` workers and the sender; restarts what dies."""

    def __init__(self, settings: Settings, config: Path | None = None) -> None:
        if settings.workers < 1:
            raise ValueError("the supervisor needs workers >= 1 (workers = 0 runs dicom_ai.node.Node)")
        self.settings = settings
        self.config = config
        self.stores = Stores.open(settings.database_path)  # migrations run here, once, before any role opens it
        self.spool = Spool(settings.spool_dir)
        receivers = [Slot("receiver", "receiver")] if settings.receivers == 1 else \
            [Slot("receiver", f"receiver-{n}") for n in range(1, settings.receivers + 1)]
        self.slots = [*receivers, *(Slot("worker", f"worker-{n}") for n in range(1, settings.workers + 1)),
                      Slot("sender", "sender")]
        self._stopping = threading.Event()
        self._ray_started = False

    # start ----------------------------------------------------------------------------------------

    def recover(self) -> None:
        """What a crash (of the whole node) left: partial uploads, purges half done, replaced copies, studies
        in processing. Here, before any receiver runs: a receiver started again later must not remove the
        uploads the others are writing."""
        recover_after_stop(self.stores, self.spool)

    def start(self) -> None:
        """Recover, start every role and wait until each is ready; raises StartError (all stopped) if one is not."""
        self.recover()
        s = self.settings
        if s.executor == "ray" and not s.ray_address and not os.environ.get(RAY_ADDRESS_ENV):
            self._start_shared_ray()
        if s.pacs is None and s.stow_url is None:
            log.warning("no PACS (DICOM_AI_PACS) nor DICOMweb server (DICOM_AI_STOW_URL) configured: results are "
                        "kept in %s but not sent", self.spool.results)
        # The receiver starts listening last (its imports overlap the workers' model loading): once it
        # listens, studies complete and their quiet clocks run, as they did in one process.
        receivers = [slot for slot in self.slots if slot.role == "receiver"]
        others = [slot for slot in self.slots if slot.role != "receiver"]
        go_read, go_write = os.pipe()
        try:
            for slot in others:
                self._launch(slot, wait_ready=True)
            for slot in receivers:
                self._launch(slot, wait_ready=True, go_fd=go_read)
            os.close(go_read)
            go_read = -1
            self._wait_ready(others)
            os.write(go_write, b"go\n" * len(receivers))
            self._wait_ready(receivers)
        except BaseException:
            os.close(go_write)  # a receiver still waiting for "go" reads the end and exits
            go_write = -1
            self.stop()
            raise
        finally:
            for fd in (go_read, go_write):
                if fd >= 0:
                    os.close(fd)
        log.info(
            "dicom-ai ready: AE %s on %s:%d, %d worker process(es), stable after %.1f s, results to %s (processes: %s)",
            s.ae, s.host, s.port, s.workers, s.stable_after,
            " and ".join(str(to) for to in (s.pacs, s.stow_url) if to) or "nowhere",
            ", ".join(f"{slot.name} {slot.process.pid}" for slot in self.slots if slot.process),
        )

    def _start_shared_ray(self) -> None:
        """executor ray with no cluster named: one local Ray, started here, that every worker joins (through
        RAY_ADDRESS in their environment); each worker starting its own would split the machine between
        several Rays. It stops with the supervisor."""
        from dicom_ai.infer.executor import ExecutorError, start_local_ray

        try:
            os.environ[RAY_ADDRESS_ENV] = start_local_ray()
        except ExecutorError as exc:
            raise StartError(str(exc)) from None
        self._ray_started = True
        if threading.current_thread() is threading.main_thread():  # Ray's driver put its own (aborting) ones in
            self._install_signal_handlers()

    def _launch(self, slot: Slot, wait_ready: bool, go_fd: int | None = None) -> None:
        slot.claimant = f"{slot.name}:{uuid.uuid4().hex[:12]}" if slot.role == "worker" else ""
        env = {**os.environ, ROLE_ENV: slot.role, PARENT_ENV: str(os.getpid())}
        if self.config is not None:
            env["DICOM_AI_CONFIG"] = str(self.config)
        pass_fds: tuple[int, ...] = ()
        write_fd = None
        if wait_ready:
            slot.ready_fd, write_fd = os.pipe()
            env[READY_FD_ENV] = str(write_fd)
            pass_fds = (write_fd,)
        else:
            env.pop(READY_FD_ENV, None)
        env.pop(GO_FD_ENV, None)
        if go_fd is not None:
            env[GO_FD_ENV] = str(go_fd)
            pass_fds += (go_fd,)
        name = slot.claimant or (slot.name if slot.name != slot.role else "")
        command = [sys.executable, "-m", "dicom_ai.procs.child", slot.role, *([name] if name else [])]
        try:
            slot.process = subprocess.Popen(command, env=env, pass_fds=pass_fds)
        finally:
            if write_fd is not None:
                os.close(write_fd)
        slot.started_at = time.monotonic()
        slot.restart_at = None

    def _wait_ready(self, slots: list[Slot]) -> None:
        pending = {slot.ready_fd: slot for slot in slots if slot.ready_fd is not None}
        answers: dict[int, bytes] = {fd: b"" for fd in pending}
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while pending:
                if self._stopping.is_set():
                    raise StartError("stopped while starting")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StartError(f"{', '.join(s.name for s in pending.values())} not ready in {START_TIMEOUT_S:.0f} s")
                readable, _, _ = select.select(list(pending), [], [], min(left, CHECK_S))
                for fd in readable:
                    chunk = os.read(fd, 4096)
                    answers[fd] += chunk
                    if chunk and not answers[fd].endswith(b"\n"):
                        continue
                    slot = pending.pop(fd)
                    os.close(fd)
                    slot.ready_fd = None
                    answer = answers[fd].decode(errors="replace").strip()
                    if answer != "ready":
                        assert slot.process is not None
                        code = slot.process.wait()
                        raise StartError(answer.removeprefix("error: ") if answer.startswith("error: ")
                                         else f"the {slot.name} process exited at start (exit code {code})")
        finally:
            for fd in pending:
                os.close(fd)
            for slot in pending.values():
                slot.ready_fd = None

    # run ------------------------------------------------------------------------------------------

    def run_until_signalled(self) -> None:
        """Serve until SIGINT/SIGTERM; an acknowledged instance is already durable, so stopping is safe."""

        self._install_signal_handlers()
        self.start()
        try:
            while not self._stopping.wait(CHECK_S):
                self.check()
        finally:
            self.stop()

    def _install_signal_handlers(self) -> None:
        def _handler(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name)
            self._stopping.set()

        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)

    def check(self) -> None:
        """Notice dead roles (give a dead worker's studies back) and start those whose wait is over."""
        now = time.monotonic()
        for slot in self.slots:
            process = slot.process
            if process is not None and process.poll() is not None:
                slot.process = None
                young = now - slot.started_at < YOUNG_S
                slot.delay = min(slot.delay * 2, RESTART_MAX_S) if young else RESTART_MIN_S
                slot.restart_at = now + slot.delay
                log.error("the %s process (pid %d) died (%s); starting another in %.0f s", slot.name, process.pid,
                          _how(process.returncode), slot.delay)
                if slot.role == "worker":
                    self._release(slot.claimant)
            if slot.process is None and slot.restart_at is not None and now >= slot.restart_at \
                    and not self._stopping.is_set():
                self._launch(slot, wait_ready=False)
                assert slot.process is not None
                log.info("started the %s process again (pid %d)", slot.name, slot.process.pid)

    def _release(self, claimant: str) -> None:
        try:
            released = self.stores.studies.release_claims(claimant)
        except Exception as exc:  # the database is busy or failing: the next start recovers them
            log.error("could not give the studies of %s back to the queue: %s", claimant, exc)
            return
        if released:
            log.warning("study(ies) %s go back to the queue (their worker died)", ", ".join(released))

    # stop -----------------------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM every role, wait for each (STOP_TIMEOUT_S), kill what remains; then close the database."""
        self._stopping.set()
        running = [slot for slot in self.slots if slot.process is not None and slot.process.poll() is None]
        for slot in running:
            slot.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for slot in running:
            assert slot.process is not None
            try:
                slot.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("the %s process did not stop within %.0f s: killed", slot.name, STOP_TIMEOUT_S)
                slot.process.kill()
                slot.process.wait()
        for slot in self.slots:
            if slot.role == "worker" and slot.claimant:
                self._release(slot.claimant)
        if self._ray_started:
            import ray

            ray.shutdown()
            os.environ.pop(RAY_ADDRESS_ENV, None)
            self._ray_started = False
        self.stores.close()
        log.info("dicom-ai stopped")


def _how(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def role_pids(supervisor_pid: int) -> dict[str, list[int]]:
    """The role processes of a running `dicom-ai serve`, by role (from /proc: for benchmarks, tests, admins)."""
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != supervisor_pid:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if b"dicom_ai.procs.child" in argv:
            role = argv[argv.index(b"dicom_ai.procs.child") + 1].decode()
            found.setdefault(role, []).append(int(entry.name))
    return found
