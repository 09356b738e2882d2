"""What the models predicted, joined with the truth: the rows of every evaluation, export and drift check.

One prediction per study, model and label: the label's highest probability over the study's
analysed images (what the worklist and the RIS were told), the operating threshold, when the
node processed it, the truth that counts (store/feedback.py) and the subgroups it falls in. The
queries are by model and processing time (indexed), so 100,000 predictions load in well under a
second.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from dicom_ai.domain import (
    CATEGORICAL_PROPERTIES,
    NUMERIC_PROPERTIES,
    DriftCheck,
    ImageColumns,
    ImageProperties,
    Prediction,
)
from dicom_ai.store.database import Part
from dicom_ai.store.feedback import FOLD_COLUMNS, fold_truth_rows

# Subgroups every evaluation breaks performance down by (Prediction.subgroups names, in this order).
SUBGROUPS = ("sex", "age band", "manufacturer", "station name", "body part", "calling AE")
AGE_BANDS = ((18, "0-17"), (40, "18-39"), (65, "40-64"), (80, "65-79"))
OLDEST_BAND = "80+"
_IMAGE_COLUMNS = ("sop_instance_uid", "model", "manufacturer", "station_name", "body_part", "modality", "photometric",
                  "rows", "columns", "pixel_spacing", "kvp", "field_strength", "patient_sex", "patient_age")


def age_band(years: float | None) -> str:
    """The age band of the subgroup tables ("" when the age is unknown)."""
    if years is None:
        return ""
    for limit, band in AGE_BANDS:
        if years < limit:
            return band
    return OLDEST_BAND


class PerformanceStore(Part):
    """Predictions with their truth, image properties, and the drift checks' outcomes."""

    def models(self) -> list[str]:
        """Models with at least one finding recorded."""
        return [row["model"] for row in self._query("select distinct model from findings order by model")]

    def predictions(self, model: str, since: float | None = None, until: float | None = None) -> list[Prediction]:
        """The model's study-level predictions processed in [since, until), oldest first, with truth and subgroups.

        Rows are read as plain tuples and the subgroup tuples shared between studies: 100,000 predictions
        are read in about a second."""
        window, params = _window("s.processed_at", since, until)
        rows = self._rows(
            "select f.study_instance_uid, f.label, max(f.model_version) as model_version, max(f.probability) as score,"
            " max(f.threshold) as threshold, s.processed_at, s.patient_id, s.accession_number"
            " from findings f join studies s on s.study_instance_uid = f.study_instance_uid"
            f" where f.model = ? and s.processed_at is not null {window}"
            " group by f.study_instance_uid, f.label order by s.processed_at, f.study_instance_uid, f.label",
            [model, *params])
        truths = fold_truth_rows(self._rows(
            f"select {', '.join(FOLD_COLUMNS)} from feedback where model = ? order by id", [model]))
        groups = self._subgroups(model, since)
        out = []
        for study, label, version, score, threshold, processed_at, patient_id, accession in rows:
            truth = truths.get((study, label))
            out.append(Prediction(
                study_instance_uid=study, model=model, model_version=version or "",
                label=label, score=float(score), threshold=float(threshold),
                predicted_at=float(processed_at), truth=truth.truth if truth else None,
                truth_source=truth.source if truth else None, patient_id=patient_id or "",
                accession_number=accession or "", subgroups=groups.get(study, ()),
            ))
        return out

    def _subgroups(self, model: str, since: float | None) -> dict[str, tuple[tuple[str, str], ...]]:
        """Study -> its subgroups, from the first image the model analysed in it."""
        window, params = _window("analysed_at", since - 7 * 86400 if since is not None else None, None)
        rows = self._rows(
            "select study_instance_uid, patient_sex, patient_age, manufacturer, station_name, body_part, calling_aet"
            f" from analysed_images where model = ? {window} order by analysed_at, sop_instance_uid", [model, *params])
        found: dict[str, tuple[tuple[str, str], ...]] = {}
        shared: dict[tuple[Any, ...], tuple[tuple[str, str], ...]] = {}  # a few hundred distinct ones in 100,000
        for study, sex, age, manufacturer, station, body_part, calling_aet in rows:
            if study in found:
                continue
            key = (sex, age, manufacturer, station, body_part, calling_aet)
            groups = shared.get(key)
            if groups is None:
                values = (sex or "", age_band(age), manufacturer or "", station or "", body_part or "",
                          calling_aet or "")
                groups = shared[key] = tuple(zip(SUBGROUPS, values))
            found[study] = groups
        return found

    def images(self, model: str, since: float | None = None, until: float | None = None) -> list[tuple[float, ImageProperties]]:
        """(when analysed, properties) of every image the model analysed in [since, until), oldest first."""
        window, params = _window("analysed_at", since, until)
        rows = self._query(
            f"select analysed_at, {', '.join(_IMAGE_COLUMNS)} from analysed_images where model = ? {window}"
            " order by analysed_at", [model, *params])
        return [(float(row["analysed_at"]), _properties(row)) for row in rows]

    def image_columns(self, model: str, since: float | None = None, until: float | None = None) -> ImageColumns:
        """The drift-watched properties of the same images as images(), as columns (what drift checks read)."""
        window, params = _window("analysed_at", since, until)
        names = (*NUMERIC_PROPERTIES, *CATEGORICAL_PROPERTIES)
        rows = self._rows(f"select analysed_at, {', '.join(names)} from analysed_images where model = ? {window}"
                          " order by analysed_at", [model, *params])
        columns = list(zip(*rows)) if rows else [()] * (len(names) + 1)
        numeric = {}
        for name, values in zip(NUMERIC_PROPERTIES, columns[1:]):
            known = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
            numeric[name] = (np.fromiter((float("nan") if v is None else float(v) for v in values), dtype=np.float64,
                                         count=len(values)), known)
        categorical = {name: [str(v or "") for v in values]
                       for name, values in zip(CATEGORICAL_PROPERTIES, columns[1 + len(NUMERIC_PROPERTIES):])}
        return ImageColumns(np.fromiter((float(v) for v in columns[0]), dtype=np.float64, count=len(columns[0])),
                            numeric, categorical)

    def save_drift(self, checks: Sequence[DriftCheck], now: float | None = None) -> None:
        """Keep the latest outcome per model, week and variable; a newly flagged variable is an audit event."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            for check in checks:
                before = list(db.query("select flagged from drift_checks where model = ? and week = ? and variable = ?",
                                       [check.model, check.week, check.variable]))
                db.execute(
                    "insert or replace into drift_checks (model, week, variable, cases, psi, ks_p, flagged, checked_at)"
                    " values (?, ?, ?, ?, ?, ?, ?, ?)",
                    [check.model, check.week, check.variable, check.cases, check.psi, check.ks_p, int(check.flagged),
                     now])
                if check.flagged and not (before and before[0]["flagged"]):
                    self._event(db, "drift_flagged", None, model=check.model, week=check.week,
                                variable=check.variable, cases=check.cases, psi=round(check.psi, 3),
                                ks_p=check.ks_p)

    def drift_checks(self, model: str | None = None) -> list[DriftCheck]:
        rows = self._query("select * from drift_checks" + (" where model = ?" if model else "")
                           + " order by model, week, variable", [model] if model else [])
        return [DriftCheck(r["model"], r["week"], r["variable"], r["cases"], r["psi"], r["ks_p"], bool(r["flagged"]))
                for r in rows]


def _window(column: str, since: float | None, until: float | None) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if since is not None:
        clauses.append(f"and {column} >= ?")
        params.append(since)
    if until is not None:
        clauses.append(f"and {column} < ?")
        params.append(until)
    return " ".join(clauses), params


def _properties(row: dict[str, Any]) -> ImageProperties:
    return ImageProperties(
        sop_instance_uid=row["sop_instance_uid"], model=row["model"], manufacturer=row["manufacturer"] or "",
        station_name=row["station_name"] or "", body_part=row["body_part"] or "", modality=row["modality"] or "",
        photometric=row["photometric"] or "", rows=row["rows"], columns=row["columns"],
        pixel_spacing=row["pixel_spacing"], kvp=row["kvp"], field_strength=row["field_strength"],
        patient_sex=row["patient_sex"] or "", patient_age=row["patient_age"])
