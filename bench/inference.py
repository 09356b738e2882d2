"""Inference: the demo model's latency and throughput at batch 1 and 8, with and without Grad-CAM, and the
cost of processing a whole study (route + infer + encode + write) relative to the bare model forward.

The model is loaded as the node loads it: probabilities come from its ONNX copy on onnxruntime when it
has one (the fast path, on by default), Grad-CAM from torch; the report names the backend."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from pydicom import dcmread
from pydicom.data import get_testdata_file

from bench.corpus import copy_as_new_study
from bench.procs import BenchError
from bench.stats import median
from dicom_ai.config import Settings
from dicom_ai.domain import StudyState
from dicom_ai.infer.pixels import display_image
from dicom_ai.infer.registry import ModelRegistry
from dicom_ai.infer.preprocess import preprocess
from dicom_ai.infer.runner import LoadedModel
from dicom_ai.pipeline import Pipeline
from dicom_ai.receive.keep import read_identity
from dicom_ai.route.loader import RuleWatcher
from dicom_ai.store import Spool, Stores
from dicom_ai.domain import ReceivedInstance

log = logging.getLogger(__name__)

MODEL = "chest-xray-demo"
REPO = Path(__file__).resolve().parent.parent


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def model_speed(model: LoadedModel, image: torch.Tensor, shape: tuple[int, int], iterations: int) -> list[dict[str, Any]]:
    """Per-image latency and images/s for batch 1 and 8, eager, with and without Grad-CAM; variants interleaved."""
    heatmaps = model._heatmaps  # the runner's own Grad-CAM object: the same hooks the node uses
    variants: dict[tuple[int, bool], Any] = {}
    for batch_size in (1, 8):
        batch = image.repeat(batch_size, 1, 1, 1)
        variants[(batch_size, False)] = (lambda b=batch: model.probabilities(b))
        if heatmaps is not None:
            variants[(batch_size, True)] = (
                lambda b=batch, n=batch_size: (model.probabilities(b), heatmaps.heatmaps(b, 0, [shape] * n))
            )
    for fn in variants.values():  # warm-up: first calls allocate
        fn()
    samples: dict[tuple[int, bool], list[float]] = {k: [] for k in variants}
    for _ in range(iterations):
        for key, fn in variants.items():
            samples[key].append(_timed(fn))
    rows = []
    for (batch_size, gradcam), times in samples.items():
        seconds = median(times)
        rows.append({"batch": batch_size, "gradcam": gradcam, "iterations": len(times),
                     "ms_per_image": seconds / batch_size * 1000, "images_per_s": batch_size / seconds})
    return rows


def pipeline_cost(model: LoadedModel, registry: ModelRegistry, workdir: Path, image: torch.Tensor, iterations: int) -> dict[str, Any]:
    """Median seconds of Pipeline.process_next on a one-image chest study vs model forward, interleaved."""
    source = Path(get_testdata_file("RG1_UNCR.dcm", download=False) or "")
    if not source.is_file():
        raise BenchError("RG1_UNCR.dcm is not installed (pip install pydicom-data)")
    home = workdir / "pipeline"
    shutil.rmtree(home, ignore_errors=True)
    settings = Settings(home=home, port=11112, stable_after=1.0)
    store, spool = Stores.open(settings.database_path), Spool(settings.spool_dir)
    rules = RuleWatcher(REPO / "rules", known_models=registry.names())
    pipeline = Pipeline(store.studies, spool, rules, registry, settings)
    forward = lambda: model.probabilities(image)  # noqa: E731
    study_s: list[float] = []
    forward_s: list[float] = []
    display_s: list[float] = []
    try:
        for number in range(iterations + 1):
            path, _ = copy_as_new_study(source, workdir / "pipeline-in")
            identity = read_identity(path, str(dcmread(path, stop_before_pixels=True).SOPInstanceUID), "BENCH",
                                     "1.2.840.10008.1.2.1")
            store.studies.record_instance(ReceivedInstance(**{**identity.__dict__, "size": path.stat().st_size}))
            store.studies.complete_quiet_studies(time.time() + 1)
            started = time.perf_counter()
            done = pipeline.process_next()
            elapsed = time.perf_counter() - started
            states = {r.study_instance_uid: r for r in store.reports.studies(limit=iterations + 2)}
            if done is None or states[done].state != StudyState.DONE:
                raise BenchError(f"the pipeline did not finish the study: {done and states[done]}")
            f = _timed(forward)
            d = _timed(lambda: display_image(dcmread(path)))
            if number:  # the first run warms caches
                study_s.append(elapsed)
                forward_s.append(f)
                display_s.append(d)
    finally:
        store.close()
    ratios = [s / f for s, f in zip(study_s, forward_s)]
    return {"iterations": len(study_s), "study_s": median(study_s), "forward_s": median(forward_s),
            "study_over_forward": median(ratios), "read_and_display_s": median(display_s)}


def run(workdir: Path, iterations: int) -> dict[str, Any]:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    registry = ModelRegistry(REPO / "models")
    model = registry.get(MODEL)
    source = get_testdata_file("RG1_UNCR.dcm", download=False)
    if source is None:
        raise BenchError("RG1_UNCR.dcm is not installed (pip install pydicom-data)")
    display = display_image(dcmread(source))
    image = preprocess(display, model.card.input).unsqueeze(0)
    speed = model_speed(model, image, display.shape, iterations)
    cost = pipeline_cost(model, registry, workdir, image, max(3, iterations // 2))
    return {"model": f"{model.info.name} {model.info.version}", "backend": model.backend,
            "torch_threads": torch.get_num_threads(),
            "speed": speed, "pipeline": cost}


if __name__ == "__main__":
    import json
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(run(Path("/tmp/bench-infer"), 5), indent=2))
