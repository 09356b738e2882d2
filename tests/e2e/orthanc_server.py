"""The real Orthanc for tests (dicom_ai/demo/orthanc.py, shared with `dicom-ai demo`), and `storescu`,
dcmtk's sender with Nagle off (without TCP_NODELAY=1 small instances crawl on loopback)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from dicom_ai.demo.orthanc import (  # noqa: F401 (what the tests import from here)
    CONFIG_PATH,
    REPO,
    OrthancHttpError,
    OrthancServer,
    OrthancStartError,
    nodelay_env,
)


class StorescuError(RuntimeError):
    """dcmtk's storescu failed; the message carries its stderr."""


def storescu(
    files: Sequence[Path | str],
    port: int,
    aet: str = "STORESCU",
    called: str = "ORTHANC",
    host: str = "127.0.0.1",
    timeout: float = 120.0,
    options: Sequence[str] = (),
) -> None:
    """Send files with dcmtk's storescu (extra `options` such as -xv to propose JPEG 2000); raise StorescuError with its stderr if anything failed."""
    if not files:
        raise ValueError("storescu: no files to send")
    command = ["storescu", *options, "-aet", aet, "-aec", called, host, str(port), *map(str, files)]
    done = subprocess.run(command, env=nodelay_env(), capture_output=True, text=True, timeout=timeout)
    # Some dcmtk versions exit 0 after a refused C-STORE, so error lines count as failure too.
    errors = [line for line in done.stderr.splitlines() if line.startswith(("E:", "F:"))]
    if done.returncode != 0 or errors:
        raise StorescuError(
            f"storescu -aet {aet} -aec {called} {host} {port} ({len(files)} file(s)) failed with exit code "
            f"{done.returncode}:\n{done.stderr.strip()}"
        )


