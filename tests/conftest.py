"""Fixtures shared by every test folder: real sample images, free loopback ports, a settings factory."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_ai.config import Settings

REPO = Path(__file__).resolve().parent.parent


def sample(name: str) -> Path:
    """A real DICOM file shipped by pydicom or pydicom-data (never downloaded)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (pip install pydicom-data)")
    return Path(path)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float, context: Callable[[], str] = str,
             poll: float = 0.1) -> Any:
    """Poll `check` until it returns something truthy; on time-out fail with `context()` (e.g. a log tail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{context()}")


def require_binary(name: str) -> str:
    """A real tool (dcmtk, dicom3tools, Orthanc): CI installs them, so missing there is a failure."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed but CI must have it (see .ci/run)")
        pytest.skip(f"{name} is not installed")
    return path


def copy_as_new_study(source: Path, target_dir: Path, **overrides: str) -> Path:
    """A real image re-identified with fresh UIDs, so tests never collide in one Orthanc or database."""
    dataset: Dataset = dcmread(source)
    dataset.StudyInstanceUID = overrides.pop("StudyInstanceUID", generate_uid())
    dataset.SeriesInstanceUID = overrides.pop("SeriesInstanceUID", generate_uid())
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    for keyword, value in overrides.items():
        setattr(dataset, keyword, value)
    target_dir.mkdir(parents=True, exist_ok=True)
    path = target_dir / f"{dataset.SOPInstanceUID}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def factory(**values: object) -> Settings:
        base: dict[str, object] = {"home": tmp_path / "home", "port": free_port(), "stable_after": 0.5}
        base.update(values)
        return Settings(**base)  # type: ignore[arg-type]

    return factory


class HttpReceiver:
    """A real HTTP server that refuses the first `failures` requests with 503."""

    def __init__(self, failures: int) -> None:
        self.bodies: list[dict[str, object]] = []
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if receiver.failures > 0:
                    receiver.failures -= 1
                    self.send_response(503)
                else:
                    receiver.bodies.append(body)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


MLLP_START, MLLP_END = b"\x0b", b"\x1c\x0d"


class MllpListener:
    """A minimal MLLP server: frames messages, answers AE to the first `rejections`, then AA."""

    def __init__(self, rejections: int = 0) -> None:
        self.messages: list[str] = []
        self.rejections = rejections
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buffer = b""
                while MLLP_END not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buffer += chunk
                text = buffer.strip(MLLP_START + MLLP_END).decode()
                control_id = text.split("\r")[0].split("|")[9]
                code = "AE" if self.rejections > 0 else "AA"
                if self.rejections > 0:
                    self.rejections -= 1
                else:
                    self.messages.append(text)
                ack = f"MSH|^~\\&|RIS||DICOM_AI||20261128000000||ACK^R01|A{control_id}|P|2.5\rMSA|{code}|{control_id}\r"
                conn.sendall(MLLP_START + ack.encode() + MLLP_END)

    def close(self) -> None:
        self.sock.close()
