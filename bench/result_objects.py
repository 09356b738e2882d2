"""What the viewer-facing result objects cost: the SR's regions and the Parametric Map, against the turnaround.

Two parts, in the same run:
- the chest CR and a head CT volume through the real turnaround harness (bench/turnaround.py) with
  `heatmap_objects` = `sc` (the default) and = `sc,pm`: the ratio of the turnaround p50s is what the
  Parametric Maps cost (radiographs get none: no frame of reference, so the chest ratio is the noise);
- building the whole SR of a chest CR result (every content item, the OHIF regions among them) and the
  region computation alone, timed in process: the SR's share of the chest CR turnaround bounds from
  above what its extra content (regions, comments) adds to it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file

from bench.stats import median
from bench.turnaround import CHEST_CR, BenchError, measure
from bench.turnaround_ct import ct_case
from dicom_ai.domain import Code, Finding, ImageResult, Instance, ModelInfo, Priority, PriorityDecision
from dicom_ai.encode import encode_results
from dicom_ai.encode.sr import image_region

log = logging.getLogger(__name__)

CT_SHAPE = (32, 96, 96)
MODEL = ModelInfo("chest-xray-demo", "1.0.0", "2.25.1", "dicom-ai", "Chest X-ray demo", True, "benchmark")


def _chest_result() -> tuple[ImageResult, dict[str, Any]]:
    source = get_testdata_file("RG1_UNCR.dcm", download=False)
    if source is None:
        raise BenchError("RG1_UNCR.dcm is not installed (pip install pydicom-data)")
    header = dcmread(source, stop_before_pixels=True)
    rows, columns = int(header.Rows), int(header.Columns)
    yy, xx = np.mgrid[0:rows, 0:columns]
    heatmap = np.exp(-((yy - rows * 0.6) ** 2 + (xx - columns * 0.3) ** 2) / (2 * (rows / 8) ** 2)).astype(np.float32)
    instance = Instance(str(header.SOPInstanceUID), str(header.SOPClassUID), str(header.SeriesInstanceUID),
                        str(header.StudyInstanceUID), Path(source))
    finding = Finding("Consolidation", Code("95436008", "SCT", "Lung consolidation"), 0.93, 0.35)
    display = np.zeros((rows, columns), dtype=np.uint8)
    return ImageResult(instance, (finding,), display, heatmap), {instance.sop_instance_uid: header}


def encode_costs(repeats: int) -> dict[str, float]:
    """Median milliseconds: the whole encode (SR + heatmap SC), the SR alone, the region computation alone."""
    result, sources = _chest_result()
    decision = PriorityDecision(Priority.STAT, 0.93, ("Consolidation 93% >= STAT threshold 90%",))
    rows, columns = result.heatmap.shape if result.heatmap is not None else (0, 0)
    whole, sr_only, regions = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        encode_results([result], sources, MODEL, decision)
        whole.append(time.perf_counter() - started)
        no_heatmap = ImageResult(result.source, result.findings, result.display, None)
        started = time.perf_counter()
        encode_results([no_heatmap], sources, MODEL, decision)
        sr_only.append(time.perf_counter() - started)
        started = time.perf_counter()
        image_region(result, rows, columns)
        regions.append(time.perf_counter() - started)
    return {"encode_ms": median(whole) * 1e3, "sr_only_ms": median(sr_only) * 1e3, "region_ms": median(regions) * 1e3}


def run(workdir: Path, studies: int) -> dict[str, Any]:
    cases = [CHEST_CR, ct_case(CT_SHAPE)]
    runs: dict[str, list[dict[str, Any]]] = {}
    for objects in ("sc", "sc,pm"):
        runs[objects] = measure(workdir / objects.replace(",", "-"), cases, studies,
                                settings={"DICOM_AI_HEATMAP_OBJECTS": objects})
        log.info("result objects %s done", objects)
    costs = encode_costs(max(5, studies))
    chest_p50 = runs["sc"][0]["p50_s"]
    sr_ms = costs["sr_only_ms"] + costs["region_ms"]  # the SR with its regions (its heatmap box computed)
    out: dict[str, Any] = {"studies": studies, "encode": costs, "sr_with_regions_ms": sr_ms,
                           "sr_share_of_chest_turnaround": sr_ms / 1e3 / chest_p50,
                           "sr_share_of_chest_turnaround_minus_waits":
                               sr_ms / 1e3 / runs["sc"][0]["p50_minus_waits_s"]}
    for index, kind in enumerate(("chest CR", f"head CT {'x'.join(map(str, CT_SHAPE))}")):
        sc, pm = runs["sc"][index], runs["sc,pm"][index]
        out[kind] = {"sc_p50_s": sc["p50_s"], "sc_pm_p50_s": pm["p50_s"], "pm_over_sc": pm["p50_s"] / sc["p50_s"],
                     "processing_sc_p50_s": sc["stages_p50_s"].get("complete_to_processed"),
                     "processing_sc_pm_p50_s": pm["stages_p50_s"].get("complete_to_processed")}
    return out
