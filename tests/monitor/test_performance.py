"""Live performance against a direct computation: the confusion counts, Wilson intervals, AUROC (only
once both classes have enough cases), calibration; per week and per subgroup."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dicom_ai.domain import Prediction, Truth
from dicom_ai.monitor.performance import AUROC_MIN_PER_CLASS, evaluate, iso_week

WEEK = 7 * 86400.0
MONDAY = 1_700_438_400.0  # 2023-11-20, a Monday (UTC)


def prediction(i: int, score: float, truth: Truth | None, *, when: float = MONDAY, sex: str = "F",
               threshold: float = 0.5) -> Prediction:
    return Prediction(f"1.2.{i}", "m", "1", "Mass", score, threshold, when, truth,
                      subgroups=(("sex", sex), ("age band", "40-64"), ("manufacturer", "ACME"),
                                 ("station name", ""), ("body part", "CHEST"), ("calling AE", "PACS")))


def wilson(k: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_confusion_counts_proportions_and_intervals_match_a_direct_computation() -> None:
    rng = np.random.default_rng(2)
    truths = [Truth.PRESENT] * 30 + [Truth.ABSENT] * 50 + [Truth.UNCERTAIN] * 5 + [None] * 15
    scores = [float(rng.uniform(0.3, 1.0)) if t == Truth.PRESENT else float(rng.uniform(0.0, 0.7)) for t in truths]
    rows = [prediction(i, s, t) for i, (s, t) in enumerate(zip(scores, truths))]
    result = evaluate(rows, rounds=200)["Mass"].overall
    positive = [s for s, t in zip(scores, truths) if t == Truth.PRESENT]
    negative = [s for s, t in zip(scores, truths) if t == Truth.ABSENT]
    tp, fn = sum(s >= 0.5 for s in positive), sum(s < 0.5 for s in positive)
    tn, fp = sum(s < 0.5 for s in negative), sum(s >= 0.5 for s in negative)
    assert (result.tp, result.fn, result.tn, result.fp) == (tp, fn, tn, fp)
    assert (result.studies, result.judged, result.uncertain) == (100, 80, 5)
    assert result.sensitivity.value == tp / 30 and result.specificity.value == tn / 50
    assert result.ppv.value == tp / (tp + fp) and result.npv.value == tn / (tn + fn)
    assert result.agreement.value == (tp + tn) / 80
    assert result.sensitivity.interval == pytest.approx(wilson(tp, 30))
    pairs = [(p > n) + 0.5 * (p == n) for p in positive for n in negative]
    assert result.auroc == pytest.approx(sum(pairs) / len(pairs))
    assert result.auroc_ci is not None and result.auroc_ci[0] < result.auroc < result.auroc_ci[1]
    judged = [(s, t == Truth.PRESENT) for s, t in zip(scores, truths) if t in (Truth.PRESENT, Truth.ABSENT)]
    assert result.brier == pytest.approx(np.mean([(s - y) ** 2 for s, y in judged]), abs=1e-4)
    assert sum(row["count"] for row in result.reliability) == 80


def test_auroc_waits_for_enough_cases_of_each_class() -> None:
    few = [prediction(i, 0.9, Truth.PRESENT) for i in range(AUROC_MIN_PER_CLASS - 1)]
    few += [prediction(100 + i, 0.1, Truth.ABSENT) for i in range(50)]
    result = evaluate(few)["Mass"].overall
    assert result.auroc is None and result.auroc_ci is None
    assert result.sensitivity.value == 1.0  # proportions are still given, with their (wide) intervals


def test_weeks_and_subgroups_each_get_their_own_numbers() -> None:
    rows = [prediction(i, 0.9, Truth.PRESENT, when=MONDAY + (i % 2) * WEEK, sex="F" if i < 6 else "M")
            for i in range(10)]
    rows += [prediction(20, 0.2, Truth.PRESENT, when=MONDAY + WEEK, sex="")]
    result = evaluate(rows)["Mass"]
    assert list(result.weeks) == [iso_week(MONDAY), iso_week(MONDAY + WEEK)] == ["2023-W47", "2023-W48"]
    assert result.weeks["2023-W48"].fn == 1 and result.weeks["2023-W47"].fn == 0
    assert {value: p.studies for value, p in result.subgroups["sex"].items()} == {"F": 6, "M": 4, "(unknown)": 1}
    assert result.subgroups["calling AE"]["PACS"].studies == 11
    assert result.as_dict()["overall"]["sensitivity"]["value"] == round(10 / 11, 4)
