"""Live performance of one model: each label at its operating threshold, against the truth that counts.

A case is a study with a judgement of present or absent (uncertain ones are counted, never scored);
the AI called it present when the label's highest probability over the study reached the label's
threshold, as the worklist and the RIS were told. Proportions carry 95% Wilson intervals; the AUROC
is given once both classes have AUROC_MIN_PER_CLASS cases, with a percentile bootstrap interval for
the whole period (weeks and subgroups get the point value: resampling every cell would cost more
than it tells). Calibration is a reliability table over ten bins and the Brier score.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import numpy as np

from dicom_ai.domain import Prediction, Truth
from dicom_ai.metrics import auroc, bootstrap_auroc_ci_by_counts, calibration, wilson_interval
from dicom_ai.store.performance import SUBGROUPS as SUBGROUP_NAMES

AUROC_MIN_PER_CLASS = 10  # positives and negatives each, before an AUROC is stated
BOOTSTRAP_ROUNDS = 500


def iso_week(epoch: float) -> str:
    """The ISO week (UTC) of a moment: "2026-W48"; weeks sort as text."""
    year, week, _ = datetime.fromtimestamp(epoch, UTC).isocalendar()
    return f"{year}-W{week:02d}"


DAY_S = 86400.0
_DAY_EDGE_S = 1e-3  # moments this close to midnight take iso_week itself (it rounds to the microsecond)


@lru_cache(maxsize=8192)
def _iso_week_of_day(day: int) -> str:
    return iso_week(day * DAY_S + DAY_S / 2)


def iso_weeks(epochs: np.ndarray | Sequence[float]) -> tuple[list[str], np.ndarray]:
    """The distinct ISO weeks of many moments, sorted, and each moment's index into them: iso_week is
    computed once per UTC day, not once per moment (and by itself for moments a millisecond from midnight,
    which it rounds to the microsecond)."""
    moments = np.asarray(epochs, dtype=np.float64).ravel()
    days = np.floor_divide(moments, DAY_S)
    distinct, inverse = np.unique(days, return_inverse=True)
    labels = [_iso_week_of_day(int(day)) for day in distinct.tolist()]
    into_day = moments - days * DAY_S
    edges = np.flatnonzero((into_day < _DAY_EDGE_S) | (into_day > DAY_S - _DAY_EDGE_S)).tolist()
    edge_labels = [iso_week(float(moments[i])) for i in edges]
    weeks = sorted({*labels, *edge_labels})
    position = {week: i for i, week in enumerate(weeks)}
    codes = np.array([position[label] for label in labels], dtype=np.int64)[inverse.ravel()]
    for i, label in zip(edges, edge_labels):
        codes[i] = position[label]
    return weeks, codes


def factorize(keys: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct keys, sorted, and each row's index into them."""
    codes: dict[str, int] = {}
    first = np.fromiter((codes.setdefault(key, len(codes)) for key in keys), dtype=np.int64, count=len(keys))
    ordered = sorted(codes)
    rank = np.empty(len(codes), dtype=np.int64)
    rank[[codes[key] for key in ordered]] = np.arange(len(ordered))
    return ordered, rank[first]


def group_masks(values: Sequence[str], codes: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(value, mask of the rows with it) for each value (as iso_weeks and factorize give them) that has rows."""
    present = np.bincount(codes, minlength=len(values)) if codes.size else np.zeros(len(values), dtype=np.int64)
    return [(str(value), codes == i) for i, value in enumerate(values) if present[i]]


@dataclass(frozen=True)
class Proportion:
    """A share with its 95% Wilson interval (None values when nothing was counted)."""

    successes: int
    trials: int

    @property
    def value(self) -> float | None:
        return self.successes / self.trials if self.trials else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson_interval(self.successes, self.trials)

    def as_dict(self) -> dict[str, Any]:
        low_high = self.interval
        return {"value": _round(self.value), "ci95": [_round(v) for v in low_high] if low_high else None,
                "n": self.trials}

    def describe(self) -> str:
        if not self.trials:
            return "-"
        low, high = self.interval or (0.0, 0.0)
        return f"{self.value:.2f} ({low:.2f}-{high:.2f}, n={self.trials})"


@dataclass(frozen=True)
class LabelPerformance:
    """One label over one set of studies (a period, a week, a subgroup)."""

    label: str
    studies: int  # predictions in the set, judged or not
    uncertain: int  # judged uncertain: counted, not scored
    tp: int
    fp: int
    tn: int
    fn: int
    auroc: float | None
    auroc_ci: tuple[float, float] | None
    brier: float | None
    reliability: list[dict[str, Any]] = field(default_factory=list)

    @property
    def judged(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def sensitivity(self) -> Proportion:
        return Proportion(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> Proportion:
        return Proportion(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> Proportion:
        return Proportion(self.tp, self.tp + self.fp)

    @property
    def npv(self) -> Proportion:
        return Proportion(self.tn, self.tn + self.fn)

    @property
    def agreement(self) -> Proportion:
        """How often the AI's call matched the radiologist's reading (present/absent judgements)."""
        return Proportion(self.tp + self.tn, self.judged)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "studies": self.studies, "judged": self.judged, "uncertain": self.uncertain,
            "confusion": {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn},
            "sensitivity": self.sensitivity.as_dict(), "specificity": self.specificity.as_dict(),
            "ppv": self.ppv.as_dict(), "npv": self.npv.as_dict(), "agreement": self.agreement.as_dict(),
            "auroc": _round(self.auroc), "auroc_ci95_bootstrap": [_round(v) for v in self.auroc_ci] if self.auroc_ci else None,
            "brier": _round(self.brier), "reliability": self.reliability,
        }


@dataclass(frozen=True)
class LabelEvaluation:
    """A label overall, per ISO week, and per value of each subgroup."""

    label: str
    threshold: float
    overall: LabelPerformance
    weeks: dict[str, LabelPerformance]
    subgroups: dict[str, dict[str, LabelPerformance]]

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "threshold": self.threshold, "overall": self.overall.as_dict(),
                "weeks": {week: p.as_dict() for week, p in self.weeks.items()},
                "subgroups": {name: {value: p.as_dict() for value, p in groups.items()}
                              for name, groups in self.subgroups.items()}}


def evaluate(predictions: Sequence[Prediction], *, seed: int = 0,
             rounds: int = BOOTSTRAP_ROUNDS) -> dict[str, LabelEvaluation]:
    """Label -> its evaluation, from one model's predictions (one per study and label)."""
    by_label: dict[str, list[Prediction]] = defaultdict(list)
    for prediction in predictions:
        by_label[prediction.label].append(prediction)
    evaluations = {}
    for label, rows in sorted(by_label.items()):
        arrays = _Arrays(rows)
        evaluations[label] = LabelEvaluation(
            label=label,
            threshold=float(np.median(arrays.threshold)) if rows else 0.0,
            overall=arrays.performance(label, np.ones(len(rows), dtype=bool), bootstrap=(seed, rounds)),
            weeks={week: arrays.performance(label, mask)
                   for week, mask in group_masks(*iso_weeks([p.predicted_at for p in rows]))},
            subgroups={name: {value or "(unknown)": arrays.performance(label, mask)
                              for value, mask in group_masks(values, codes)}
                       for name, (values, codes) in _subgroup_codes(rows).items()},
        )
    return evaluations


def _subgroup_codes(rows: Sequence[Prediction]) -> dict[str, tuple[list[str], np.ndarray]]:
    """Subgroup name -> (its values sorted, each row's index into them; "" when unknown): one pass over the
    rows to find their distinct subgroups tuples (a few hundred), the rest per distinct tuple."""
    distinct, index = _factorize_tuples([p.subgroups for p in rows])
    out = {}
    for name in SUBGROUP_NAMES:
        values, of_distinct = factorize([next((v for k, v in pairs if k == name), "") for pairs in distinct])
        out[name] = (values, of_distinct[index] if index.size else index)
    return out


def _factorize_tuples(keys: Sequence[tuple[tuple[str, str], ...]]) -> tuple[list[tuple[tuple[str, str], ...]], np.ndarray]:
    """The distinct subgroups tuples in first-seen order and each row's index into them."""
    codes: dict[tuple[tuple[str, str], ...], int] = {}
    index = np.fromiter((codes.setdefault(key, len(codes)) for key in keys), dtype=np.int64, count=len(keys))
    return list(codes), index


class _Arrays:
    """One label's predictions as arrays, computed once for every subset."""

    def __init__(self, rows: Sequence[Prediction]) -> None:
        self.rows = rows
        self.score = np.fromiter((p.score for p in rows), dtype=np.float64, count=len(rows))
        self.threshold = np.fromiter((p.threshold for p in rows), dtype=np.float64, count=len(rows))
        truth = np.array([p.truth for p in rows], dtype=object)
        self.positive = truth == Truth.PRESENT
        self.negative = truth == Truth.ABSENT
        self.uncertain = truth == Truth.UNCERTAIN
        self.called = self.score >= self.threshold

    def performance(self, label: str, mask: np.ndarray, bootstrap: tuple[int, int] | None = None) -> LabelPerformance:
        positive, negative, called = self.positive & mask, self.negative & mask, self.called
        judged = positive | negative
        scores, truth = self.score[judged], positive[judged].astype(np.int64)
        area, interval = None, None
        if int(positive.sum()) >= AUROC_MIN_PER_CLASS and int(negative.sum()) >= AUROC_MIN_PER_CLASS:
            area = auroc(scores, truth)
            if bootstrap is not None:
                seed, rounds = bootstrap
                interval = bootstrap_auroc_ci_by_counts(scores, truth, rounds=rounds, seed=seed)
        calibrated = calibration(scores, truth) if scores.size else {"brier": None, "reliability": []}
        return LabelPerformance(
            label=label, studies=int(mask.sum()), uncertain=int((self.uncertain & mask).sum()),
            tp=int((positive & called).sum()), fp=int((negative & called).sum()),
            tn=int((negative & ~called).sum()), fn=int((positive & ~called).sum()),
            auroc=area, auroc_ci=interval, brier=calibrated["brier"], reliability=calibrated["reliability"],
        )


def _round(value: float | None) -> float | None:
    return None if value is None or value != value else round(float(value), 4)
