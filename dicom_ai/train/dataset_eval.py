"""`dicom-ai evaluate MODEL --dataset ROOT --layout L`: a model measured on a labelled dataset folder through
the node's own inference path, so a hospital validates it on its own data before switching it on.

The dataset is read by the layouts `dicom-ai train dataset` reads (train/layouts). Every sample goes
through LoadedModel.predict as a DICOM study, exactly as the pipeline runs it: DICOM samples as they
are; JPEG/PNG samples wrapped as a Secondary Capture whose window (center 128, width 256)
maps each stored value onto itself, so the display image the model sees is the picture's own pixels;
NIfTI volumes as a series of slices whose rescale keeps their values. Each sample becomes a
Prediction with the truth the layout gives (its positive class present or absent), evaluated and
reported like the live ones.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UID

from dicom_ai.domain import Prediction, Truth
from dicom_ai.infer.runner import LoadedModel
from dicom_ai.store.performance import SUBGROUPS, age_band
from dicom_ai.train.layouts import LabelledSet, LayoutError, Sample, load_array, read_dataset
from dicom_ai.train.layouts.samples import NIFTI_SUFFIXES, PILLOW_SUFFIXES
from dicom_ai.train.phantom_dicom import deterministic_uid
from dicom_ai.train.reference import StudyScores, score_study

log = logging.getLogger(__name__)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


class DatasetEvaluationError(ValueError):
    """The dataset cannot be evaluated with this model as asked; the message says what to change."""


@dataclass(frozen=True)
class DatasetRun:
    """The dataset's samples scored by the model: one Prediction per sample, and the scored studies."""

    dataset: LabelledSet
    label: str
    predictions: tuple[Prediction, ...]
    studies: tuple[StudyScores, ...]


def evaluate_dataset(model: LoadedModel, root: Path, layout: str = "auto", options: Sequence[tuple[str, Any]] = (),
                     finding: str | None = None, limit: int | None = None) -> DatasetRun:
    """Score every sample (or the first `limit`) of a labelled dataset with the model."""
    dataset = read_dataset(root, layout, **dict(options))
    if len(dataset.classes) != 2:
        raise DatasetEvaluationError(
            f"{root}: layout {dataset.layout} gives {len(dataset.classes)} classes ({', '.join(dataset.classes)}); "
            "evaluate one finding against the rest with --option positive=CLASS[,CLASS]")
    reported = [label.name for label in model.card.labels if label.report]
    label = finding or (reported[0] if len(reported) == 1 else None)
    if label is None or label not in reported:
        raise DatasetEvaluationError(f"model {model.card.name} reports {', '.join(reported)}: say which one the "
                                     f"dataset's positive class {dataset.classes[1]!r} is with --finding")
    samples = dataset.samples[:limit] if limit else dataset.samples
    predictions, studies = [], []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="dicom-ai-evaluate-") as folder:
        for index, sample in enumerate(samples):
            files = _as_dicom(sample, dataset, Path(folder) / str(index), index)
            scored = score_study(model, files)
            studies.append(scored)
            predictions.append(_prediction(model, label, index, sample, dataset, scored, started))
            for path in files:
                if path.parent == Path(folder) / str(index):
                    path.unlink()
    log.info("%s: %d sample(s) scored by %s (%s)", root, len(predictions), model.card.name, model.backend)
    return DatasetRun(dataset, label, tuple(predictions), tuple(studies))


def _prediction(model: LoadedModel, label: str, index: int, sample: Sample, dataset: LabelledSet,
                scored: StudyScores, when: float) -> Prediction:
    first = scored.images[0] if scored.images else None
    values = (first.patient_sex if first else "", age_band(first.patient_age) if first else "",
              first.manufacturer if first else "", first.station_name if first else "",
              first.body_part if first else "", dataset.layout)
    return Prediction(
        study_instance_uid=str(sample.path.relative_to(dataset.root)) if sample.path.is_relative_to(dataset.root)
        else str(sample.path),
        model=model.card.name, model_version=model.card.version, label=label, score=scored.scores[label],
        threshold=scored.thresholds[label], predicted_at=when,
        truth=Truth.PRESENT if sample.label == 1 else Truth.ABSENT, patient_id=sample.group,
        accession_number=f"{dataset.layout}-{index}", subgroups=tuple(zip(SUBGROUPS, values)),
    )


def _as_dicom(sample: Sample, dataset: LabelledSet, folder: Path, index: int) -> list[Path]:
    """The sample as the DICOM files of one study."""
    name = sample.path.name.lower()
    if dataset.dims == 3:
        if not name.endswith(NIFTI_SUFFIXES):
            raise LayoutError(f"{sample.path}: 3-D samples must be NIfTI volumes")
        return _volume_series(load_array(sample, dataset), sample, dataset, folder, index)
    if sample.path.suffix.lower() in PILLOW_SUFFIXES:
        return [_secondary_capture(load_array(sample, dataset), sample, dataset, folder, index)]
    return [sample.path]  # DICOM as it is


def _base(sample: Sample, dataset: LabelledSet, index: int, sop_class: str, sop_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID = deterministic_uid("evaluate", str(sample.path), "study")
    ds.SeriesInstanceUID = deterministic_uid("evaluate", str(sample.path), "series")
    ds.PatientID = sample.group[:64]
    ds.Modality = dataset.modality if dataset.modality in ("CR", "DX", "MG", "ES", "CT", "MR", "XC") else "OT"
    ds.ConversionType = "WSD"
    ds.AccessionNumber = f"{dataset.layout}-{index}"[:16]
    return ds


def _secondary_capture(image: np.ndarray, sample: Sample, dataset: LabelledSet, folder: Path, index: int) -> Path:
    ds = _base(sample, dataset, index, SECONDARY_CAPTURE, deterministic_uid("evaluate", str(sample.path), "image"))
    ds.Rows, ds.Columns = int(image.shape[0]), int(image.shape[1])
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    if image.ndim == 3:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.WindowCenter, ds.WindowWidth = 128, 256  # identity: the display image is the picture itself
    ds.PixelData = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "image.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _volume_series(volume: np.ndarray, sample: Sample, dataset: LabelledSet, folder: Path, index: int) -> list[Path]:
    """One file per slice (CT or MR Image Storage), int16 with a rescale that keeps the values."""
    low, high = float(volume.min()), float(volume.max())
    slope = max((high - low) / 65000.0, 1e-6)
    intercept = low + 32500.0 * slope
    sop_class = CT_IMAGE if dataset.modality == "CT" else MR_IMAGE
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, plane in enumerate(volume, start=1):
        ds = _base(sample, dataset, index, sop_class, deterministic_uid("evaluate", str(sample.path), "slice", number))
        ds.Modality = "CT" if sop_class == CT_IMAGE else "MR"
        ds.InstanceNumber = number
        ds.Rows, ds.Columns = int(plane.shape[0]), int(plane.shape[1])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
        stored = np.clip(np.rint((plane - float(ds.RescaleIntercept)) / float(ds.RescaleSlope)), -32768, 32767)
        ds.PixelData = stored.astype(np.int16).tobytes()
        path = folder / f"slice{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
