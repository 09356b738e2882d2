"""Synthetic corpora for the receive benchmark: CT-, DX- and mammography-sized instances.

Pixels are random noise generated once per corpus (content does not matter to a receiver that
keeps bytes as they are); every instance has its own UIDs so no receiver deduplicates them.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
MG_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.2"


@dataclass(frozen=True)
class CorpusSpec:
    """One corpus: `count` instances of `rows` x `columns` 16-bit pixels."""

    name: str
    sop_class_uid: str
    modality: str
    rows: int
    columns: int
    count: int

    @property
    def pixel_bytes(self) -> int:
        return self.rows * self.columns * 2


FULL_SPECS = (
    CorpusSpec("CT 512x512", CT_IMAGE_STORAGE, "CT", 512, 512, 500),
    CorpusSpec("DX 2048x2048", DX_PRESENTATION_STORAGE, "DX", 2048, 2048, 50),
    CorpusSpec("MG 3328x4096", MG_PRESENTATION_STORAGE, "MG", 4096, 3328, 3),
)


def bench_scale() -> float:
    """BENCH_SCALE (default 1): multiplies every corpus count, e.g. 0.1 for a quick run."""
    raw = os.environ.get("BENCH_SCALE", "1")
    try:
        scale = float(raw)
    except ValueError as exc:
        raise ValueError(f"BENCH_SCALE must be a number, got {raw!r}") from exc
    if not 0 < scale <= 10:
        raise ValueError(f"BENCH_SCALE must be in (0, 10], got {scale}")
    return scale


def scaled(specs: tuple[CorpusSpec, ...], scale: float) -> list[CorpusSpec]:
    """The specs with counts multiplied by `scale`, at least 1 instance (MG at least 2 to have a median)."""
    return [
        CorpusSpec(s.name, s.sop_class_uid, s.modality, s.rows, s.columns, max(2, round(s.count * scale)))
        for s in specs
    ]


def _dataset(spec: CorpusSpec, pixels: bytes, study_uid: str, series_uid: str, number: int) -> Dataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = spec.sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = spec.sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = spec.modality
    ds.PatientID = "BENCH"
    ds.PatientName = "Bench^Synthetic"
    ds.StudyDate = "20260101"
    ds.StudyDescription = f"bench {spec.name}"
    ds.BodyPartExamined = "PHANTOM"  # matches no shipped rule: the receive benchmark never triggers inference
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels
    return ds


def generate(spec: CorpusSpec, folder: Path, instances_per_study: int = 100) -> list[Path]:
    """Write the corpus to `folder` (replacing it) and return its files, sorted."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(20261128)
    pixels = rng.integers(0, 4096, size=spec.rows * spec.columns, dtype=np.uint16).tobytes()
    files: list[Path] = []
    study_uid = series_uid = ""
    for number in range(spec.count):
        if number % instances_per_study == 0:
            study_uid, series_uid = generate_uid(), generate_uid()
        ds = _dataset(spec, pixels, study_uid, series_uid, number + 1)
        path = folder / f"{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    log.info("corpus %s: %d files in %s", spec.name, len(files), folder)
    return files


def copy_as_new_study(source: Path, target_dir: Path) -> tuple[Path, str]:
    """A real image re-identified with fresh UIDs (as tests/conftest does); returns the file and its study UID."""
    ds = dcmread(source)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    target_dir.mkdir(parents=True, exist_ok=True)
    path = target_dir / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.StudyInstanceUID)
