"""Kaggle "Chest X-Ray Images (Pneumonia)": chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg.

The published zip holds a second copy nested as chest_xray/chest_xray/... and macOS debris
(__MACOSX/, ._* files): the copy is dropped by (split, class, file name), the debris ignored.
Patient ids come from file names, so that one patient's images stay in one split:
NORMAL "IM-0115-0001.jpeg" -> "IM-0115", "NORMAL2-IM-1427-0001.jpeg" -> "NORMAL2-IM-1427";
PNEUMONIA "person1_bacteria_1.jpeg" -> "person1".
"""

from __future__ import annotations

import re
from pathlib import Path

from dicom_ai.train.layouts.files import IMAGE_SUFFIXES, require_folder, subfolders, walk_files
from dicom_ai.train.layouts.samples import LabelledSet, LayoutError, Sample

NAME = "pneumonia"
CLASSES = ("NORMAL", "PNEUMONIA")
SPLIT_FOLDERS = {"train": "train", "val": "val", "test": "test"}
MODALITY = "CR"

_NORMAL_PATIENT = re.compile(r"^(.*IM-\d+)-\d+$", re.IGNORECASE)
_PNEUMONIA_PATIENT = re.compile(r"^(person\d+)_", re.IGNORECASE)


def matches(root: Path) -> bool:
    """A chest_xray/ folder, or train/ with NORMAL or PNEUMONIA inside."""
    names = {p.name.lower(): p for p in subfolders(root)}
    if "chest_xray" in names:
        return True
    train = names.get("train")
    return train is not None and any(p.name.upper() in CLASSES for p in subfolders(train))


def patient_id(path: Path, class_name: str) -> str | None:
    """The patient part of a file name, or None when the name does not follow the dataset's pattern."""
    pattern = _PNEUMONIA_PATIENT if class_name == "PNEUMONIA" else _NORMAL_PATIENT
    found = pattern.match(path.stem)
    return found.group(1) if found else None


def read(root: Path) -> LabelledSet:
    """Every image once, labelled by its class folder, with its fixed split and patient id."""
    root = require_folder(root)
    chosen: dict[tuple[str, str, str], Path] = {}
    duplicates = other = unnamed = 0
    for path in walk_files(root, IMAGE_SUFFIXES):
        class_name, split = path.parent.name.upper(), path.parent.parent.name.lower()
        if class_name not in CLASSES or split not in SPLIT_FOLDERS:
            other += 1
            continue
        key = (split, class_name, path.name.lower())
        if key in chosen:
            duplicates += 1
            if len(path.parts) >= len(chosen[key].parts):
                continue
        chosen[key] = path
    if not chosen:
        raise LayoutError(f"{root}: no images in {{train,val,test}}/{{NORMAL,PNEUMONIA}}/ below this folder")
    samples = []
    for (split, class_name, _), path in sorted(chosen.items()):
        group = patient_id(path, class_name)
        if group is None:
            unnamed += 1
            group = path.stem
        samples.append(Sample(path=path, label=CLASSES.index(class_name), group=group, split=SPLIT_FOLDERS[split]))
    notes = []
    if duplicates:
        notes.append(f"{duplicates} duplicate images (the nested chest_xray/chest_xray copy) dropped, keeping the shallowest")
    if other:
        notes.append(f"{other} images outside {{train,val,test}}/{{NORMAL,PNEUMONIA}}/ ignored")
    if unnamed:
        notes.append(f"{unnamed} file names without a recognisable patient id: each is its own group")
    notes.append("patient ids from file names (IM-xxxx / personN); some RGB JPEGs converted to grayscale")
    return LabelledSet(
        layout=NAME, root=root, classes=CLASSES, samples=tuple(samples), dims=2, channels=1,
        modality=MODALITY, notes=tuple(notes),
    )
