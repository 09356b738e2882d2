"""`dicom-ai export seismometer`: one model's predictions and truths in the layout seismometer 0.5 loads.

seismometer (Epic's open-source model evaluation tool) reads a folder with `config.yml` (where the
rest is), `usage_config.yml` (which columns are the entity, the context, the prediction time, the
scores, the target, the cohorts), `dictionary.yml` (each column's type and meaning), `metadata.json`
(model name and thresholds) and a typed `predictions.parquet`. The targets live in the predictions
table (column `<target>_Value`, strict 0/1 integers); seismometer still wants an events entry named
like the primary target with usage target, but no events file. Paths in config.yml are relative to
the working directory seismometer runs in: open it from this folder (docs/validation.md).

One row per judged study: entity_id and context_id are keyed hashes (store/secret.py) of the
PatientID and the accession number (else the study UID), never the values themselves; the
prediction time; one score column per reported label (its highest probability over the study's
images); one truth column per label (1 present, 0 absent); the subgroups as cohorts. A study
enters when every label has a present or absent truth (uncertain or unjudged ones cannot be a
binary target; `dicom-ai evaluate` counts them).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from dicom_ai.domain import Prediction, Truth
from dicom_ai.store.performance import SUBGROUPS
from dicom_ai.store.secret import pseudonyms

if TYPE_CHECKING:  # pyarrow (~30 MB) only when a folder is written: the console's process imports this module
    import pyarrow as pa

CENSOR_MIN_COUNT = 10  # seismometer hides cohorts smaller than this (its minimum)
PREDICTION_TIME = "PredictionTime"
DATA_DIR = "."
INFO_DIR = "output"
FILES = ("config.yml", "usage_config.yml", "dictionary.yml", "metadata.json", "predictions.parquet")
COHORT_COLUMNS = {name: re.sub(r"[^a-z0-9]+", "_", name.lower()) for name in SUBGROUPS}


class ExportError(ValueError):
    """Nothing to export as asked; the message says why."""


@dataclass(frozen=True)
class SeismometerExport:
    """What was written, and how many studies were left out for want of a present/absent truth."""

    folder: Path
    rows: int
    left_out: int
    primary_output: str
    primary_target: str
    files: tuple[Path, ...]


def column(label: str) -> str:
    """A label as a column stem seismometer is happy with: "Brain mass lesion" -> "brain_mass_lesion"."""
    stem = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "label"
    return stem.replace("time", "tm")  # seismometer reads "Time" in a column name as a timestamp


def export_seismometer(folder: Path, model: str, predictions: Sequence[Prediction], *, secret: bytes,
                       thresholds: Mapping[str, float], primary: str | None = None) -> SeismometerExport:
    """Write the seismometer folder for one model's predictions (one Prediction per study and label)."""
    labels = sorted({p.label for p in predictions})
    if not labels:
        raise ExportError(f"no predictions of model {model} to export")
    primary = primary or labels[0]
    if primary not in labels:
        raise ExportError(f"model {model} has no label {primary!r} (labels: {', '.join(labels)})")
    by_study: dict[str, dict[str, Prediction]] = defaultdict(dict)
    for prediction in predictions:
        by_study[prediction.study_instance_uid][prediction.label] = prediction
    judged = {study: rows for study, rows in by_study.items()
              if set(rows) == set(labels) and all(r.truth in (Truth.PRESENT, Truth.ABSENT) for r in rows.values())}
    if not judged:
        raise ExportError(f"none of the {len(by_study)} studies of model {model} has a present or absent truth for "
                          f"every label ({', '.join(labels)}): judge some with `dicom-ai feedback` or send reports")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INFO_DIR).mkdir(exist_ok=True)
    scores = {label: f"{column(label)}_score" for label in labels}
    targets = {label: column(label) for label in labels}
    import pyarrow.parquet as pq

    table = _table(judged, labels, scores, targets, secret)
    pq.write_table(table, folder / "predictions.parquet")
    _write_yaml(folder / "config.yml", {"other_info": {
        "template": "binary", "usage_config": "usage_config.yml", "prediction_definition": "dictionary.yml",
        "info_dir": INFO_DIR, "data_dir": DATA_DIR, "prediction_path": "predictions.parquet",
        "metadata_path": "metadata.json"}})
    _write_yaml(folder / "usage_config.yml", {"data_usage": {
        "entity_id": "entity_id", "context_id": "context_id", "primary_output": scores[primary],
        "outputs": [scores[label] for label in labels], "primary_target": targets[primary],
        "predict_time": PREDICTION_TIME, "comparison_time": PREDICTION_TIME,
        "cohorts": [{"source": COHORT_COLUMNS[name], "display_name": name[0].upper() + name[1:]} for name in SUBGROUPS],
        "events": [{"source": [targets[label]], "display_name": targets[label], "usage": "target"} for label in labels],
        "censor_min_count": CENSOR_MIN_COUNT,
    }})
    _write_yaml(folder / "dictionary.yml", {"predictions": _dictionary(labels, scores, targets)})
    (folder / "metadata.json").write_text(json.dumps({
        "modelname": model, "thresholds": sorted({round(float(thresholds.get(label, 0.5)), 4) for label in labels},
                                                 reverse=True),
        "thresholds_by_label": {label: thresholds.get(label) for label in labels},
        "primary_label": primary,
    }, indent=2), encoding="utf-8")
    return SeismometerExport(folder, len(judged), len(by_study) - len(judged), scores[primary], targets[primary],
                             tuple(folder / name for name in FILES))


def _table(judged: Mapping[str, Mapping[str, Prediction]], labels: Sequence[str], scores: Mapping[str, str],
           targets: Mapping[str, str], secret: bytes) -> pa.Table:
    import pyarrow as pa

    studies = sorted(judged, key=lambda s: (min(p.predicted_at for p in judged[s].values()), s))
    first = [next(iter(judged[s].values())) for s in studies]
    columns: dict[str, pa.Array] = {
        "entity_id": pa.array(pseudonyms(secret, "patient", [p.patient_id or f"study {p.study_instance_uid}"
                                                             for p in first]), pa.string()),
        "context_id": pa.array(pseudonyms(secret, "context", [p.accession_number or p.study_instance_uid
                                                              for p in first]), pa.string()),
        PREDICTION_TIME: pa.array([int(p.predicted_at * 1e9) for p in first], pa.timestamp("ns")),
        "model_version": pa.array([p.model_version for p in first], pa.string()),
    }
    for label in labels:
        columns[scores[label]] = pa.array([judged[s][label].score for s in studies], pa.float64())
        columns[f"{targets[label]}_Value"] = pa.array([int(judged[s][label].truth == Truth.PRESENT) for s in studies],
                                                      pa.int64())
    cohorts: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}  # per distinct subgroups tuple, not per row
    for p in first:
        if p.subgroups not in cohorts:
            cohorts[p.subgroups] = {name: p.subgroup(name) or "unknown" for name in COHORT_COLUMNS}
    for name, stem in COHORT_COLUMNS.items():
        columns[stem] = pa.array([cohorts[p.subgroups][name] for p in first], pa.string())
    return pa.table(columns)


def _dictionary(labels: Sequence[str], scores: Mapping[str, str], targets: Mapping[str, str]) -> list[dict[str, str]]:
    items = [
        {"name": "entity_id", "dtype": "string", "definition": "Patient pseudonym: keyed hash of the PatientID"},
        {"name": "context_id", "dtype": "string", "definition": "Study pseudonym: keyed hash of the accession number"},
        {"name": PREDICTION_TIME, "dtype": "datetime64[ns]", "definition": "When the node processed the study (UTC)"},
        {"name": "model_version", "dtype": "string", "definition": "Model version that made the prediction"},
    ]
    for label in labels:
        items.append({"name": scores[label], "dtype": "float64",
                      "definition": f"{label}: highest probability over the study's analysed images"})
        items.append({"name": f"{targets[label]}_Value", "dtype": "int64",
                      "definition": f"{label} as judged (radiologist, else final report): 1 present, 0 absent"})
    items += [{"name": stem, "dtype": "string", "definition": f"Cohort: {name}"} for name, stem in COHORT_COLUMNS.items()]
    return items


def _write_yaml(path: Path, data: object) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
