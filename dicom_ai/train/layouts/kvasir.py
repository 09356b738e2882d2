"""Kvasir v2 endoscopy: one folder per class of *.jpg (RGB), the folder layout with known names.

Multi-class by default; `positive=("polyps",)` makes a binary task ("other", "polyps").
Kvasir has no patient ids, so each image is its own group (the notes say so).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from dicom_ai.train.layouts import folders
from dicom_ai.train.layouts.files import require_folder
from dicom_ai.train.layouts.samples import LabelledSet, LayoutError

NAME = "kvasir"
MODALITY = "ES"  # endoscopy
CLASS_NAMES = frozenset({
    "dyed-lifted-polyps", "dyed-resection-margins", "esophagitis", "normal-cecum",
    "normal-pylorus", "normal-z-line", "polyps", "ulcerative-colitis",
})


def matches(root: Path) -> bool:
    """Two or more image folders, all with Kvasir class names."""
    found = {folder.name.lower() for folder in folders.class_folders(root)}
    return len(found) >= 2 and found <= CLASS_NAMES


def read(root: Path, *, positive: Iterable[str] | None = None) -> LabelledSet:
    """All class folders found (a subset of the eight is accepted, and noted)."""
    root = require_folder(root)
    found = folders.class_folders(root)
    unknown = [f.name for f in found if f.name.lower() not in CLASS_NAMES]
    if unknown or len(found) < 2:
        raise LayoutError(f"{root}: Kvasir class folders expected ({sorted(CLASS_NAMES)}), found {[f.name for f in found]}")
    notes: tuple[str, ...] = ()
    missing = sorted(CLASS_NAMES - {f.name.lower() for f in found})
    if missing:
        notes = (f"Kvasir classes missing from this copy: {', '.join(missing)}",)
    return folders.read_class_folders(
        NAME, root, found, modality=MODALITY, channels=3, positive=positive, notes=notes,
    )
