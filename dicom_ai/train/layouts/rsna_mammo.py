"""RSNA Screening Mammography Breast Cancer Detection: train.csv + train_images/<patient>/<image>.dcm.

One CSV row per image; its `cancer` value is the breast's (all views of a breast share it), so
the label is the row's. Both breasts of a patient are one group: cancer in one breast changes
the reading of the other, and the patient must not be in two splits. Kaggle copies are often
partial (a few patients downloaded): rows without a file are skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from dicom_ai.train.layouts.files import require_folder
from dicom_ai.train.layouts.samples import LabelledSet, LayoutError, Sample
from dicom_ai.train.layouts.tables import read_rows

NAME = "rsna-mammo"
CSV_NAME = "train.csv"
IMAGES = "train_images"
CLASSES = ("no cancer", "cancer")
MODALITY = "MG"
REQUIRED = ("patient_id", "image_id", "laterality", "view", "cancer")
DEFAULT_VIEWS = ("CC", "MLO")  # the two standard screening views; the others (ML, LM, AT...) are rare extras
SUFFIXES = (".dcm", ".png")  # .png: the widely shared pre-converted copies


def matches(root: Path) -> bool:
    """train.csv next to a train_images/ folder."""
    return (root / CSV_NAME).is_file() and (root / IMAGES).is_dir()


def read(root: Path, *, views: Iterable[str] | None = DEFAULT_VIEWS, csv: str | Path | None = None) -> LabelledSet:
    """Images of the chosen views (None: all) that exist on disk, labelled by the row's `cancer`."""
    root = require_folder(root)
    csv_path = root / (csv or CSV_NAME)
    _, rows = read_rows(csv_path, REQUIRED)
    wanted = None if views is None else {view.upper() for view in views}
    samples, missing, other_views = [], 0, Counter[str]()
    for row in rows:
        values = row.values
        cancer = values["cancer"]
        if cancer not in ("0", "1"):
            raise LayoutError(f"{row.where(csv_path)}: cancer must be 0 or 1, found {cancer!r}")
        if not values["patient_id"] or not values["image_id"]:
            raise LayoutError(f"{row.where(csv_path)}: patient_id and image_id must not be empty")
        view = values["view"].upper()
        if wanted is not None and view not in wanted:
            other_views[view] += 1
            continue
        path = _image(root / IMAGES / values["patient_id"], values["image_id"])
        if path is None:
            missing += 1
            continue
        samples.append(Sample(path=path, label=int(cancer), group=values["patient_id"]))
    if not samples:
        raise LayoutError(
            f"{root / IMAGES}: none of the {len(rows)} images in {csv_path} found as <patient_id>/<image_id>.dcm"
            + (f" with views {sorted(wanted)}" if wanted else "")
        )
    notes = []
    if missing:
        notes.append(f"{missing} images listed in {CSV_NAME} not found under {IMAGES}/: skipped")
    if other_views:
        notes.append("views not used: " + ", ".join(f"{view or '(blank)'} ({n})" for view, n in sorted(other_views.items())))
    notes.append("label per breast (all views of a breast share the row's cancer value); group = patient_id")
    return LabelledSet(
        layout=NAME, root=root, classes=CLASSES, samples=tuple(samples), dims=2, channels=1,
        modality=MODALITY, notes=tuple(notes),
    )


def _image(folder: Path, image_id: str) -> Path | None:
    for suffix in SUFFIXES:
        path = folder / f"{image_id}{suffix}"
        if path.is_file():
            return path
    return None
