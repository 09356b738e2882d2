"""The receiving process (dicom_ai/procs/receiver.py, as the supervisor starts it) never loads torch and
stays small; it says it is ready through the supervisor's pipe and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port

RSS_LIMIT_MB = 150
READY_TIMEOUT_S = 60


def test_the_receiver_process_is_torch_free_and_small(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    env = {**os.environ, "DICOM_AI_HOME": str(tmp_path), "DICOM_AI_HOST": "127.0.0.1", "DICOM_AI_PORT": str(free_port()),
           "DICOM_AI_HTTP_PORT": "0", "DICOM_AI_ROLE": "receiver", "DICOM_AI_READY_FD": str(write_fd)}
    process = subprocess.Popen([sys.executable, "-m", "dicom_ai.procs.child", "receiver"], env=env, pass_fds=(write_fd,),
                               stderr=subprocess.PIPE)
    os.close(write_fd)
    try:
        readable, _, _ = select.select([read_fd], [], [], READY_TIMEOUT_S)
        assert readable and os.read(read_fd, 100) == b"ready\n", process.stderr.read1().decode()  # type: ignore[union-attr]
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        status = dict(line.split(":", 1) for line in Path(f"/proc/{process.pid}/status").read_text().splitlines())
        assert "libtorch" not in maps and "onnxruntime" not in maps
        assert int(status["VmHWM"].split()[0]) / 1024 < RSS_LIMIT_MB
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        os.close(read_fd)
        if process.poll() is None:
            process.kill()
            process.wait()
