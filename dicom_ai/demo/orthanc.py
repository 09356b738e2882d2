"""A real Orthanc (Debian's /usr/sbin/Orthanc) run from orthanc/orthanc.json, for `dicom-ai demo` and the tests.

The same configuration and forwarding plugin an admin runs, with free loopback ports, storage under a
folder of the caller's and the router modality pointed at the node it should forward to.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any


log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]  # the checkout: orthanc/ sits beside dicom_ai/
CONFIG_PATH = REPO / "orthanc" / "orthanc.json"
ORTHANC_BINARY = "/usr/sbin/Orthanc"
START_TIMEOUT = 60.0  # seconds until GET /system must answer
STOP_TIMEOUT = 30.0  # seconds Orthanc gets to exit after SIGTERM before it is killed
PORT_ATTEMPTS = 3  # a free port can be taken between free_port() and Orthanc's bind: try new ones


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nodelay_env() -> dict[str, str]:
    """The environment for Debian's dcmtk and Orthanc with Nagle's algorithm off (without it small
    instances crawl on loopback: ~22 instead of ~700 per second)."""
    return {**os.environ, "TCP_NODELAY": "1"}


class OrthancStartError(RuntimeError):
    """Orthanc exited or did not answer; the message carries the end of its log."""


class OrthancHttpError(RuntimeError):
    """The REST API answered with an HTTP error."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
    return base


class OrthancServer:
    """One Orthanc process with its own storage under `workdir`; start() it, stop() it, or use `with`."""

    def __init__(
        self,
        workdir: Path,
        router_aet: str,
        router_port: int,
        stable_age: int = 1,
        overrides: Mapping[str, Any] | None = None,
        verbose: bool = False,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.router_aet = router_aet
        self.router_port = router_port
        self.stable_age = stable_age
        self.overrides = dict(overrides or {})
        self.verbose = verbose
        self.environment = environment if environment is not None else nodelay_env()  # Nagle off by default
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self.config = self._merged_config()

    @property
    def aet(self) -> str:
        return str(self.config["DicomAet"])

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def router_modality(self) -> str:
        return str(self.config["DicomAi"]["RouterModality"])

    @property
    def worklist_dir(self) -> Path:
        """Where Orthanc's worklist plugin reads .wl files (the router's DICOM_AI_MWL_DIR)."""
        return self.workdir / "worklists"

    def _merged_config(self) -> dict[str, Any]:
        """orthanc/orthanc.json with this server's ports, folders, absolute paths and router."""
        try:
            config: dict[str, Any] = json.loads(CONFIG_PATH.read_text())
        except (OSError, ValueError) as exc:
            raise OrthancStartError(f"cannot read {CONFIG_PATH}: {exc}") from exc
        config["HttpPort"] = self.http_port
        config["DicomPort"] = self.dicom_port
        config["StorageDirectory"] = str(self.workdir / "storage")
        config["IndexDirectory"] = str(self.workdir / "index")
        config["StableAge"] = self.stable_age
        # Orthanc resolves Plugins against the configuration file's folder, PythonScript against its cwd
        # (the repo root for the demo): made absolute, the merged file works from anywhere.
        config["Plugins"] = [os.path.normpath(CONFIG_PATH.parent / p) for p in config.get("Plugins", [])]
        config["PythonScript"] = os.path.normpath(REPO / config["PythonScript"])
        self.worklist_dir.mkdir(parents=True, exist_ok=True)
        config["Worklists"]["Database"] = str(self.worklist_dir)
        section = config["DicomAi"]
        section["RouterAet"] = self.router_aet
        config.setdefault("DicomModalities", {})[section["RouterModality"]] = [
            self.router_aet, "127.0.0.1", self.router_port,
        ]
        return _deep_merge(config, self.overrides)

    def start(self) -> OrthancServer:
        """Write the merged configuration, start Orthanc and wait until its REST API answers."""
        if self.process is not None:
            raise RuntimeError(f"Orthanc in {self.workdir} is already running (pid {self.process.pid})")
        for binary in (ORTHANC_BINARY, *self.config["Plugins"], self.config["PythonScript"]):
            if not Path(binary).exists():
                raise OrthancStartError(f"{binary} does not exist (install Debian's orthanc, orthanc-python and orthanc-dicomweb)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.config = _deep_merge(self.config, {"HttpPort": self.http_port, "DicomPort": self.dicom_port})
            self.config_path.write_text(json.dumps(self.config, indent=2))
            try:
                self._launch()
                return self
            except OrthancStartError as exc:
                if "already in use" not in str(exc) or attempt == PORT_ATTEMPTS:
                    raise
                log.warning("Orthanc port %d or %d was taken, retrying on new ports", self.http_port, self.dicom_port)
                self.http_port, self.dicom_port = free_port(), free_port()
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        command = [ORTHANC_BINARY, *(["--verbose"] if self.verbose else []), str(self.config_path)]
        self._log_file = open(self.log_path, "ab")
        since = self._log_file.tell()  # the log is appended to across restarts: judge this run only
        self.process = subprocess.Popen(
            command, cwd=self.workdir, env=dict(self.environment), stdout=self._log_file, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self._reap()
                this_run = self.log_path.read_bytes()[since:].decode(errors="replace")
                raise OrthancStartError(f"Orthanc exited with code {code} at start:\n{this_run[-4000:]}")
            try:
                self.get_json("/system")
                log.info("Orthanc up: %s, DICOM %s:%d", self.http_url, self.aet, self.dicom_port)
                return
            except (OSError, OrthancHttpError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise OrthancStartError(f"Orthanc did not answer {self.http_url}/system in {START_TIMEOUT:.0f} s:\n"
                                        f"{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate Orthanc and wait for it to exit (a restart on the same storage needs that)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("Orthanc did not exit %.0f s after SIGTERM, killing it", STOP_TIMEOUT)
                self.process.kill()
                self.process.wait()
        self._reap()

    def _reap(self) -> None:
        self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def rest(self, method: str, path: str, body: bytes | str | Mapping[str, Any] | list[Any] | None = None) -> bytes:
        """One REST call; dict/list bodies go as JSON, str bodies as text. Raises OrthancHttpError."""
        if isinstance(body, (Mapping, list)):
            data: bytes | None = json.dumps(body).encode()
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
        url = self.http_url + path
        request = urllib.request.Request(url, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return bytes(answer.read())
        except urllib.error.HTTPError as exc:
            raise OrthancHttpError(method, url, exc.code, exc.read().decode(errors="replace")) from exc

    def get_json(self, path: str) -> Any:
        return json.loads(self.rest("GET", path))

    def find_study(self, study_instance_uid: str) -> str | None:
        """Orthanc's id of a study, or None while it has not arrived."""
        found = json.loads(self.rest("POST", "/tools/lookup", study_instance_uid))
        ids = [item["ID"] for item in found if item.get("Type") == "Study"]
        return ids[0] if ids else None

