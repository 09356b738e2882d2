"""Turn stored instances (or files on disk) into Study objects with one header per series."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from dicom_ai.domain import Instance, Series, Study

log = logging.getLogger(__name__)


class StudyReadError(Exception):
    """A file that should hold a DICOM instance cannot be read; the message names it."""


def read_header(path: Path) -> Dataset:
    """A dataset without its pixel data: routing and encoding need attributes only."""
    try:
        return dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise StudyReadError(f"{path}: cannot read DICOM header: {exc}") from exc


def build_study(instances: Sequence[Instance], read: Callable[[Instance], Dataset] | None = None) -> Study:
    """Group one study's instances by series; each series' header is its first instance's (read by
    `read`, e.g. a cache the caller keeps, else from the file)."""
    if not instances:
        raise ValueError("a study needs at least one instance")
    by_series: dict[str, list[Instance]] = defaultdict(list)
    for instance in instances:
        by_series[instance.series_instance_uid].append(instance)
    series = tuple(
        Series(series_instance_uid=uid, instances=tuple(members),
               header=read(members[0]) if read is not None else read_header(members[0].path))
        for uid, members in by_series.items()
    )
    return Study(study_instance_uid=instances[0].study_instance_uid, series=series)


def studies_from_paths(paths: Iterable[Path]) -> list[Study]:
    """Read DICOM files (folders are walked) into studies: for `dicom-ai rules test`."""
    instances: dict[str, list[Instance]] = defaultdict(list)
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            try:
                header = dcmread(path, stop_before_pixels=True, specific_tags=[
                    "SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID"])
            except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
                if root.is_dir():
                    log.info("skipping %s: not DICOM (%s)", path, exc)
                    continue
                raise StudyReadError(f"{path}: not a DICOM file: {exc}") from exc
            missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if k not in header]
            if missing:
                raise StudyReadError(f"{path}: missing {', '.join(missing)}")
            instances[header.StudyInstanceUID].append(
                Instance(
                    sop_instance_uid=header.SOPInstanceUID,
                    sop_class_uid=str(header.get("SOPClassUID", "")),
                    series_instance_uid=header.SeriesInstanceUID,
                    study_instance_uid=header.StudyInstanceUID,
                    path=path,
                )
            )
    return [build_study(members) for members in instances.values()]
