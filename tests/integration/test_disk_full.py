"""A full disk while receiving: the node answers A700 (Out of Resources), names the instance and the
sender, frees the partial file at once, and takes the next instance that fits.

The node runs as `dicom-ai serve` in its own mount namespace (util-linux `unshare`, as an unprivileged
user may) with DICOM_AI_HOME on a 6 MB tmpfs: a real ENOSPC from the kernel, no fault injection.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import copy_as_new_study, free_port, require_binary, sample, wait_for

CLI = Path(sys.executable).parent / "dicom-ai"
DISK = "6m"


class SmallDiskNode:
    def __init__(self, root: Path) -> None:
        self.home = root / "home"  # the tmpfs is mounted here, inside the node's namespace only
        self.home.mkdir(parents=True)
        self.port = free_port()
        self.log_path = root / "node.log"
        env = {**os.environ, "DICOM_AI_HOME": str(self.home), "DICOM_AI_HOST": "127.0.0.1",
               "DICOM_AI_PORT": str(self.port), "DICOM_AI_HTTP_PORT": "0", "DICOM_AI_STABLE_AFTER": "600"}
        script = f"mount -t tmpfs -o size={DISK} dicom-ai-test {self.home} && exec {CLI} serve"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [require_binary("unshare"), "--user", "--map-root-user", "--mount", "sh", "-c", script],
            env=env, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for("the node on a small disk", lambda: b"dicom-ai ready" in self.log_path.read_bytes()
                 or self.process.poll() is not None, 180, self.log)
        assert self.process.poll() is None, f"could not start the node on a tmpfs:\n{self.log()}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def view(self, relative: str) -> Path:
        """A path as the node sees it (its mount namespace), through /proc."""
        return Path(f"/proc/{self.process.pid}/root") / str(self.home).lstrip("/") / relative

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[SmallDiskNode]:
    running = SmallDiskNode(tmp_path)
    yield running
    running.stop()


def storescu(port: int, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("storescu"), "-v", "-aet", "MODALITY", "-aec", "DICOM_AI", "127.0.0.1", str(port),
                           str(path)], capture_output=True, text=True, timeout=120, env={**os.environ, "TCP_NODELAY": "1"})


def test_full_disk_answers_out_of_resources_and_frees_the_partial_file(node: SmallDiskNode, tmp_path: Path) -> None:
    big = dcmread(copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in"))
    big.Rows, big.Columns = 2048, 2048
    big.PixelData = bytes(2048 * 2048 * 2)  # 8 MB: more than the disk holds
    big_path = tmp_path / "big.dcm"
    big.save_as(big_path, enforce_file_format=True)
    refused = storescu(node.port, big_path)
    output = refused.stdout + refused.stderr
    assert "Refused: OutOfResources" in output, output  # dcmtk's name for 0xA700
    log = node.log()
    assert f"cannot keep instance {big.SOPInstanceUID} from MODALITY" in log and "Out of Resources" in log, log
    assert "Traceback" not in log, log
    assert list(node.view("spool/incoming").iterdir()) == []  # freed at once, not at the next start

    small = copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in")
    taken = storescu(node.port, small)
    assert taken.returncode == 0 and "E:" not in taken.stderr and "Success" in taken.stdout + taken.stderr, taken.stderr  # room again: the next one is kept
    sop = str(dcmread(small).SOPInstanceUID)
    assert any(sop in p.name for p in node.view("spool/studies").rglob("*.dcm"))
    time.sleep(0.5)
    assert "Traceback" not in node.log()
