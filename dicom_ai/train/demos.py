"""`dicom-ai train demo NAME`: the demo models, one per use case the router routes, from phantoms.

Each recipe draws balanced train/validation/test sets from its phantom generator with a fixed
seed (no patient data, nothing downloaded), preprocesses them exactly as inference will, and
hands them to train_classifier. The chest radiograph model keeps its own recipe (chest_demo).
Every card and every output says SYNTHETIC / NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dicom_ai.infer.card import ArchitectureSpec, CodeSpec, InputSpec, ReportTermsSpec
from dicom_ai.infer.preprocess import preprocess, preprocess_volume
from dicom_ai.train.classifier import ClassifierPlan, TensorSplit, mask_at, train_classifier
from dicom_ai.train.engine import FitConfig
from dicom_ai.train.names import DEMO_FOLDERS

log = logging.getLogger(__name__)

BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
SMALL_2D: dict[str, Any] = {"init_features": 16, "growth_rate": 16, "block_config": [3, 6, 12], "bn_size": 2}
SMALL_3D: dict[str, Any] = {"init_features": 8, "growth_rate": 8, "block_config": [2, 4, 6], "bn_size": 2}
GRADCAM_LAYERS = ("class_layers.relu", "features.denseblock3", "features.transition2", "features.denseblock2")
SYNTHETIC = (
    "SYNTHETIC DATA - NOT FOR CLINICAL USE. A demonstration model trained only on generated phantoms of {what}, "
    "to exercise dicom-ai end to end (routing, inference, Grad-CAM, SR and heatmap encoding, prioritisation). "
    "Its outputs on real images carry no diagnostic meaning."
)


@dataclass(frozen=True)
class DemoRecipe:
    """A phantom generator, how many to draw, and what to build from them."""

    plan: ClassifierPlan
    generator: str  # "module:function" of the phantom, recorded in the card
    render_size: tuple[int, ...]
    counts: tuple[int, int, int]  # train, val, test
    epochs: int
    batch_size: int
    learning_rate: float
    what: str  # for the card's data line
    limits: str


def _plan(name: str, display: str, label: str, code: CodeSpec, spec: InputSpec, what: str, keywords: list[str],
          **extra: Any) -> ClassifierPlan:
    kwargs = {"spatial_dims": spec.dims, "in_channels": spec.channels, "out_channels": 1} | (SMALL_3D if spec.dims == 3 else SMALL_2D)
    return ClassifierPlan(
        name=name, version="1.0.0", display_name=display, label=label, code=code, input=spec,
        architecture=ArchitectureSpec(name="DenseNet", kwargs=kwargs), intended_use=SYNTHETIC.format(what=what),
        gradcam_candidates=GRADCAM_LAYERS, pointing_weight=0.5,
        report_terms=ReportTermsSpec(codes=[code.value], keywords=keywords), **extra,
    )


RECIPES: dict[str, DemoRecipe] = {
    "mammography": DemoRecipe(
        plan=_plan(
            DEMO_FOLDERS["mammography"], "Mammography mass (demo)", "Mass",
            CodeSpec(value="4147007", scheme="SCT", meaning="Mass"),
            InputSpec(size=(224, 176), channels=1), "screening mammograms (CC and MLO views)", ["mass"],
            gate={"Modality": ["MG"]}, select={"ViewPosition": ["CC", "MLO"]}, pointing_tolerance_px=8, shift_px=6,
            flip=False,
        ),
        generator="dicom_ai.train.phantoms.mammography:mammography_phantom", render_size=(256, 208),
        counts=(1200, 240, 400), epochs=6, batch_size=32, learning_rate=3e-3, what="mammograms (CC and MLO views, both sides)",
        limits="- Only masses drawn by the generator; no calcification-only, architectural distortion, asymmetry or implant cases.",
    ),
    "brain-mr": DemoRecipe(
        plan=_plan(
            DEMO_FOLDERS["brain-mr"], "Brain MR mass lesion (demo)", "Brain mass lesion",
            CodeSpec(value="126952004", scheme="SCT", meaning="Neoplasm of brain"),
            InputSpec(size=(160, 160), channels=1), "axial T2/FLAIR-like brain MR slices",
            ["mass lesion", "mass", "tumour", "tumor", "neoplasm"], gate={"Modality": ["MR"]}, pointing_tolerance_px=8, shift_px=6,
        ),
        generator="dicom_ai.train.phantoms.brain_mr:brain_mr_phantom", render_size=(192, 192),
        counts=(1200, 240, 400), epochs=6, batch_size=32, learning_rate=3e-3, what="axial T2/FLAIR-like brain MR slices",
        limits="- One contrast, axial slices only; each slice is scored on its own (no volume context).",
    ),
    "ct-head": DemoRecipe(
        plan=_plan(
            DEMO_FOLDERS["ct-head"], "Head CT haemorrhage, 3-D (demo)", "Intracranial haemorrhage",
            CodeSpec(value="1386000", scheme="SCT", meaning="Intracranial hemorrhage"),
            InputSpec(size=(32, 96, 96), channels=1, window=(40.0, 80.0)), "non-contrast head CT volumes",
            ["haemorrhage", "hemorrhage", "haematoma", "hematoma", "bleed"], gate={"Modality": ["CT"]}, pointing_tolerance_px=4, shift_px=4, gradcam_slices=3,
        ),
        generator="dicom_ai.train.phantoms.ct_volume:ct_volume_phantom", render_size=(32, 96, 96),
        counts=(720, 160, 240), epochs=14, batch_size=8, learning_rate=3e-3, what="non-contrast head CT volumes",
        limits="- A whole series is one volume resized to 32x96x96: thin-slice or whole-body series are squeezed into it.",
    ),
    "endoscopy": DemoRecipe(
        plan=_plan(
            DEMO_FOLDERS["endoscopy"], "Colonoscopy polyp (demo)", "Polyp",
            CodeSpec(value="68496003", scheme="SCT", meaning="Polyp of colon"),
            InputSpec(size=(160, 160), channels=3), "colonoscopy frames", ["polyp", "adenoma"],
            gate={"Modality": ["ES"]}, pointing_tolerance_px=8, shift_px=6,
        ),
        generator="dicom_ai.train.phantoms.endoscopy:endoscopy_phantom", render_size=(192, 192),
        counts=(1200, 240, 400), epochs=6, batch_size=32, learning_rate=3e-3, what="colonoscopy frames",
        limits="- Only the generator's polyps, folds, bubbles and debris; no real mucosa, bleeding or instruments.",
    ),
}
QUICK_COUNTS = (16, 8, 8)


def train_demo(name: str, out_dir: Path, *, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    """Train demo `name` into `out_dir`; returns its metrics and training record."""
    if name == "chest-xray":
        from dicom_ai.train.chest_demo import train_chest_demo

        report = train_chest_demo(out_dir, seed=seed, quick=quick)
        return report | {"onnx": _export(out_dir), "reference": _reference(name, out_dir, quick)}
    if name not in RECIPES:
        raise ValueError(f"no demo recipe {name!r}; choose chest-xray, {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    counts = QUICK_COUNTS if quick else recipe.counts
    started = time.perf_counter()
    splits = {split: _draw(recipe, seed, split, n) for split, n in zip(SPLIT_IDS, counts)}
    generate_s = time.perf_counter() - started
    log.info("%s: generated %d phantoms in %.1f s", name, sum(counts), generate_s)
    config = FitConfig(
        epochs=1 if quick else recipe.epochs, batch_size=4 if quick else recipe.batch_size,
        learning_rate=recipe.learning_rate, patience=3, seed=seed, max_steps_per_epoch=2 if quick else None,
        progress=not quick and sys.stderr.isatty(),  # tqdm bars for a person at a terminal, not in logs
    )
    module, function = recipe.generator.split(":")
    record = {
        "data": f"synthetic {recipe.what} from {module}.{function}; no patient data",
        "generator": recipe.generator.replace(":", "."),
        "seed": seed,
        "quick": quick,
        "render_size": list(recipe.render_size),
        "generate_s": round(generate_s, 1),
        "command": f"dicom-ai train demo {name} --seed {seed}" + (" --quick" if quick else ""),
        "limits": "- Trained and tested on phantoms only: the numbers measure how well it separates the generator's "
                  "findings from the generator's normal anatomy, nothing about real patients.\n" + recipe.limits,
    }
    plan = recipe.plan if not quick else replace(recipe.plan, version=recipe.plan.version + "+quick")
    card = train_classifier(plan, splits, out_dir, config, record)
    onnx = _export(out_dir)
    return {"out_dir": str(out_dir), "training": card.training, "metrics": card.metrics, "onnx": onnx,
            "reference": _reference(name, out_dir, quick)}


def _reference(name: str, out_dir: Path, quick: bool) -> str:
    """The drift reference the node compares arriving studies with: phantom DICOM studies as the node
    receives them, through its inference path (`dicom-ai train reference` does the same alone)."""
    from dicom_ai.train.reference import demo_reference

    card = demo_reference(name, out_dir, cases=10 if quick else None)
    return card.reference.source if card.reference else ""


def _export(out_dir: Path) -> dict[str, Any]:
    """Ship the ONNX fast path with every demo: the same weights, checked against torch."""
    from dicom_ai.infer.export import export_onnx

    result = export_onnx(out_dir)
    return {"path": str(result.path), "max_difference": result.max_difference, "bytes": result.size_bytes}


def _draw(recipe: DemoRecipe, seed: int, split: str, count: int) -> TensorSplit:
    """`count` phantoms, half with the finding, preprocessed to the network input (+ masks)."""
    jobs = [(recipe.generator, recipe.render_size, seed, SPLIT_IDS[split], i, i % 2 == 0) for i in range(count)]
    workers = min(2, os.cpu_count() or 1)
    if count >= 64 and workers > 1:
        rendered = _render_in_processes(jobs, workers)
    else:
        rendered = [render_job(job) for job in jobs]
    spec = recipe.plan.input
    prepare: Callable[[np.ndarray], torch.Tensor] = (
        (lambda a: preprocess_volume(a.astype(np.float32), spec)) if spec.dims == 3 else (lambda a: preprocess(a, spec))
    )
    return TensorSplit(
        x=torch.stack([prepare(image) for image, _ in rendered]),
        y=torch.tensor([1.0 if finding else 0.0 for *_, finding in jobs]),
        masks=torch.stack([mask_at(mask, spec.size) for _, mask in rendered]),
    )


def _render_in_processes(jobs: list[tuple[str, tuple[int, ...], int, int, int, bool]], workers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Render in fresh processes with one BLAS thread each: two busy BLAS pools on two cores thrash."""
    saved = {name: os.environ.get(name) for name in BLAS_THREAD_VARIABLES}
    os.environ.update({name: "1" for name in BLAS_THREAD_VARIABLES})
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(pool.map(render_job, jobs, chunksize=16))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def render_job(job: tuple[str, tuple[int, ...], int, int, int, bool]) -> tuple[np.ndarray, np.ndarray]:
    """Render one phantom: (image or HU volume, finding mask). Module-level so process pools can run it."""
    import importlib

    generator, size, seed, split, index, finding = job
    module, function = generator.split(":")
    draw = getattr(importlib.import_module(module), function)
    rng = np.random.default_rng([seed, split, index])
    if len(size) == 3:
        phantom = draw(rng, finding=finding, shape=tuple(size))
        return phantom.volume_hu, phantom.finding_mask
    if "mammography" in module:
        view = "CC" if rng.random() < 0.5 else "MLO"
        side = "L" if rng.random() < 0.5 else "R"
        phantom = draw(rng, finding=finding, size=tuple(size), view=view, laterality=side)
    else:
        phantom = draw(rng, finding=finding, size=tuple(size))
    return phantom.image, phantom.finding_mask
