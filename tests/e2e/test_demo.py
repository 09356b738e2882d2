"""`make demo` as a newcomer runs it (`dicom-ai demo`), against the real Orthanc: every study's results
come back, and the printed reading order puts STAT before URGENT before ROUTINE, with the real chest
radiograph and the phantoms where the demo models put them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_binary

pytestmark = pytest.mark.e2e

CLI = Path(sys.executable).with_name("dicom-ai")
LEVELS = {"STAT": 2, "URGENT": 1, "ROUTINE": 0}


def test_the_demo_brings_results_back_in_reading_order(tmp_path: Path) -> None:
    require_binary("Orthanc")
    done = subprocess.run([str(CLI), "demo", "--home", str(tmp_path / "demo"), "--exit-when-done"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout
    assert re.search(r"Orthanc Explorer .*http://127\.0\.0\.1:\d+/app/explorer\.html", output), output
    assert re.search(r"the node's console \(user demo, password \S+\): http://127\.0\.0\.1:\d+/worklist", output), output
    ranked = re.findall(r"^  \d+\. (STAT|URGENT|ROUTINE) +(.+?): ", output, re.M)
    assert len(ranked) == 6, output  # every study the demo sent came back
    levels = [LEVELS[level] for level, _ in ranked]
    assert levels == sorted(levels, reverse=True), output
    by_label = {label: level for level, label in ranked}
    assert by_label["real chest radiograph (pydicom-data RG1)"] == "STAT"
    assert by_label["chest phantom, no finding"] == "ROUTINE"
    assert by_label["colonoscopy phantom with a polyp"] == "URGENT"
    assert "NOT FOR CLINICAL USE" in output and output.rstrip().endswith("stopped")
