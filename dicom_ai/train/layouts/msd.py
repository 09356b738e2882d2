"""Medical Segmentation Decathlon task folder: dataset.json, imagesTr/ and labelsTr/ NIfTI volumes.

Classification needs one label per volume: whether its segmentation contains `target_label`
(default the highest label index, usually the tumour). The decathlon's "test" cases have no
labels and are skipped. Each case is its own group (MSD has one volume per patient per task).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from dicom_ai.train.layouts.files import require_folder, stem, subfolders
from dicom_ai.train.layouts.samples import LabelledSet, LayoutError, Sample

log = logging.getLogger(__name__)

NAME = "msd"
DATASET_JSON = "dataset.json"

# dataset.json "modality" values -> DICOM Modality. MR sequences are named by sequence in some tasks.
MODALITIES = {"CT": "CT", "MRI": "MR", "MR": "MR", "PET": "PT", "PT": "PT", "US": "US"}
MR_SEQUENCES = ("FLAIR", "T1", "T1W", "T1GD", "T2", "T2W", "ADC", "DWI")


def task_folder(root: Path) -> Path | None:
    """The folder holding dataset.json: root itself or its only sub-folder that has one."""
    if (root / DATASET_JSON).is_file():
        return root
    found = [p for p in subfolders(root) if (p / DATASET_JSON).is_file()]
    return found[0] if len(found) == 1 else None


def matches(root: Path) -> bool:
    """A dataset.json here or in one sub-folder."""
    return task_folder(root) is not None


def dicom_modality(value: str) -> str | None:
    """DICOM Modality for a dataset.json modality string, None when unknown."""
    value = value.strip().upper()
    if value in MODALITIES:
        return MODALITIES[value]
    return "MR" if value in MR_SEQUENCES else None


def read(root: Path, *, target_label: int | str | None = None, channel: int = 0) -> LabelledSet:
    """Labelled training cases; reads every label volume once to find the target label in it."""
    root = require_folder(root)
    task = task_folder(root)
    if task is None:
        raise LayoutError(f"{root}: no {DATASET_JSON} here or in a single sub-folder; is this an MSD task folder?")
    meta_path = task / DATASET_JSON
    meta = _read_json(meta_path)
    labels = _labels(meta, meta_path)
    target = _target(labels, target_label, meta_path)
    target_name = labels[target]
    modalities = meta.get("modality") or {}
    if not isinstance(modalities, dict) or not modalities:
        raise LayoutError(f"{meta_path}: \"modality\" must be an object like {{\"0\": \"CT\"}}")
    if str(channel) not in modalities:
        raise LayoutError(f"{meta_path}: channel {channel} asked for; \"modality\" lists channels {sorted(modalities)}")
    notes = []
    modality = dicom_modality(str(modalities[str(channel)]))
    if modality is None:
        modality = "OT"
        notes.append(f"modality {modalities[str(channel)]!r} not recognised: recorded as OT")
    if len(modalities) > 1:
        notes.append(f"multi-channel images: channel {channel} ({modalities[str(channel)]}) used")

    samples = []
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        raise LayoutError(f"{meta_path}: \"training\" must be a non-empty list of {{\"image\", \"label\"}} entries")
    for index, entry in enumerate(training):
        where = f"{meta_path} training[{index}]"
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise LayoutError(f"{where}: expected {{\"image\": ..., \"label\": ...}}, found {entry!r}")
        image, mask = _resolve(task, entry["image"], where), _resolve(task, entry["label"], where)
        present = _contains(mask, target)
        samples.append(Sample(path=image, label=int(present), group=stem(image), mask=mask))
    tests = meta.get("test") or []
    if tests:
        notes.append(f"{len(tests)} decathlon test cases have no labels: not used")
    notes.append(f"volume label: whether the segmentation contains label {target} ({target_name})")
    name = str(target_name)
    return LabelledSet(
        layout=NAME, root=root, classes=(f"no {name}", name), samples=tuple(samples), dims=3, channels=1,
        modality=modality, notes=tuple(notes), channel=channel,
    )


def _read_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayoutError(f"{path}: cannot read it as JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise LayoutError(f"{path}: expected a JSON object at the top")
    return meta


def _labels(meta: dict, path: Path) -> dict[int, str]:
    raw = meta.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise LayoutError(f"{path}: \"labels\" must be an object like {{\"0\": \"background\", \"1\": \"tumour\"}}")
    try:
        if all(isinstance(value, int) for value in raw.values()):  # nnU-Net v2 style: {"background": 0}
            return {int(value): str(key) for key, value in raw.items()}
        return {int(key): str(value) for key, value in raw.items()}
    except ValueError as exc:
        raise LayoutError(f"{path}: \"labels\" keys must be integers: {exc}") from exc


def target_index(root: Path, target_label: int | str | None = None) -> int:
    """The label index whose presence makes a volume positive (what `read` used for the same options)."""
    task = task_folder(require_folder(root))
    if task is None:
        raise LayoutError(f"{root}: no {DATASET_JSON} here or in a single sub-folder; is this an MSD task folder?")
    meta_path = task / DATASET_JSON
    return _target(_labels(_read_json(meta_path), meta_path), target_label, meta_path)


def _target(labels: dict[int, str], wanted: int | str | None, path: Path) -> int:
    if wanted is None:
        return max(labels)
    if isinstance(wanted, str) and not wanted.isdigit():
        by_name = {name.lower(): index for index, name in labels.items()}
        if wanted.lower() in by_name:
            return by_name[wanted.lower()]
    elif int(wanted) in labels:
        return int(wanted)
    raise LayoutError(f"{path}: target_label {wanted!r} is not among the labels {labels}")


def _resolve(task: Path, relative: object, where: str) -> Path:
    path = Path(os.path.normpath(task / str(relative)))
    if not path.is_file():
        raise LayoutError(f"{where}: file {path} not found")
    return path


def _contains(mask: Path, target: int) -> bool:
    import nibabel as nib

    try:
        image = nib.load(str(mask))
        # nib.load may return any FileBasedImage; only images backed by an array have voxels.
        data = np.asanyarray(image.dataobj) if isinstance(image, nib.dataobj_images.DataobjImage) else None
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
        raise LayoutError(f"{mask}: cannot read the label volume: {exc}") from exc
    if data is None:
        raise LayoutError(f"{mask}: the label volume is a {type(image).__name__}, not an image with voxel data")
    return bool(np.any(data == target))
