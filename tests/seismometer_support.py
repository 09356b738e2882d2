"""The real seismometer, in a virtual environment of its own (.ci/run builds it): it is too heavy (JupyterLab,
ydata-profiling) to be a dependency of the node. Tests load our export with it in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SERIES = "0.5"  # the seismometer series the export is written for (.ci/run's SEISMOMETER_SERIES)
# Where .ci/run caches it: keyed by the series and by this python's version, as .ci/run names it.
DEFAULT_VENV = (Path.home() / ".cache" / "dicom-ai"
                / f"seismometer-{SERIES}-py{sys.version_info.major}.{sys.version_info.minor}")
VENV = Path(os.environ.get("DICOM_AI_SEISMOMETER_VENV", DEFAULT_VENV))

# What a notebook does first: load the export from its folder, then read the Seismogram's frame.
LOADER = """
import json, sys
import seismometer
from sklearn.metrics import roc_auc_score
seismometer.run_startup(config_path=".")
sg = seismometer.Seismogram()
frame = sg.dataframe
print(json.dumps({
    "version": seismometer.__version__, "rows": int(len(frame)), "output": sg.output, "target": sg.target,
    "modelname": sg.modelname, "thresholds": list(sg.thresholds),
    "auroc": float(roc_auc_score(frame[sg.target], frame[sg.output])),
    "positives": int(frame[sg.target].sum()), "cohorts": sorted(sg.available_cohort_groups),
    "dtypes": {name: str(dtype) for name, dtype in frame.dtypes.items()},
}))
"""


def seismometer_python() -> Path:
    """The venv's python; under CI a missing venv fails (.ci/run builds it), elsewhere the test skips."""
    python = VENV / "bin" / "python"
    if python.is_file():
        return python
    if os.environ.get("CI"):
        pytest.fail(f"no seismometer environment at {VENV} but CI must have it (see .ci/run)")
    pytest.skip(f"no seismometer environment at {VENV} (.ci/run builds it: pip install 'seismometer=={SERIES}.*')")


def load_with_seismometer(folder: Path) -> dict[str, Any]:
    """Run seismometer.run_startup in the export folder, as its docs say; return what the Seismogram holds."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(seismometer_python()), "-c", LOADER], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, f"seismometer could not load {folder}:\n{done.stderr[-4000:]}"
    loaded: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["version"].startswith(f"{SERIES}."), f"seismometer {loaded['version']} at {VENV}, not {SERIES}"
    return loaded
