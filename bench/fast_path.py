"""ONNX fast path: per-input latency of onnxruntime vs torch eager on the same loaded model, same run.

Models: a random-weight DenseNet-121 (a realistic size; the demo DenseNet is tiny) and every
state_dict or MONAI bundle model in models/, each copied to the workdir and exported there with
`dicom_ai.infer.export.export_onnx`, so the repository is never modified. Variants (backend x batch)
are interleaved in every iteration; we report medians and the eager/onnx ratio computed per
iteration, then medianed (above 1: onnxruntime is faster). Both backends get the same thread count.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from pydicom import dcmread
from pydicom.data import get_testdata_file

from bench.procs import BenchError
from bench.stats import median
from dicom_ai.infer.card import CARD_FILENAME, ModelCard, dump_card, load_card
from dicom_ai.infer.export import export_onnx
from dicom_ai.infer.networks import OnnxSession, build_network
from dicom_ai.infer.pixels import display_image
from dicom_ai.infer.registry import ModelRegistry
from dicom_ai.infer.runner import LoadedModel

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
DEMO = "chest-xray-demo"  # the card the DenseNet-121 copies its gate, input and label from
EXPORTABLE = ("state_dict", "monai_bundle")
BATCHES_2D = (1, 8)
BATCHES_3D = (1, 4)  # a batch of 8 volumes is heavy on 2 cores and in memory
SEED = 0


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _thread_count() -> int | None:
    """Threads of this process now (Linux); None where /proc is missing."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def onnx_threads(onnx_file: Path, card: ModelCard) -> int:
    """Intra-op threads onnxruntime uses by default: the caller plus the workers a new session starts.

    OnnxSession gives onnxruntime torch's thread count (one per physical core unless set); counting
    the threads a session adds measures what that means here instead of guessing it.
    """
    before = _thread_count()
    session = OnnxSession(onnx_file, card)
    after = _thread_count()
    del session
    if before is None or after is None:
        return max(1, os.cpu_count() or 1)
    return max(1, after - before + 1)


def densenet121_folder(workdir: Path) -> Path:
    """A model folder with a random DenseNet-121 (fixed seed: speed only) and the demo card's I/O."""
    folder = workdir / "densenet121-bench"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    demo_card = REPO / "models" / DEMO / CARD_FILENAME
    data = yaml.safe_load(demo_card.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise BenchError(f"{demo_card}: not a mapping; the DenseNet-121 card is built from it")
    for key in ("gradcam", "training", "metrics", "onnx", "device_uid"):
        data.pop(key, None)
    data |= {
        "name": "densenet121-bench",
        "version": "0.0.0",
        "display_name": "DenseNet-121, random weights (benchmark)",
        "intended_use": "BENCHMARK ONLY - random weights, speed measurement; outputs mean nothing.",
        "architecture": {"name": "DenseNet121", "kwargs": {"spatial_dims": 2, "in_channels": 1, "out_channels": 1}},
    }
    card = ModelCard.model_validate(data)
    torch.manual_seed(SEED)
    torch.save(build_network(card).state_dict(), folder / card.weights)
    dump_card(card, folder / CARD_FILENAME)
    return folder


def repository_folders(workdir: Path) -> list[Path]:
    """Copies of every exportable model in models/ under workdir (export writes into the folder)."""
    registry = ModelRegistry(REPO / "models", fast_path=False)
    for folder, problem in registry.problems().items():
        log.warning("models/%s skipped: %s", folder, problem)
    copies = []
    for name, card in registry.cards().items():
        if card.format not in EXPORTABLE:
            log.info("model %s skipped: format %s has no torch weights to export", name, card.format)
            continue
        target = workdir / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(registry.folder(name), target)
        copies.append(target)
    return copies


def sample_input(model: LoadedModel) -> torch.Tensor:
    """One prepared input: the real chest CR for 2-D models, a synthetic CT-like volume for 3-D ones."""
    spec = model.card.input
    if spec.dims == 2:
        source = get_testdata_file("RG1_UNCR.dcm", download=False)
        if source is None:
            raise BenchError("RG1_UNCR.dcm is not installed (pip install pydicom-data)")
        return model.prepare(display_image(dcmread(source)))
    generator = np.random.default_rng(SEED)
    volume = generator.normal(40.0, 300.0, size=spec.size).astype(np.float32)  # HU-like values
    return model.prepare(volume)


def measure(model: LoadedModel, image: torch.Tensor, batches: tuple[int, ...], iterations: int) -> list[dict[str, Any]]:
    """Median ms per input of torch eager and onnxruntime at each batch size, variants interleaved."""
    variants: dict[tuple[int, str], Callable[[], object]] = {}
    for batch_size in batches:
        batch = image[None].repeat(batch_size, *([1] * image.ndim))
        variants[(batch_size, "torch")] = lambda b=batch: model.torch_probabilities(b)
        variants[(batch_size, "onnx")] = lambda b=batch: model.probabilities(b)
    for fn in variants.values():  # warm-up: first calls allocate and pick kernels
        fn()
    samples: dict[tuple[int, str], list[float]] = {key: [] for key in variants}
    for _ in range(iterations):
        for key, fn in variants.items():
            samples[key].append(_timed(fn))
    rows = []
    for batch_size in batches:
        eager, onnx = samples[(batch_size, "torch")], samples[(batch_size, "onnx")]
        rows.append({
            "batch": batch_size, "iterations": iterations,
            "torch_ms_per_input": median(eager) / batch_size * 1000,
            "onnx_ms_per_input": median(onnx) / batch_size * 1000,
            "eager_over_onnx": median([e / o for e, o in zip(eager, onnx)]),
        })
    return rows


def bench_model(folder: Path, iterations: int) -> dict[str, Any]:
    """Export one model folder, load it with the fast path on, and time both backends."""
    started = time.perf_counter()
    exported = export_onnx(folder)
    export_s = time.perf_counter() - started
    card = load_card(folder / CARD_FILENAME)
    threads = onnx_threads(exported.path, card)
    torch.set_num_threads(threads)
    model = LoadedModel.load(folder, card, fast_path=True)
    if model.backend != "onnxruntime":
        raise BenchError(f"model {card.name}: the fast path is off after export to {exported.path} (see the runner's warning above)")
    image = sample_input(model)
    batches = BATCHES_2D if card.input.dims == 2 else BATCHES_3D
    parameters = sum(p.numel() for p in model.network.parameters()) if model.network is not None else None
    log.info("model %s: exported in %.1f s; timing %s at batch %s, %d threads each",
             card.name, export_s, "x".join(map(str, card.input.size)), batches, threads)
    return {
        "model": f"{card.name} {card.version}", "architecture": type(model.network).__name__ if model.network is not None else card.format,
        "parameters": parameters, "input": "x".join(map(str, (card.input.channels, *card.input.size))),
        "export_s": export_s, "onnx_mb": exported.size_bytes / 2**20, "max_difference": exported.max_difference,
        "torch_threads": torch.get_num_threads(), "onnx_threads": threads,
        "speed": measure(model, image, batches, iterations),
    }


def run(workdir: Path, iterations: int) -> dict[str, Any]:
    """The fast-path comparison for the DenseNet-121 and every exportable model in models/."""
    workdir.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    try:
        folders = [densenet121_folder(workdir), *repository_folders(workdir)]
        models = [bench_model(folder, iterations) for folder in folders]
    finally:
        torch.set_num_threads(previous_threads)
    return {"cpus": os.cpu_count(), "models": models}


if __name__ == "__main__":
    import json
    import sys

    logging.basicConfig(level=logging.INFO)
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    print(json.dumps(run(Path("/tmp/bench-fast-path"), count), indent=2))
