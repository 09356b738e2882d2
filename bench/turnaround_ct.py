"""End-to-end turnaround for head CT volume studies (one series of N slices), beside the chest CR one.

Same harness as bench/turnaround.py (real Orthanc, real `dicom-ai serve`, stage medians from our
database); the studies come from dicom_ai.train.phantom_dicom.write_ct_volume_study and are routed by
rules/ct-head.yaml to models/ct-head-demo, which reads the whole series as one volume.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from bench.turnaround import Case, measure
from dicom_ai.train.phantom_dicom import write_ct_volume_study

log = logging.getLogger(__name__)

# (slices, rows, columns): the phantom writer's default, and a size nearer a real head CT
# (which has 512×512 slices, often 30-300 of them).
SHAPES: tuple[tuple[int, int, int], ...] = ((32, 96, 96), (64, 256, 256))


def ct_case(shape: tuple[int, int, int]) -> Case:
    """Head CT phantoms of `shape`, every study with a new StudyInstanceUID and patient; findings alternate."""
    depth, rows, cols = shape

    def make(folder: Path, number: int) -> tuple[list[Path], str]:
        study_uid = generate_uid()
        files = write_ct_volume_study(folder, seed=number, finding=bool(number % 2), shape=shape,
                                      patient_id=f"BENCH-CT-{number}", study_instance_uid=study_uid)
        return files, study_uid

    return Case(f"head CT volume studies ({depth} slices of {rows}×{cols}, phantom_dicom)", make,
                {"kind": f"head CT {depth}×{rows}×{cols}", "instances": depth, "shape": list(shape)})


def run(workdir: Path, studies: int, shapes: Sequence[tuple[int, int, int]] = SHAPES) -> list[dict[str, Any]]:
    """Per shape, send `studies` CT volumes one after another (after a warm-up); seconds from storescu's end to the SR."""
    return measure(workdir, [ct_case(s) for s in shapes], studies)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(run(Path("/tmp/bench-turnaround-ct"), 3), indent=2))
