"""Inputs for the encode tests, built from real images (the infer stage is tested elsewhere)."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread

from dicom_ai.domain import Code, Finding, ImageResult, Instance, ModelInfo, Priority, PriorityDecision
from tests.conftest import require_binary, sample

CONSOLIDATION = Code("95436008", "SCT", "Consolidation")
EFFUSION = Code("60046008", "SCT", "Pleural effusion")

# dciodvfy warnings we accept, each with why; any other warning fails the test.
KNOWN_WARNINGS = (
    # Device UID in the Contributing Equipment Sequence is standard today, but this dicom3tools
    # (2022) does not know it yet, and then calls the whole object "Standard Extended".
    "(0x0018,0x1002) UI Device UID",
    "this is a Standard Extended SOP Class",
    # The sample files' own patient/study data, copied as it is.
    "Retired Person Name form",
    "Patient's Weight",
    # Source without Body Part Examined: Laterality sent empty ("unknown"), see sc.py.
    "attribute <Laterality>",
)


def model_info(**overrides: object) -> ModelInfo:
    values: dict[str, object] = {
        "name": "chest-xray-demo",
        "version": "1.0.0",
        "device_uid": "2.25.311528451287467318112830843208215151823",
        "manufacturer": "dicom-ai project",
        "display_name": "Thorax-Röntgen",
        "not_for_clinical_use": True,
        "intended_use": "Demonstration of consolidation detection on chest radiographs",
    }
    values.update(overrides)
    return ModelInfo(**values)  # type: ignore[arg-type]


def priority(level: Priority = Priority.URGENT) -> PriorityDecision:
    return PriorityDecision(level, 0.93, ("Consolidation 93%",))


def findings(consolidation: float = 0.934, effusion: float = 0.12) -> tuple[Finding, ...]:
    return (
        Finding("Consolidation", CONSOLIDATION, consolidation, 0.5),
        Finding("Pleural effusion", EFFUSION, effusion, 0.5),
    )


def display_image(path: Path) -> np.ndarray:
    """A simple local windowing (first window, MONOCHROME1 inverted) to uint8, as a viewer shows it."""
    dataset = dcmread(path)
    pixels = dataset.pixel_array.astype(np.float64)
    pixels = pixels * float(dataset.get("RescaleSlope", 1)) + float(dataset.get("RescaleIntercept", 0))
    if "WindowCenter" in dataset:
        center = float(np.ravel([dataset.WindowCenter])[0])
        width = float(np.ravel([dataset.WindowWidth])[0])
        low, high = center - width / 2, center + width / 2
    else:
        low, high = float(np.percentile(pixels, 0.5)), float(np.percentile(pixels, 99.5))
    scaled = np.clip((pixels - low) / max(high - low, 1e-6), 0.0, 1.0)
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.round(scaled * 255).astype(np.uint8)


def gaussian_heatmap(shape: tuple[int, int], centre: tuple[float, float] = (0.55, 0.35)) -> np.ndarray:
    """A synthetic Gaussian blob in [0, 1], peak 1 at `centre` (fractions of rows, columns)."""
    rows, columns = shape
    y, x = np.mgrid[0:rows, 0:columns]
    dy = (y - centre[0] * rows) / (0.15 * rows)
    dx = (x - centre[1] * columns) / (0.12 * columns)
    heat = np.exp(-(dy**2 + dx**2) / 2)
    return heat.astype(np.float32)


def header(name: str = "RG1_UNCR.dcm") -> tuple[Path, Dataset]:
    path = sample(name)
    return path, dcmread(path, stop_before_pixels=True)


def another_image(source: Dataset, number: int) -> Dataset:
    """The same header as a further image of the same series (new SOP Instance UID, Instance Number)."""
    twin = copy.deepcopy(source)
    twin.SOPInstanceUID = f"{source.SOPInstanceUID}.{number}"
    twin.InstanceNumber = number
    return twin


def result_for(
    path: Path,
    source: Dataset,
    display: np.ndarray,
    heatmap: np.ndarray | None,
    image_findings: Sequence[Finding] | None = None,
) -> ImageResult:
    instance = Instance(
        sop_instance_uid=str(source.SOPInstanceUID),
        sop_class_uid=str(source.SOPClassUID),
        series_instance_uid=str(source.SeriesInstanceUID),
        study_instance_uid=str(source.StudyInstanceUID),
        path=path,
    )
    return ImageResult(instance, tuple(image_findings or findings()), display, heatmap)


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's complaints about a file: its Error and Warning lines."""
    binary = require_binary("dciodvfy")
    run = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith(("Error", "Warning"))]


def assert_valid(path: Path, also_known: tuple[str, ...] = ()) -> None:
    """No dciodvfy Error at all, and no warning beyond the known ones (and `also_known`)."""
    complaints = dciodvfy(path)
    errors = [line for line in complaints if "Error" in line]
    assert not errors, f"dciodvfy errors in {path.name}: {errors}"
    unknown = [line for line in complaints if not any(known in line for known in KNOWN_WARNINGS + also_known)]
    assert not unknown, f"unexpected dciodvfy warnings in {path.name}: {unknown}"
