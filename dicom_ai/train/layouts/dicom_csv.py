"""Any folder of DICOM files plus a CSV of labels: the layout for a site's own exported data.

The CSV names its images by relative `path` (or `file`), by SOPInstanceUID, or by Study/Series
Instance UID (the label then applies to every file of that study or series). UIDs are matched by
reading the headers only. The group is the PatientID, so one patient never spans two splits.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dicom_ai.train.layouts.files import require_folder, walk_files
from dicom_ai.train.layouts.samples import LabelledSet, LayoutError, Sample
from dicom_ai.train.layouts.tables import Row, read_rows

log = logging.getLogger(__name__)

NAME = "dicom-csv"
DEFAULT_CSV = "labels.csv"
DEFAULT_LABEL_COLUMN = "label"
KEY_COLUMNS = ("path", "file", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
UID_COLUMNS = KEY_COLUMNS[2:]
HEADER_TAGS = ("PatientID", "Modality", *UID_COLUMNS)


@dataclass(frozen=True)
class Header:
    """What is read from one file's header."""

    path: Path
    values: dict[str, str]


def matches(root: Path) -> bool:
    """labels.csv (or a single CSV) with a "label" and a key column, next to DICOM files."""
    csv_path = _default_csv(root)
    if csv_path is None:
        return False
    try:
        with csv_path.open(encoding="utf-8-sig") as handle:
            first = handle.readline()
    except (OSError, UnicodeDecodeError):
        return False
    columns = {name.strip() for name in first.replace(";", ",").replace("\t", ",").split(",")}
    if DEFAULT_LABEL_COLUMN not in columns or not columns & set(KEY_COLUMNS):
        return False
    return any(_dicom_candidates(root, limit=1))


def read(
    root: Path,
    *,
    csv: str | Path | None = None,
    label_column: str = DEFAULT_LABEL_COLUMN,
    key_column: str | None = None,
    skip_missing: bool = False,
) -> LabelledSet:
    """Label each DICOM file named by a CSV row; classes are the distinct label values, sorted."""
    root = require_folder(root)
    csv_path = Path(csv) if csv is not None else _default_csv(root)
    if csv_path is None:
        raise LayoutError(f"{root}: no {DEFAULT_CSV} (pass csv=... to name the label file)")
    if not csv_path.is_absolute():
        csv_path = root / csv_path
    header, rows = read_rows(csv_path, (label_column,))
    key = key_column or next((name for name in KEY_COLUMNS if name in header), None)
    if key is None or key not in header:
        raise LayoutError(f"{csv_path}: needs a key column, one of {', '.join(KEY_COLUMNS)}; the header has {', '.join(header)}")
    for row in rows:
        if not row.values[label_column]:
            raise LayoutError(f"{row.where(csv_path)}: empty {label_column}")
        if not row.values[key]:
            raise LayoutError(f"{row.where(csv_path)}: empty {key}")

    if key in UID_COLUMNS:
        headers = _scan(root, csv_path)
        by_key: dict[str, list[Header]] = defaultdict(list)
        for found in headers:
            by_key[found.values.get(key, "")].append(found)
    else:
        by_key = {}
    classes = _classes({row.values[label_column] for row in rows})
    chosen: dict[Path, tuple[int, Header, Row]] = {}
    missing = 0
    for row in rows:
        matched = by_key.get(row.values[key], []) if key in UID_COLUMNS else _by_path(root, row.values[key], row, csv_path)
        if not matched:
            if not skip_missing:
                raise LayoutError(f"{row.where(csv_path)}: no DICOM file with {key} {row.values[key]!r} under {root} (skip_missing=True skips such rows)")
            missing += 1
            continue
        label = classes.index(row.values[label_column])
        for found in matched:
            if found.path in chosen and chosen[found.path][0] != label:
                other = chosen[found.path][2]
                raise LayoutError(f"{row.where(csv_path)}: {found.path} already labelled {classes[chosen[found.path][0]]!r} on line {other.line}")
            chosen[found.path] = (label, found, row)
    if not chosen:
        raise LayoutError(f"{csv_path}: none of its {len(rows)} rows matched a DICOM file under {root}")
    samples, no_patient = [], 0
    for path, (label, found, _) in sorted(chosen.items()):
        group = found.values.get("PatientID", "")
        if not group:
            no_patient += 1
            group = found.values.get("StudyInstanceUID") or path.stem
        samples.append(Sample(path=path, label=label, group=group))
    modalities = Counter(found.values.get("Modality", "") or "OT" for _, found, _ in chosen.values())
    notes = [f"labels from {csv_path.name} column {label_column!r}, matched by {key}; group = PatientID"]
    if missing:
        notes.append(f"{missing} CSV rows without a DICOM file: skipped")
    if no_patient:
        notes.append(f"{no_patient} files without PatientID: grouped by StudyInstanceUID")
    if len(modalities) > 1:
        notes.append("modalities: " + ", ".join(f"{m} ({n})" for m, n in modalities.most_common()))
    return LabelledSet(
        layout=NAME, root=root, classes=classes, samples=tuple(samples), dims=2, channels=1,
        modality=modalities.most_common(1)[0][0], notes=tuple(notes),
    )


def _default_csv(root: Path) -> Path | None:
    if (root / DEFAULT_CSV).is_file():
        return root / DEFAULT_CSV
    found = [p for p in root.glob("*.csv") if not p.name.startswith(".")]
    return found[0] if len(found) == 1 else None


def _dicom_candidates(root: Path, limit: int | None = None) -> Iterator[Path]:
    """Files that may be DICOM: *.dcm, or no suffix at all (as PACS exports often write them)."""
    count = 0
    for path in walk_files(root):
        if path.suffix.lower() in (".dcm", ".dicom") or not path.suffix:
            yield path
            count += 1
            if limit is not None and count >= limit:
                return


def _read_header(path: Path) -> Header | None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
    except (InvalidDicomError, OSError, ValueError):
        return None
    return Header(path, {tag: str(ds.get(tag, "") or "").strip() for tag in HEADER_TAGS})


def _scan(root: Path, csv_path: Path) -> list[Header]:
    headers, skipped = [], 0
    for path in _dicom_candidates(root):
        found = _read_header(path)
        if found is None:
            skipped += 1
        else:
            headers.append(found)
    if skipped:
        log.info("%s: %d files are not DICOM, ignored", root, skipped)
    if not headers:
        raise LayoutError(f"{root}: no DICOM files found for the UIDs in {csv_path}")
    return headers


def _by_path(root: Path, relative: str, row: Row, csv_path: Path) -> list[Header]:
    path = root / relative.replace("\\", "/")  # CSVs written on Windows
    if not path.is_file():
        return []
    found = _read_header(path)
    if found is None:
        raise LayoutError(f"{row.where(csv_path)}: {path} is not a readable DICOM file")
    return [found]


def _classes(values: set[str]) -> tuple[str, ...]:
    """Distinct label values, in numeric order when they are all numbers."""
    try:
        return tuple(sorted(values, key=float))
    except ValueError:
        return tuple(sorted(values))
