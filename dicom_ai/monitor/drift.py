"""Drift: each ISO week's scores and input properties against the model card's validation reference.

For every variable the card keeps a reference of (each reported label's study-level score; rows,
columns, pixel spacing, kVp, MR field strength, manufacturer, photometric interpretation of the
analysed images), each week with at least `min_cases` values gets a population stability index
over the reference's bins and, for numeric variables, a Kolmogorov-Smirnov test against the
reference's quantiles. A variable is flagged when PSI reaches the threshold (setting drift_psi) and,
for a numeric one, the KS p-value is below DRIFT_KS_ALPHA as well: PSI alone over-reacts on small
weeks (it grows like bins / cases by chance), the test alone on large ones. Weeks with fewer cases
are reported as such, never flagged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from dicom_ai.domain import (
    CATEGORICAL_PROPERTIES,
    NUMERIC_PROPERTIES,
    SCORE_PREFIX,
    CategoricalReference,
    DriftCheck,
    ImageColumns,
    ImageProperties,
    NumericReference,
    Prediction,
    Reference,
)
from dicom_ai.metrics import categorical_psi, ks_against_quantiles, numeric_psi
from dicom_ai.monitor.performance import factorize, group_masks, iso_weeks

DRIFT_KS_ALPHA = 0.01


def weekly_values(predictions: Sequence[Prediction],
                  images: Sequence[tuple[float, ImageProperties]] | ImageColumns) -> dict[str, dict[str, list[float | str]]]:
    """ISO week -> drift variable -> its values that week (scores per study, properties per image), each list
    in the rows' order. Grouped with numpy: a week is computed once per day, not once per row."""
    columns = images if isinstance(images, ImageColumns) else image_columns(images)
    weeks: dict[str, dict[str, list[float | str]]] = defaultdict(dict)
    variables, variable_codes = factorize([f"{SCORE_PREFIX}{p.label}" for p in predictions])
    scores = np.fromiter((p.score for p in predictions), dtype=np.float64, count=len(predictions))
    for week, in_week in group_masks(*iso_weeks([p.predicted_at for p in predictions])):
        for variable, of_label in group_masks(variables, variable_codes[in_week]):
            weeks[week][variable] = scores[in_week][of_label].tolist()
    categorical = {name: np.array(values, dtype=object) for name, values in columns.categorical.items()}
    for week, in_week in group_masks(*iso_weeks(columns.when)):
        values = weeks[week]
        for name in NUMERIC_PROPERTIES:
            numbers, known = columns.numeric[name]
            found = numbers[in_week & known]
            if found.size:
                values[name] = found.tolist()
        for name in CATEGORICAL_PROPERTIES:
            if in_week.any():
                values[name] = categorical[name][in_week].tolist()
    return {week: values for week, values in sorted(weeks.items())}


def image_columns(images: Sequence[tuple[float, ImageProperties]]) -> ImageColumns:
    """ImageProperties rows as the columns drift checks read (the store reads them as columns directly)."""
    count = len(images)
    numeric = {}
    for name in NUMERIC_PROPERTIES:
        raw = [getattr(image, name) for _, image in images]
        numeric[name] = (np.fromiter((float("nan") if v is None else float(v) for v in raw), dtype=np.float64,
                                     count=count),
                         np.fromiter((v is not None for v in raw), dtype=bool, count=count))
    categorical = {name: [str(getattr(image, name) or "") for _, image in images] for name in CATEGORICAL_PROPERTIES}
    return ImageColumns(np.fromiter((float(when) for when, _ in images), dtype=np.float64, count=count), numeric,
                        categorical)


def check_week(model: str, week: str, values: Mapping[str, Sequence[float | str]], references: Mapping[str, Reference],
               psi_threshold: float, min_cases: int) -> list[DriftCheck]:
    """One week's checks: a DriftCheck per referenced variable with at least `min_cases` values."""
    checks = []
    for variable, reference in sorted(references.items()):
        found = values.get(variable, [])
        if len(found) < min_cases:
            continue
        if isinstance(reference, NumericReference):
            numbers = np.asarray(found, dtype=np.float64)
            psi = numeric_psi(reference.edges, reference.proportions, numbers)
            _, p_value = ks_against_quantiles(reference.quantiles, reference.n, numbers)
            flagged = psi >= psi_threshold and p_value < DRIFT_KS_ALPHA
            checks.append(DriftCheck(model, week, variable, len(found), psi, p_value, flagged))
        elif isinstance(reference, CategoricalReference):
            psi = categorical_psi(dict(reference.proportions), [str(v) for v in found])
            checks.append(DriftCheck(model, week, variable, len(found), psi, None, psi >= psi_threshold))
    return checks


def weekly_drift(model: str, predictions: Sequence[Prediction],
                 images: Sequence[tuple[float, ImageProperties]] | ImageColumns,
                 references: Mapping[str, Reference], *, psi_threshold: float, min_cases: int) -> list[DriftCheck]:
    """Every week's checks for one model, oldest week first."""
    checks: list[DriftCheck] = []
    for week, values in weekly_values(predictions, images).items():
        checks.extend(check_week(model, week, values, references, psi_threshold, min_cases))
    return checks
