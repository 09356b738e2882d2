"""Drift per ISO week against a reference: an undrifted week (resampled from the same generator) is not
flagged, a drifted one is (named by variable); weeks with too few cases are not judged."""

from __future__ import annotations

import numpy as np

from dicom_ai.domain import CategoricalReference, ImageProperties, NumericReference, Prediction
from dicom_ai.metrics import categorical_reference, numeric_reference
from dicom_ai.monitor.drift import weekly_drift

MONDAY = 1_700_438_400.0


def numeric(values: np.ndarray | list[float]) -> NumericReference:
    r = numeric_reference(values)
    return NumericReference(r["n"], tuple(r["edges"]), tuple(r["proportions"]), tuple(r["quantiles"]))


def categorical(values: list[str]) -> CategoricalReference:
    r = categorical_reference(values)
    return CategoricalReference(r["n"], tuple(r["proportions"].items()))


def batch(rng: np.random.Generator, n: int, *, shift: float = 0.0, rows: int = 672, maker: str = "ACME",
          start: float = MONDAY) -> tuple[list[Prediction], list[tuple[float, ImageProperties]]]:
    scores = np.clip(rng.beta(2, 5, n) + shift, 0, 1)
    predictions = [Prediction(f"1.{i}", "m", "1", "Mass", float(s), 0.5, start + i) for i, s in enumerate(scores)]
    images = [(start + i, ImageProperties(f"1.{i}.1", "m", manufacturer=maker, photometric="MONOCHROME2",
                                          rows=rows, columns=rows)) for i in range(n)]
    return predictions, images


def references(rng: np.random.Generator) -> dict[str, NumericReference | CategoricalReference]:
    return {"score:Mass": numeric(rng.beta(2, 5, 2000)), "rows": numeric([672.0] * 2000),
            "manufacturer": categorical(["ACME"] * 2000)}


def test_an_undrifted_week_is_checked_and_not_flagged() -> None:
    rng = np.random.default_rng(0)
    checks = weekly_drift("m", *batch(rng, 60), references(rng), psi_threshold=0.25, min_cases=30)
    assert {c.variable for c in checks} == {"score:Mass", "rows", "manufacturer"}
    assert not any(c.flagged for c in checks), checks
    assert all(c.week == "2023-W47" and c.cases == 60 for c in checks)


def test_a_drifted_week_is_flagged_by_the_variables_that_moved() -> None:
    rng = np.random.default_rng(0)
    checks = weekly_drift("m", *batch(rng, 60, shift=0.4, rows=448, maker="OTHER"), references(rng),
                          psi_threshold=0.25, min_cases=30)
    flagged = {c.variable for c in checks if c.flagged}
    assert flagged == {"score:Mass", "rows", "manufacturer"}
    rows = next(c for c in checks if c.variable == "rows")
    assert rows.psi > 5 and rows.ks_p is not None and rows.ks_p < 1e-6


def test_small_weeks_are_not_judged_and_weeks_are_separate() -> None:
    rng = np.random.default_rng(0)
    first = batch(rng, 60)
    second = batch(rng, 10, rows=448, start=MONDAY + 7 * 86400)
    checks = weekly_drift("m", first[0] + second[0], first[1] + second[1], references(rng), psi_threshold=0.25,
                          min_cases=30)
    assert {c.week for c in checks} == {"2023-W47"}  # 10 cases in W48: below min_cases


def test_a_small_week_with_a_high_psi_by_chance_is_not_flagged_without_the_ks_test() -> None:
    rng = np.random.default_rng(0)
    checks = weekly_drift("m", *batch(rng, 12), references(rng), psi_threshold=0.25, min_cases=10)
    score = next(c for c in checks if c.variable == "score:Mass")
    assert score.psi >= 0.25 and score.ks_p is not None and score.ks_p > 0.01  # 12 values in 10 bins: PSI is noisy
    assert not score.flagged
