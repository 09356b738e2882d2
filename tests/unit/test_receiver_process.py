"""The receiving process (dicom_ai/procs/receiver.py, as the supervisor starts it) never loads torch and
stays small, with its web console on; so does the sender with its HL7 listener (both read model cards,
never a model). Each says it is ready through the supervisor's pipe and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.conftest import free_port

RSS_LIMIT_MB = 150
READY_TIMEOUT_S = 60
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"  # the demo models' cards: read, never loaded


def _start(role: str, tmp_path: Path, **settings: str) -> tuple[subprocess.Popen[bytes], int]:
    read_fd, write_fd = os.pipe()
    env = {**os.environ, "DICOM_AI_HOME": str(tmp_path), "DICOM_AI_HOST": "127.0.0.1", "DICOM_AI_PORT": str(free_port()),
           "DICOM_AI_MODELS_DIR": str(MODELS_DIR), "DICOM_AI_ROLE": role, "DICOM_AI_READY_FD": str(write_fd),
           **settings}
    process = subprocess.Popen([sys.executable, "-m", "dicom_ai.procs.child", role], env=env, pass_fds=(write_fd,),
                               stderr=subprocess.PIPE)
    os.close(write_fd)
    return process, read_fd


def _check_ready_small_and_stop(process: subprocess.Popen[bytes], read_fd: int, while_running: object) -> None:
    try:
        readable, _, _ = select.select([read_fd], [], [], READY_TIMEOUT_S)
        assert readable and os.read(read_fd, 100) == b"ready\n", process.stderr.read1().decode()  # type: ignore[union-attr]
        assert callable(while_running)
        while_running()
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        status = dict(line.split(":", 1) for line in Path(f"/proc/{process.pid}/status").read_text().splitlines())
        assert "libtorch" not in maps and "onnxruntime" not in maps
        # The peak (VmHWM), not only what is resident now: nothing at start may pass the limit for a moment
        # (the console's timing-safe dummy hash was a 64 MiB argon2 hash at start; now a constant).
        assert int(status["VmHWM"].split()[0]) / 1024 < RSS_LIMIT_MB, status["VmHWM"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        os.close(read_fd)
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_receiver_process_is_torch_free_and_small_with_its_console(tmp_path: Path) -> None:
    assert (MODELS_DIR / "chest-xray-demo" / "model.yaml").is_file()
    http_port = free_port()
    process, read_fd = _start("receiver", tmp_path, DICOM_AI_HTTP_PORT=str(http_port))

    def console_answers() -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=10) as answer:
            assert answer.read() == b"ok\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as answer:
            assert b"dicom_ai_" in answer.read()

    _check_ready_small_and_stop(process, read_fd, console_answers)


def test_the_sender_process_is_torch_free_and_small_with_its_hl7_listener(tmp_path: Path) -> None:
    hl7_port = free_port()
    process, read_fd = _start("sender", tmp_path, DICOM_AI_HL7_LISTEN=f"127.0.0.1:{hl7_port}")

    def listener_accepts() -> None:
        socket.create_connection(("127.0.0.1", hl7_port), timeout=10).close()

    _check_ready_small_and_stop(process, read_fd, listener_accepts)
