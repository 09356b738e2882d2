"""`dicom-ai train dataset`: a binary classifier from a seed dataset's folder, written as a model.

The layout reader (train.layouts) gives labelled files grouped by patient; splits never share a
patient; each file is decoded the way inference decodes it (DICOM through the display chain,
volumes in modality units) and preprocessed by the same functions, then train_classifier fits,
evaluates and writes the folder. Multi-class layouts are trained as "positive classes vs the
rest" (`--option positive=...`), since every label the node reports needs a code and a threshold.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dicom_ai.infer.card import ArchitectureSpec, CodeSpec, InputSpec
from dicom_ai.infer.preprocess import preprocess, preprocess_volume
from dicom_ai.train.classifier import ClassifierPlan, TensorSplit, mask_at, train_classifier
from dicom_ai.train.engine import FitConfig
from dicom_ai.train.layouts import LabelledSet, Sample, load_array, load_mask, plan_splits, read_dataset
from dicom_ai.train.layouts import msd as msd_layout

log = logging.getLogger(__name__)

# Codes for the positive classes of the seed datasets; anything else needs --code.
KNOWN_CODES: dict[str, CodeSpec] = {
    "pneumonia": CodeSpec(value="233604007", scheme="SCT", meaning="Pneumonia"),
    "polyps": CodeSpec(value="68496003", scheme="SCT", meaning="Polyp of colon"),
    "esophagitis": CodeSpec(value="16761005", scheme="SCT", meaning="Esophagitis"),
    "ulcerative-colitis": CodeSpec(value="64766004", scheme="SCT", meaning="Ulcerative colitis"),
}
# Class names whose meaning depends on the dataset: RSNA's "cancer" is breast cancer, while an MSD
# task's "cancer" label (liver, pancreas, lung) is not, so it is looked up for that layout only.
LAYOUT_CODES: dict[str, dict[str, CodeSpec]] = {
    "rsna-mammo": {"cancer": CodeSpec(value="254837009", scheme="SCT", meaning="Malignant neoplasm of breast")},
}
GATES = {"CR": ["CR", "DX"], "DX": ["CR", "DX"]}
SMALL_DENSENET_2D: dict[str, Any] = {"init_features": 16, "growth_rate": 16, "block_config": [3, 6, 12], "bn_size": 2}
SMALL_DENSENET_3D: dict[str, Any] = {"init_features": 8, "growth_rate": 8, "block_config": [2, 4, 6], "bn_size": 2}
DENSENET121_BLOCKS = (6, 12, 24, 16)
GRADCAM_2D = ("features.denseblock2", "features.denseblock3", "class_layers.relu")
GRADCAM_3D = ("features.denseblock2", "features.denseblock3", "class_layers.relu")
INTENDED_USE = (
    "NOT FOR CLINICAL USE. Trained by dicom-ai train on {dataset}; research and integration testing only "
    "until validated on the site's own patients under its governance."
)


class TrainingError(Exception):
    """The dataset cannot be trained as asked; the message says what to change."""


@dataclass(frozen=True)
class DatasetTraining:
    """What the admin asked for on the command line."""

    root: Path
    out: Path
    layout: str = "auto"
    options: tuple[tuple[str, Any], ...] = ()
    name: str | None = None
    code: CodeSpec | None = None
    size: tuple[int, ...] | None = None
    window: tuple[float, float] | None = None
    architecture: str = "small"  # small | densenet121
    epochs: int = 20
    batch_size: int = 16
    learning_rate: float = 1e-3
    patience: int = 4
    seed: int = 0
    max_steps_per_epoch: int | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    progress: bool = True
    keep_checkpoints: bool = False
    threads: int | None = None  # None: torch's setting (the core count, or OMP_NUM_THREADS)


def train_from_dataset(request: DatasetTraining) -> dict[str, Any]:
    """Read, split, preprocess, fit, evaluate, write; returns the card's metrics and training record."""
    dataset = read_dataset(request.root, request.layout, **dict(request.options))
    for note in dataset.notes:
        log.info("%s: %s", dataset.layout, note)
    if len(dataset.classes) != 2:
        raise TrainingError(
            f"{request.root}: layout {dataset.layout} gives {len(dataset.classes)} classes ({', '.join(dataset.classes)}); "
            "train one finding against the rest with --option positive=CLASS[,CLASS]"
        )
    positive = dataset.classes[1]
    code = request.code or known_code(dataset.layout, positive)
    if code is None:
        raise TrainingError(f"no code known for the positive class {positive!r}: pass --code SCT:<value>:<meaning> (or RADLEX:RID...:...)")
    planned = plan_splits(dataset, val=request.val_fraction, test=request.test_fraction, seed=request.seed)
    spec = _input_spec(dataset, request)
    plan = ClassifierPlan(
        name=request.name or _default_name(dataset, positive),
        version="1.0.0",
        display_name=f"{positive} ({dataset.layout})"[:64],
        label=positive[:64],
        code=code,
        input=spec,
        architecture=_architecture(request.architecture, spec),
        intended_use=INTENDED_USE.format(dataset=f"the {dataset.layout} dataset at {dataset.root.name}"),
        gate={"Modality": GATES.get(dataset.modality, [dataset.modality])},
        gradcam_candidates=GRADCAM_3D if spec.dims == 3 else GRADCAM_2D,
        shift_px=0 if spec.dims == 3 else max(1, spec.size[-1] // 28),
    )
    target = _msd_target(dataset, dict(request.options))
    splits = {name: _tensors(samples, dataset, spec, target, name) for name, samples in planned.splits.items()}
    config = FitConfig(
        epochs=request.epochs, batch_size=request.batch_size, learning_rate=request.learning_rate,
        patience=request.patience, seed=request.seed, max_steps_per_epoch=request.max_steps_per_epoch,
        progress=request.progress, num_threads=request.threads or torch.get_num_threads(),
    )
    record = {
        "data": f"{dataset.layout} layout at {dataset.root}",
        "dataset": {"layout": dataset.layout, "classes": list(dataset.classes), "modality": dataset.modality,
                    "notes": list(dataset.notes) + list(planned.notes)},
        "split": f"by patient (group), seed {request.seed}; fixed splits kept where the dataset has them",
        "seed": request.seed,
        "command": _command(request),
    }
    card = train_classifier(plan, splits, request.out, config, record, keep_checkpoints=request.keep_checkpoints)
    return {"out": str(request.out), "metrics": card.metrics, "training": card.training}


def known_code(layout: str, positive: str) -> CodeSpec | None:
    """The code of a seed dataset's positive class, or None when the name alone does not settle it."""
    key = positive.lower()
    return LAYOUT_CODES.get(layout, {}).get(key) or KNOWN_CODES.get(key)


def _input_spec(dataset: LabelledSet, request: DatasetTraining) -> InputSpec:
    if dataset.dims == 3:
        size = request.size or (32, 96, 96)
        window = request.window if request.window is not None else ((40.0, 400.0) if dataset.modality == "CT" else None)
        return InputSpec(size=tuple(size), channels=1, normalize="zscore", window=window)
    return InputSpec(size=tuple(request.size or (224, 224)), channels=dataset.channels, normalize="zscore")


def _architecture(choice: str, spec: InputSpec) -> ArchitectureSpec:
    base = {"spatial_dims": spec.dims, "in_channels": spec.channels, "out_channels": 1}
    if choice == "small":
        architecture = ArchitectureSpec(name="DenseNet", kwargs=base | (SMALL_DENSENET_3D if spec.dims == 3 else SMALL_DENSENET_2D))
    elif choice == "densenet121":
        architecture = ArchitectureSpec(name="DenseNet121", kwargs=base)
    else:
        raise TrainingError(f"architecture {choice!r} unknown; choose small or densenet121")
    # The stem and each transition halve the input: a smaller side pools to nothing (a torch error mid-fit).
    halvings = len(architecture.kwargs.get("block_config", DENSENET121_BLOCKS)) + 1
    if min(spec.size) < 2**halvings:
        raise TrainingError(f"--size {'x'.join(map(str, spec.size))} is too small for the {choice} network: "
                            f"it halves the input {halvings} times, so each side must be at least {2**halvings}")
    return architecture


def _default_name(dataset: LabelledSet, positive: str) -> str:
    words = "".join(c if c.isalnum() else "-" for c in f"{dataset.layout}-{positive}".lower())
    return "-".join(part for part in words.split("-") if part)[:64]


def _msd_target(dataset: LabelledSet, options: dict[str, Any]) -> int | None:
    if dataset.layout != msd_layout.NAME:
        return None
    return msd_layout.target_index(dataset.root, options.get("target_label"))


def _tensors(samples: list[Sample], dataset: LabelledSet, spec: InputSpec, target: int | None, split: str) -> TensorSplit:
    if not samples:
        raise TrainingError(f"the {split} split is empty: the dataset is too small to split by patient")
    x: torch.Tensor | None = None  # filled in place: a list then a stack would hold the split twice
    ys, masks = [], []
    for index, sample in enumerate(tqdm(samples, desc=f"reading {split}", unit="file", leave=False)):
        array = load_array(sample, dataset)
        tensor = preprocess_volume(array, spec) if spec.dims == 3 else preprocess(array, spec)
        if x is None:
            x = torch.empty((len(samples), *tensor.shape), dtype=tensor.dtype)
        x[index] = tensor
        ys.append(float(sample.label))
        if target is not None and sample.mask is not None:
            masks.append(mask_at(load_mask(sample) == target, spec.size))
    assert x is not None
    log.info("%s: %d file(s), %d positive", split, len(ys), int(sum(ys)))
    return TensorSplit(
        x=x, y=torch.tensor(ys), masks=torch.stack(masks) if masks and len(masks) == len(ys) else None
    )


def _command(request: DatasetTraining) -> str:
    parts = ["dicom-ai", "train", "dataset", str(request.root), "--out", str(request.out), "--layout", request.layout,
             "--seed", str(request.seed), "--epochs", str(request.epochs)]
    for key, value in request.options:
        parts += ["--option", f"{key}={','.join(map(str, value)) if isinstance(value, (list, tuple)) else value}"]
    if request.size:
        parts += ["--size", "x".join(map(str, request.size))]
    return shlex.join(parts)
