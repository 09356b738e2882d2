"""The records every dataset layout produces, patient-level splitting, and reading one sample.

Why patient-level: images of one patient (or one breast) are strongly correlated, so a model
evaluated on a patient it was trained on looks better than it is. Every split here moves whole
groups; fixed splits of a published dataset are kept where they are usable.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

# A fixed split smaller than this share of what was asked for (e.g. the Kaggle pneumonia
# "val" folder: 16 of 5,856 images) cannot measure anything and is re-drawn from the training set.
MIN_FIXED_SHARE = 0.5

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PILLOW_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

Channels = Literal[1, 3]  # grayscale or RGB, as InputSpec.channels


class LayoutError(ValueError):
    """A dataset folder does not match its layout, or a file/CSV line in it is unusable; says which."""


@dataclass(frozen=True)
class Sample:
    """One labelled image (or volume) of a dataset."""

    path: Path  # image file: JPEG/PNG, DICOM, or NIfTI volume
    label: int  # index into LabelledSet.classes
    group: str  # patient id (or patient+breast): never split across train/val/test
    split: str | None = None  # "train" / "val" / "test" when the dataset fixes it, else None
    mask: Path | None = None  # segmentation volume (MSD) if any


@dataclass(frozen=True)
class LabelledSet:
    """A dataset read from one folder: what the trainer needs, and what the model card says about it."""

    layout: str  # layout name, e.g. "pneumonia"
    root: Path
    classes: tuple[str, ...]  # class names; for binary tasks ("negative-name", "positive-name")
    samples: tuple[Sample, ...]
    dims: int  # 2 or 3
    channels: Channels  # 1 (grayscale) or 3 (RGB); checked at run time too, for callers without types
    modality: str  # DICOM modality the data is: CR/DX, ES, MR/CT, MG ...
    notes: tuple[str, ...] = ()  # what was skipped/deduplicated, in words (logged and put in the model card)
    channel: int = 0  # which channel of a 4-D (multi-channel) NIfTI volume load_array returns (MSD BraTS)

    def __post_init__(self) -> None:
        if self.dims not in (2, 3):
            raise LayoutError(f"{self.root}: dims must be 2 or 3, not {self.dims}")
        if self.channels not in (1, 3):
            raise LayoutError(f"{self.root}: channels must be 1 or 3, not {self.channels}")
        for sample in self.samples:
            if not 0 <= sample.label < len(self.classes):
                raise LayoutError(f"{sample.path}: label {sample.label} is not an index into classes {self.classes}")
            if sample.split is not None and sample.split not in SPLITS:
                raise LayoutError(f"{sample.path}: split {sample.split!r} is not one of {SPLITS}")

    def label_counts(self) -> dict[str, int]:
        """Samples per class name, for logs and the model card."""
        counts = Counter(sample.label for sample in self.samples)
        return {name: counts.get(index, 0) for index, name in enumerate(self.classes)}


@dataclass(frozen=True)
class SplitPlan:
    """Samples per split, and in words what was changed from the dataset's own splits."""

    splits: dict[str, list[Sample]]
    notes: tuple[str, ...]


def split_samples(dataset: LabelledSet, *, val: float = 0.15, test: float = 0.15, seed: int = 0) -> dict[str, list[Sample]]:
    """Samples per split ("train", "val", "test"), no group in two splits; see `plan_splits`."""
    plan = plan_splits(dataset, val=val, test=test, seed=seed)
    for note in plan.notes:
        log.info("%s: %s", dataset.layout, note)
    return plan.splits


def plan_splits(dataset: LabelledSet, *, val: float = 0.15, test: float = 0.15, seed: int = 0) -> SplitPlan:
    """Split by group, keeping the dataset's fixed splits where it has usable ones.

    A group found in several fixed splits moves whole to the split holding most of its samples
    (ties: test, then val). A fixed val/test split smaller than half the share asked for is pooled
    back into train and re-drawn from it by group. Samples without a fixed split are split by group,
    stratified by each group's rarest label, the same way for the same seed.
    """
    if val < 0 or test < 0 or val + test >= 1:
        raise LayoutError(f"split fractions val={val}, test={test}: each must be >= 0 and together < 1")
    notes: list[str] = []
    groups = _groups(dataset.samples)
    if not any(sample.split for sample in dataset.samples):
        return SplitPlan(_assign(groups, {"train": 1 - val - test, "val": val, "test": test}, seed), ())

    home = {name: _home_split(members) for name, members in groups.items()}
    moved = sum(1 for name, members in groups.items() for s in members if s.split is not None and s.split != home[name])
    if moved:
        notes.append(f"{moved} samples moved to another fixed split so that no patient is in two splits")
    total = len(dataset.samples)
    kept: dict[str, dict[str, list[Sample]]] = {split: {} for split in SPLITS}
    pool: dict[str, list[Sample]] = {}
    for split, fraction in (("val", val), ("test", test)):
        size = sum(len(members) for name, members in groups.items() if home[name] == split)
        if size and size >= MIN_FIXED_SHARE * fraction * total:
            continue
        if size:
            notes.append(f"the fixed {split} split ({size} samples) is too small for {fraction:.0%}: pooled into train and re-drawn from it by patient")
        elif fraction:
            notes.append(f"no fixed {split} split: drawn from the training samples by patient")
        for name in groups:
            if home[name] == split:
                home[name] = None
    for name, members in groups.items():
        fixed = home[name]
        if fixed is None or fixed == "train":
            pool[name] = members
        else:
            kept[fixed][name] = members
    wanted = {split: fraction * total for split, fraction in (("val", val), ("test", test))}
    pool_size = sum(len(members) for members in pool.values())
    fractions = {split: 0.0 if kept[split] or not pool_size else min(wanted[split] / pool_size, 0.45) for split in ("val", "test")}
    fractions["train"] = 1 - fractions["val"] - fractions["test"]
    drawn = _assign(pool, fractions, seed)
    splits = {split: drawn[split] + [s for members in kept[split].values() for s in members] for split in SPLITS}
    return SplitPlan({split: _sorted(samples) for split, samples in splits.items()}, tuple(notes))


def _groups(samples: tuple[Sample, ...] | list[Sample]) -> dict[str, list[Sample]]:
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.group].append(sample)
    return dict(groups)


def _home_split(members: list[Sample]) -> str | None:
    counts = Counter(sample.split for sample in members if sample.split is not None)
    if not counts:
        return None
    return max(counts, key=lambda split: (counts[split], SPLITS.index(split)))


def _assign(groups: dict[str, list[Sample]], fractions: dict[str, float], seed: int) -> dict[str, list[Sample]]:
    """Greedy stratified assignment of whole groups: each goes where its stratum lacks most samples."""
    label_counts = Counter(sample.label for members in groups.values() for sample in members)
    strata: dict[int, list[str]] = defaultdict(list)
    for name in sorted(groups):
        rarest = min({s.label for s in groups[name]}, key=lambda label: (label_counts[label], label))
        strata[rarest].append(name)
    rng = np.random.default_rng(seed)
    out: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    for label in sorted(strata):
        names = strata[label]
        order = rng.permutation(len(names))
        shuffled = sorted((names[i] for i in order), key=lambda name: -len(groups[name]))  # stable: big groups first
        size = sum(len(groups[name]) for name in names)
        filled = dict.fromkeys(SPLITS, 0)
        for name in shuffled:
            split = max(SPLITS, key=lambda s: (fractions.get(s, 0.0) * size - filled[s], s == "train"))
            filled[split] += len(groups[name])
            out[split].extend(groups[name])
    return {split: _sorted(samples) for split, samples in out.items()}


def _sorted(samples: list[Sample]) -> list[Sample]:
    return sorted(samples, key=lambda sample: (sample.group, str(sample.path)))


def load_array(sample: Sample, dataset: LabelledSet) -> np.ndarray:
    """The sample's pixels: uint8 (H, W) or (H, W, 3) for 2-D sets, float32 (D, H, W) in stored units for 3-D."""
    path = sample.path
    if not path.is_file():
        raise LayoutError(f"{path}: file not found (listed by the {dataset.layout} dataset at {dataset.root})")
    if dataset.dims == 3:
        if not _is_nifti(path):
            raise LayoutError(f"{path}: 3-D samples must be NIfTI volumes (.nii/.nii.gz)")
        return _nifti(path, dataset.channel, np.float32)
    if path.suffix.lower() in PILLOW_SUFFIXES:
        return _pillow(path, dataset.channels)
    return _dicom(path, dataset.channels)


def load_mask(sample: Sample) -> np.ndarray:
    """The sample's segmentation (int16 (D, H, W), same axes as load_array); LayoutError if it has none."""
    if sample.mask is None:
        raise LayoutError(f"{sample.path}: this sample has no segmentation mask")
    if not sample.mask.is_file():
        raise LayoutError(f"{sample.mask}: mask file not found")
    return _nifti(sample.mask, 0, np.int16)


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _pillow(path: Path, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in ("I;16", "I;16B", "I;16L", "I") and channels == 1:
                values = np.asarray(image, dtype=np.float32)
                low, high = float(values.min()), float(values.max())
                return np.round((values - low) * (255.0 / max(high - low, 1.0))).astype(np.uint8)
            return np.asarray(image.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise LayoutError(f"{path}: cannot read the image: {exc}") from exc


def _dicom(path: Path, channels: int) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    from dicom_ai.infer.pixels import PixelError, color_image, display_image

    try:
        ds = pydicom.dcmread(path)
        if channels == 3:
            rgb = color_image(ds)
            return rgb if rgb is not None else np.repeat(display_image(ds)[..., None], 3, axis=2)
        return display_image(ds)
    except (InvalidDicomError, OSError, PixelError, ValueError, AttributeError) as exc:
        raise LayoutError(f"{path}: cannot read the DICOM image: {exc}") from exc


def _nifti(path: Path, channel: int, dtype: type) -> np.ndarray:
    """A NIfTI volume as (D, H, W) in the orientation the node reads a DICOM axial series in.

    Whatever the file's affine, the voxels are first put in RAS+ (nibabel's closest canonical),
    then ordered as DICOM's patient axes (LPS) with slices first: D inferior -> superior, H (rows)
    anterior -> posterior, W (columns) right -> left, as a radiologist sees an axial image. A
    model trained on NIfTI then sees at inference what it saw in training.
    """
    import nibabel as nib

    try:
        image = nib.as_closest_canonical(nib.load(str(path)))
        data = image.get_fdata(dtype=np.float32) if dtype is np.float32 else np.asanyarray(image.dataobj)
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
        raise LayoutError(f"{path}: cannot read the NIfTI volume: {exc}") from exc
    if data.ndim == 4:
        if not 0 <= channel < data.shape[3]:
            raise LayoutError(f"{path}: channel {channel} asked for, the volume has {data.shape[3]}")
        data = data[..., channel]
    if data.ndim != 3:
        raise LayoutError(f"{path}: NIfTI data has shape {data.shape}, expected x, y, z (or x, y, z, channels)")
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0))[:, ::-1, ::-1].astype(dtype, copy=False))
