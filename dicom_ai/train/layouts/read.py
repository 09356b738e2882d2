"""Which layout a dataset folder is in, and reading it with that layout's options.

Each layout module knows its own folder signature (`matches`) and reader (`read`); this module
only orders them. The specific signatures are tried first; "folders" (one class per sub-folder)
is the fallback, since Kvasir and KAU folders are also class folders.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from dicom_ai.train.layouts import dicom_csv, folders, kau, kvasir, msd, pneumonia, rsna_mammo
from dicom_ai.train.layouts.files import require_folder
from dicom_ai.train.layouts.samples import LabelledSet, LayoutError

log = logging.getLogger(__name__)

SPECIFIC: tuple[ModuleType, ...] = (msd, rsna_mammo, pneumonia, kau, dicom_csv, kvasir)
FALLBACK = folders
LAYOUTS: dict[str, ModuleType] = {module.NAME: module for module in (*SPECIFIC, FALLBACK)}
AUTO = "auto"
SHOWN_ENTRIES = 12


def detect_layout(root: Path | str) -> str:
    """The name of the one layout the folder matches; LayoutError when none or several do."""
    root = require_folder(Path(root))
    found = [module.NAME for module in SPECIFIC if module.matches(root)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise LayoutError(f"{root}: looks like several layouts ({', '.join(found)}); pass layout= one of them")
    if FALLBACK.matches(root):
        return FALLBACK.NAME
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if not p.name.startswith("."))
    shown = ", ".join(entries[:SHOWN_ENTRIES]) + (f" and {len(entries) - SHOWN_ENTRIES} more" if len(entries) > SHOWN_ENTRIES else "")
    raise LayoutError(
        f"{root}: dataset layout not recognised; it holds {shown or 'nothing'}. Accepted layouts: "
        "msd (dataset.json), rsna-mammo (train.csv + train_images/), pneumonia (chest_xray/ or train/NORMAL), "
        "kau (BIRADS1..6 folders), dicom-csv (labels.csv + DICOM files), kvasir (Kvasir class folders), "
        "folders (one sub-folder of images per class)"
    )


def read_dataset(root: Path | str, layout: str = AUTO, **options: Any) -> LabelledSet:
    """Read a dataset folder; `layout="auto"` detects it. Options are the layout reader's keywords."""
    root = Path(root)
    name = detect_layout(root) if layout == AUTO else layout.lower().replace("_", "-")
    if name not in LAYOUTS:
        raise LayoutError(f"layout {name!r} unknown; accepted: {AUTO}, {', '.join(LAYOUTS)}")
    reader: Callable[..., LabelledSet] = LAYOUTS[name].read
    accepted = [p for p in inspect.signature(reader).parameters if p != "root"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise LayoutError(f"layout {name} has no option {', '.join(unknown)}; its options: {', '.join(accepted) or 'none'}")
    dataset = reader(root, **options)
    log.info("%s: %s layout, %d samples, classes %s", root, name, len(dataset.samples), dataset.label_counts())
    for note in dataset.notes:
        log.info("%s: %s", name, note)
    return dataset


__all__ = ["LAYOUTS", "detect_layout", "read_dataset"]
