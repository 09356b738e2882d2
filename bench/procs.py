"""The receivers under test and the sender, as child processes that are always cleaned up.

Every receiver is started fresh for each measurement so its peak RSS (VmHWM) belongs to that
measurement alone. Processes are registered in a module-level set and killed on exit, also on Ctrl-C.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pydicom import dcmread

from dicom_ai.demo.orthanc import OrthancServer, free_port
from dicom_ai.procs.supervisor import role_pids

log = logging.getLogger(__name__)

READY_TIMEOUT = 180.0  # seconds a receiver gets to listen
STOP_TIMEOUT = 30.0
_CHILDREN: set[subprocess.Popen[bytes]] = set()


class BenchError(RuntimeError):
    """A benchmark step failed; the message names the process and carries its log tail."""


def _kill_children() -> None:
    for process in list(_CHILDREN):
        if process.poll() is None:
            process.kill()
            process.wait()
        _CHILDREN.discard(process)


atexit.register(_kill_children)


def spawn(command: Sequence[str], env: dict[str, str], log_path: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a child whose output goes to `log_path`; it is killed at exit if still running."""
    with open(log_path, "ab") as sink:
        process = subprocess.Popen(list(command), env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=cwd)
    _CHILDREN.add(process)
    return process


def terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _CHILDREN.discard(process)


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a live process in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def dcmtk_env(nodelay: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str, log_path: Path) -> None:
    """Poll until something accepts TCP on 127.0.0.1:port."""
    import socket

    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{what} exited with {process.returncode}:\n{_tail(log_path)}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"{what} did not listen on port {port} in {READY_TIMEOUT:.0f} s:\n{_tail(log_path)}")


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


class Receiver:
    """A running receiver: its called AE title, port, main pid, and a count of what it stored."""

    name = "?"
    ae = "ANY"

    def __init__(self, workdir: Path, nodelay: bool, fork: bool = False) -> None:
        self.workdir = workdir
        self.nodelay = nodelay
        self.fork = fork
        self.port = 0
        self.pid = 0

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def stored(self) -> int:
        raise NotImplementedError

    def send(self, batches: Sequence[Sequence[Path]], nodelay: bool) -> float:
        """Send every batch at once (one storescu association each); the wall seconds it took."""
        return send(batches, self.port, self.ae, nodelay)


class OursReceiver(Receiver):
    """The real `dicom-ai serve` (durable: fsync + SQLite before Success); no study ever completes during a run."""

    name = "dicom-ai"
    ae = "DICOM_AI"

    def settings(self) -> dict[str, str]:
        return {}

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.workdir / "serve.log"
        env = {
            **os.environ,
            "DICOM_AI_HOME": str(self.workdir / "home"),
            "DICOM_AI_HOST": "127.0.0.1",
            "DICOM_AI_PORT": str(self.port),
            "DICOM_AI_STABLE_AFTER": "86400",
            "DICOM_AI_LOG_LEVEL": "INFO",
            **self.settings(),
        }
        cli = Path(sys.executable).parent / "dicom-ai"
        # A node started again on the same folder appends to the same log: only this start's lines count.
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process = spawn([str(cli), "serve"], env, self.log_path)
        self.pid = self.process.pid
        deadline = time.monotonic() + READY_TIMEOUT
        while b"dicom-ai ready" not in self.log_path.read_bytes()[offset:]:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"dicom-ai serve did not start:\n{_tail(self.log_path)}")
            time.sleep(0.05)
        # With workers (the default) the SCP runs in the receiver process: its RSS is the one to report.
        self.pid = role_pids(self.process.pid).get("receiver", [self.process.pid])[0]

    def stop(self) -> None:
        terminate(self.process)

    def stored(self) -> int:
        return sum(1 for _ in (self.workdir / "home" / "spool" / "studies").rglob("*.dcm"))


class OursOneProcessReceiver(OursReceiver):
    """The same node as one process (`workers = 0`, the design before dicom_ai/procs/): the SCP shares its
    interpreter with the models; beside the default to show what the process split changes."""

    name = "dicom-ai one process"

    def settings(self) -> dict[str, str]:
        return {"DICOM_AI_WORKERS": "0"}


class OursTwoReceivers(OursReceiver):
    """The same node with `receivers = 2`: two SCP processes on the port (SO_REUSEPORT), for concurrent
    associations. Its reported RSS is the first receiver's."""

    name = "dicom-ai receivers=2"

    def settings(self) -> dict[str, str]:
        return {"DICOM_AI_RECEIVERS": "2"}


class OursStowReceiver(OursReceiver):
    """The same `dicom-ai serve`, taking the same files by DICOMweb STOW-RS instead (stow_receive): same
    durability (each part fsynced, renamed, committed before the answer). The sender is curl, C like
    storescu: one process per batch, one request per study of the batch over one kept-alive connection,
    each request body a multipart/related file written beforehand (not timed) and streamed by curl."""

    name = "dicom-ai STOW-RS"

    def settings(self) -> dict[str, str]:
        self.http_port = free_port()
        return {"DICOM_AI_STOW_RECEIVE": "true", "DICOM_AI_HTTP_PORT": str(self.http_port)}

    def send(self, batches: Sequence[Sequence[Path]], nodelay: bool) -> float:
        commands = [self._curl_command(n, batch) for n, batch in enumerate(batches)]
        os.sync()  # the bodies just written must not be flushed to disk during the measurement
        return send_with(commands, f"curl (STOW-RS) to 127.0.0.1:{self.http_port}", self._check_answers)

    def _curl_command(self, number: int, batch: Sequence[Path]) -> list[str]:
        by_study: dict[str, list[Path]] = {}
        for path in batch:
            by_study.setdefault(str(dcmread(path, stop_before_pixels=True).StudyInstanceUID), []).append(path)
        command = ["curl", "-sS"]
        for study, paths in by_study.items():
            body = self.workdir / f"stow-{number}-{study}.body"
            write_multipart(body, paths)
            if len(command) > 2:
                command.append("--next")
            command += ["-o", "/dev/null", "-w", "%{http_code}\\n", "-X", "POST", "-H", f"Content-Type: {STOW_CONTENT_TYPE}",
                        "-H", "Expect:", "-T", str(body), f"http://127.0.0.1:{self.http_port}/dicom-web/studies"]
        return command

    @staticmethod
    def _check_answers(stdout: str) -> str | None:
        codes = stdout.split()
        return None if codes and all(code == "200" for code in codes) else f"HTTP status(es) {codes}, expected all 200"


STOW_BOUNDARY = "dicom-ai-bench-boundary"
STOW_CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={STOW_BOUNDARY}'


def write_multipart(body: Path, files: Sequence[Path]) -> None:
    """A STOW-RS request body: each file as an application/dicom part."""
    with open(body, "wb") as out:
        for path in files:
            out.write(f"--{STOW_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            with open(path, "rb") as part:
                shutil.copyfileobj(part, out, 1 << 20)
            out.write(b"\r\n")
        out.write(f"--{STOW_BOUNDARY}--\r\n".encode())


class StorescpReceiver(Receiver):
    """dcmtk's storescp writing to a folder (no fsync); --fork for concurrent associations."""

    name = "storescp"
    ae = "STORESCP"

    def start(self) -> None:
        self.out = self.workdir / "out"
        self.out.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.workdir / "storescp.log"
        command = ["storescp", *(["--fork"] if self.fork else []), "-aet", self.ae, "-od", str(self.out), str(self.port)]
        self.process = spawn(command, dcmtk_env(self.nodelay), self.log_path)
        self.pid = self.process.pid
        wait_listening(self.port, self.process, "storescp", self.log_path)

    def stop(self) -> None:
        terminate(self.process)

    def stored(self) -> int:
        return sum(1 for _ in self.out.iterdir())


class OrthancReceiver(Receiver):
    """Orthanc from orthanc/orthanc.json (dicom_ai/demo/orthanc.py), forwarding disabled by a huge StableAge."""

    name = "Orthanc"
    ae = "ORTHANC"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.server = OrthancServer(self.workdir, router_aet="NOBODY", router_port=free_port(), stable_age=86400,
                                    environment=dcmtk_env(self.nodelay))
        self.server.start()
        assert self.server.process is not None
        _CHILDREN.add(self.server.process)
        self.pid = self.server.process.pid
        self.port = self.server.dicom_port
        self.ae = self.server.aet

    def stop(self) -> None:
        if self.server.process is not None:
            _CHILDREN.discard(self.server.process)
        self.server.stop()

    def stored(self) -> int:
        return int(self.server.get_json("/statistics")["CountInstances"])


class AckOnlyReceiver(Receiver):
    """pynetdicom with the node's knobs, answering Success and storing nothing (bench/ack_only_scp.py): the
    ceiling of any pynetdicom SCP, to tell the transport's cost from the node's own (durability, database)."""

    name = "pynetdicom ack-only"
    ae = "ACKONLY"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.workdir / "ack_only.log"
        self.count_file = self.workdir / "answered"
        self.process = spawn([sys.executable, "-m", "bench.ack_only_scp", str(self.port), str(self.count_file)],
                             dict(os.environ), self.log_path, cwd=Path(__file__).resolve().parent.parent)
        self.pid = self.process.pid
        wait_listening(self.port, self.process, "the ack-only pynetdicom SCP", self.log_path)

    def stop(self) -> None:
        terminate(self.process)

    def stored(self) -> int:
        self.stop()  # the count is written on SIGTERM
        return int(self.count_file.read_text()) if self.count_file.exists() else 0


RECEIVERS: dict[str, type[Receiver]] = {c.name: c for c in (OursReceiver, OursOneProcessReceiver, OursTwoReceivers,
                                                              OursStowReceiver,
                                                              StorescpReceiver, OrthancReceiver, AckOnlyReceiver)}


@contextlib.contextmanager
def running(receiver: Receiver) -> Iterator[Receiver]:
    """Start the receiver, yield it, stop it and delete its folder."""
    try:
        receiver.start()
        yield receiver
    finally:
        with contextlib.suppress(Exception):
            receiver.stop()
        shutil.rmtree(receiver.workdir, ignore_errors=True)


def storescu_command(files: Sequence[Path], port: int, called: str) -> list[str]:
    return ["storescu", "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port), *map(str, files)]


def send(batches: Sequence[Sequence[Path]], port: int, called: str, nodelay: bool, timeout: float = 600) -> float:
    """Run one storescu per batch, all at once; the wall seconds until the last exits. Raises on any failure."""

    def errors_of(stderr: str) -> str | None:
        bad = [line for line in stderr.splitlines() if line.startswith(("E:", "F:"))]
        return "\n".join(bad) if bad else None

    return send_with([storescu_command(b, port, called) for b in batches], f"storescu to {called}@127.0.0.1:{port}",
                     lambda _stdout: None, errors_of, dcmtk_env(nodelay), timeout)


def send_with(commands: Sequence[Sequence[str]], what: str, check_stdout: Callable[[str], str | None],
              check_stderr: Callable[[str], str | None] = lambda _stderr: None, env: dict[str, str] | None = None,
              timeout: float = 600) -> float:
    """Run the sender commands all at once; the wall seconds until the last exits. Raises on any failure."""
    started = time.perf_counter()
    processes = [subprocess.Popen(list(c), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in commands]
    for p in processes:
        _CHILDREN.add(p)  # type: ignore[arg-type]
    errors: list[str] = []
    try:
        for p in processes:
            stdout, stderr = p.communicate(timeout=timeout)
            bad = check_stderr(stderr) or check_stdout(stdout)
            if p.returncode != 0 or bad:
                errors.append(f"exit {p.returncode}: " + (bad or "\n".join(stderr.splitlines()[-5:])))
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
            _CHILDREN.discard(p)
    elapsed = time.perf_counter() - started
    if errors:
        raise BenchError(f"{what} failed:\n" + "\n".join(errors)[:3000])
    return elapsed
