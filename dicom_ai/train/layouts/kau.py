"""KAU-BCMD mammograms: one folder per BI-RADS category ("BIRADS1", "BI-RADS 4", "Birad5", "3"...).

Default task is binary, suspicious (BI-RADS 4, 5, 6: biopsy recommended or known cancer) versus
1-3. Patient grouping: a file name like "P123_L_CC.jpg" or "0042-R-MLO.png" starts with a patient
id (a token of at most three letters then digits, followed by "_" or "-" and more), and all
images with that prefix are one group; any other name is its own group. The notes give how many
images were grouped that way, since a wrong guess here would let one patient into two splits.
Images are read as grayscale (channels 1), as mammograms are.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from dicom_ai.train.layouts.files import DICOM_SUFFIXES, IMAGE_SUFFIXES, require_folder, subfolders, walk_files
from dicom_ai.train.layouts.samples import LabelledSet, LayoutError, Sample

NAME = "kau"
MODALITY = "MG"
CATEGORIES = (1, 2, 3, 4, 5, 6)
DEFAULT_POSITIVE = (4, 5, 6)
MAX_DEPTH = 2  # BI-RADS folders may sit inside e.g. KAU-BCMD/Dataset/

_CATEGORY = re.compile(r"^(?:bi[\s_-]?rads?[\s_-]*)?([1-6])$", re.IGNORECASE)
_PATIENT = re.compile(r"^([A-Za-z]{0,3}\d+)[_-].+$")


def category(folder_name: str) -> int | None:
    """The BI-RADS category a folder name stands for, or None."""
    found = _CATEGORY.match(folder_name.strip())
    return int(found.group(1)) if found else None


def category_folders(root: Path) -> dict[int, Path]:
    """BI-RADS folders at the shallowest level (up to MAX_DEPTH) that has at least two of them."""
    level = [root]
    for _ in range(MAX_DEPTH + 1):
        for folder in level:
            found = {category(p.name): p for p in subfolders(folder) if category(p.name) is not None}
            named = any(not p.name.strip().isdigit() for p in found.values())
            if (len(found) >= 2 and named) or len(found) >= 3:  # bare "1", "2" folders alone are too common
                return found  # type: ignore[return-value]
        level = [child for folder in level for child in subfolders(folder)]
    return {}


def matches(root: Path) -> bool:
    """BI-RADS category folders here or up to two levels down."""
    return bool(category_folders(root))


def patient_id(path: Path) -> str | None:
    """The patient prefix of a file name ("P123_L_CC" -> "P123"), None when there is none."""
    found = _PATIENT.match(path.stem)
    return found.group(1) if found else None


def read(root: Path, *, positive: Iterable[int] | None = DEFAULT_POSITIVE) -> LabelledSet:
    """Images below each category folder; binary by `positive` categories, or one class per category if None."""
    root = require_folder(root)
    found = category_folders(root)
    if not found:
        raise LayoutError(f"{root}: no BI-RADS category folders (BIRADS1..BIRADS6, 'BI-RADS 4', '1'..'6') found")
    if positive is None:
        cats = sorted(found)
        classes = tuple(f"BI-RADS {c}" for c in cats)
        label_of = {c: cats.index(c) for c in cats}
    else:
        wanted = {int(c) for c in positive}
        if not wanted or not wanted <= set(CATEGORIES):
            raise LayoutError(f"{root}: positive BI-RADS categories must be among {CATEGORIES}, got {sorted(wanted)}")
        classes = (_name(set(CATEGORIES) - wanted), _name(wanted))
        label_of = {c: int(c in wanted) for c in found}
    samples = []
    for cat, folder in sorted(found.items()):
        for path in walk_files(folder, IMAGE_SUFFIXES + DICOM_SUFFIXES):
            group = patient_id(path)
            samples.append(Sample(path=path, label=label_of[cat], group=group or path.stem))
    if not samples:
        raise LayoutError(f"{root}: the BI-RADS folders {sorted(p.name for p in found.values())} hold no images")
    named = sum(1 for s in samples if patient_id(s.path) is not None)
    per_group = Counter(s.group for s in samples)
    notes = [
        f"categories found: {', '.join(f'BI-RADS {c} ({sum(1 for s in samples if s.path.is_relative_to(found[c]))})' for c in sorted(found))}",
        f"{named} of {len(samples)} images grouped by file-name patient prefix into "
        f"{len({s.group for s in samples if patient_id(s.path)})} patients; the rest are each their own group",
    ]
    if max(per_group.values()) > 8:
        notes.append(f"largest group has {max(per_group.values())} images: check that the file-name prefix is a patient id")
    return LabelledSet(
        layout=NAME, root=root, classes=classes, samples=tuple(samples), dims=2, channels=1,
        modality=MODALITY, notes=tuple(notes),
    )


def _name(cats: set[int]) -> str:
    """'BI-RADS 1-3' for a run of categories, 'BI-RADS 1/3' otherwise."""
    ordered = sorted(cats)
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 1:
        return f"BI-RADS {ordered[0]}-{ordered[-1]}"
    return "BI-RADS " + "/".join(str(c) for c in ordered)
