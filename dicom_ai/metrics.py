"""Statistics for a model's results, in numpy only: ranking, intervals, calibration and drift.

A support module (no dependency on the rest of dicom_ai): the trainer states held-out metrics
with it, and the validation loop measures live performance and drift with the same functions, so
a card's numbers and the node's are computed alike. Values that cannot be computed are NaN here;
reports turn them into None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

CALIBRATION_BINS = 10
_Z95 = 1.959963984540054  # two-sided 95% normal quantile
# Shares below this are floored when comparing distributions: an empty bin would make PSI infinite.
PSI_FLOOR = 1e-4
REFERENCE_BINS = 10  # PSI bins: the reference's deciles
REFERENCE_QUANTILES = 21  # quantiles kept for the KS test: every 5%


# --- ranking ----------------------------------------------------------------------------------


def auroc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney U statistic, tied scores sharing their average rank.

    Labels are 1 (positive) and 0 (negative); NaN when either class is missing, since the area is
    then undefined rather than 0 or 1.
    """
    p = np.asarray(probabilities).ravel()
    y = np.asarray(labels).ravel()
    _same_length(p, y)
    positives, negatives = int((y == 1).sum()), int((y == 0).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    _, first, counts = np.unique(p[order], return_index=True, return_counts=True)
    # Tied run from sorted position i to j (0-based) gets rank (i + j) / 2 + 1; half-integers are exact.
    group_rank = (2 * first + counts - 1) / 2 + 1
    ranks = np.empty(p.size, dtype=np.float64)
    ranks[order] = np.repeat(group_rank, counts)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def bootstrap_auroc_ci(
    probabilities: np.ndarray,
    labels: np.ndarray,
    *,
    rounds: int = 1000,
    seed: int | Sequence[int] = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUROC, resampling cases with replacement.

    Resamples that draw a single class are skipped (their AUROC is undefined); (NaN, NaN) when
    none is usable. `seed` is anything `numpy.random.default_rng` takes, so callers can salt it.
    """
    if not 0 < level < 1:
        raise ValueError(f"bootstrap level must lie between 0 and 1, got {level}")
    p = np.asarray(probabilities).ravel()
    y = np.asarray(labels).ravel()
    _same_length(p, y)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        pick = rng.integers(0, len(y), len(y))
        value = auroc(p[pick], y[pick])
        if value == value:
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    # Rounded so that level 0.95 asks for exactly the 2.5th and 97.5th percentiles.
    low, high = np.percentile(values, [round(50 * (1 - level), 10), round(50 * (1 + level), 10)])
    return float(low), float(high)


def bootstrap_auroc_ci_by_counts(
    probabilities: np.ndarray,
    labels: np.ndarray,
    *,
    rounds: int = 1000,
    seed: int | Sequence[int] = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """The same percentile bootstrap as `bootstrap_auroc_ci` (the same resamples for the same seed),
    computed without re-sorting: a resample is a count per distinct score and class (one bincount of
    the drawn cases), and its AUROC is read off those counts in score order. Fast enough for 100,000 cases.
    """
    if not 0 < level < 1:
        raise ValueError(f"bootstrap level must lie between 0 and 1, got {level}")
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    _same_length(p, y)
    rng = np.random.default_rng(seed)
    n = p.size
    if n == 0:
        return float("nan"), float("nan")
    # Each case's slot: its class (0 negative, 1 positive, 2 neither) times the number of distinct scores, plus
    # its score's rank among them; a resample's counts per slot are one bincount of the drawn cases' slots.
    # Counts stay integers: the sums below are exact, as they were in floating point.
    _, group = np.unique(p, return_inverse=True)
    group = group.ravel()
    groups = int(group.max()) + 1
    slot = np.where(y == 1, 1, np.where(y == 0, 0, 2)) * groups + group
    values = []
    for _ in range(rounds):
        counts = np.bincount(slot[rng.integers(0, n, n)], minlength=3 * groups)
        neg, pos = counts[:groups], counts[groups:2 * groups]
        total_pos, total_neg = int(pos.sum()), int(neg.sum())
        if total_pos == 0 or total_neg == 0:
            continue
        below = np.cumsum(neg) - neg  # negatives in lower-scored groups
        twice_u = int((pos * (2 * below + neg)).sum())  # 2 x (pairs ranked right + half the ties)
        values.append((twice_u / 2) / float(total_pos * total_neg))
    if not values:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [round(50 * (1 - level), 10), round(50 * (1 + level), 10)])
    return float(low), float(high)


# --- intervals and calibration ----------------------------------------------------------------


def wilson_interval(successes: int, trials: int, z: float = _Z95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion: unlike the normal one it stays in [0, 1] at 0/n and n/n.

    None when there are no trials.
    """
    if trials <= 0:
        return None
    share = successes / trials
    denominator = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def calibration(predicted: np.ndarray, outcomes: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Brier score, expected calibration error and a reliability table over equal-width bins of [0, 1].

    `outcomes` are 1 when the predicted event happened. ECE weighs each bin's |mean predicted -
    observed rate| by its share of cases. Empty bins stay in the table (count 0, None rates) so
    tables from different models line up.
    """
    p = np.asarray(predicted, dtype=np.float64).ravel()
    o = np.asarray(outcomes, dtype=np.float64).ravel()
    _same_length(p, o)
    if p.size == 0:
        return {"brier": None, "ece": None, "reliability": []}
    index = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        mean_p = float(p[inside].mean()) if count else None
        rate = float(o[inside].mean()) if count else None
        if count:
            ece += count / p.size * abs(mean_p - rate)  # type: ignore[operator]
        table.append(
            {"bin_low": _r(b / bins), "bin_high": _r((b + 1) / bins), "count": count, "mean_predicted": _r(mean_p), "observed_rate": _r(rate)}
        )
    return {"brier": _r(float(np.mean((p - o) ** 2))), "ece": _r(ece), "reliability": table}


# --- drift: a distribution now against the one at validation ------------------------------------


def numeric_reference(values: Sequence[float] | np.ndarray, bins: int = REFERENCE_BINS,
                      quantiles: int = REFERENCE_QUANTILES) -> dict[str, Any]:
    """A numeric variable's reference: bin edges at its minimum, deciles and just above its maximum (ties
    merged), each bin's share, and evenly spaced quantiles; what a model card keeps instead of the values."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("a reference needs at least one value")
    # The deciles, and the range itself: a value beyond what the reference ever saw (a bigger image than
    # any) falls in a bin of its own instead of sharing the top decile's.
    inner = np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1])
    top = float(v.max()) + 1e-6 * max(1.0, abs(float(v.max())))  # just above the maximum, kept by 6-decimal rounding
    edges = np.unique(np.round(np.r_[v.min(), inner, top], 6))
    shares = np.bincount(np.searchsorted(edges, v, side="right"), minlength=edges.size + 1) / v.size
    return {"n": int(v.size), "edges": [_r6(e) for e in edges], "proportions": [_r6(s) for s in shares],
            "quantiles": [_r6(q) for q in np.quantile(v, np.linspace(0, 1, quantiles))]}


def categorical_reference(values: Sequence[str]) -> dict[str, Any]:
    """A categorical variable's reference: each value's share (an empty value counts as "(none)")."""
    if not values:
        raise ValueError("a reference needs at least one value")
    names, counts = np.unique([v or "(none)" for v in values], return_counts=True)
    return {"n": len(values), "proportions": {str(name): _r6(c / len(values)) for name, c in zip(names, counts)}}


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two distributions over the same bins (shares, each summing to 1).

    Empty bins are floored at PSI_FLOOR. By the usual rule of thumb below 0.1 is stable, 0.1-0.25 a
    moderate shift, above 0.25 a major one; with few cases PSI is biased upwards (about bins / n).
    """
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), PSI_FLOOR)
    if e.shape != a.shape:
        raise ValueError(f"PSI compares shares over the same bins, got {e.size} and {a.size}")
    return float(np.sum((a - e) * np.log(a / e)))


def numeric_psi(edges: Sequence[float], proportions: Sequence[float], values: np.ndarray) -> float:
    """PSI of `values` binned like a numeric reference."""
    v = np.asarray(values, dtype=np.float64).ravel()
    shares = np.bincount(np.searchsorted(np.asarray(edges, dtype=np.float64), v, side="right"),
                         minlength=len(edges) + 1) / max(v.size, 1)
    return psi(np.asarray(proportions), shares)


def categorical_psi(proportions: dict[str, float], values: Sequence[str]) -> float:
    """PSI of `values` against a categorical reference; unseen values share one "other" bin."""
    known = list(proportions)
    counts = dict.fromkeys([*known, "(other)"], 0)
    for value in values:
        name = value or "(none)"
        counts[name if name in proportions else "(other)"] += 1
    total = max(len(values), 1)
    return psi(np.array([proportions[k] for k in known] + [0.0]), np.array([counts[k] / total for k in counts]))


def ks_against_quantiles(quantiles: Sequence[float], reference_n: int, values: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test of `values` against a reference kept as evenly spaced quantiles.

    The reference's distribution function is the quantiles joined by straight lines (steps where they
    repeat, as for a value every reference image had); D is the largest gap to the values' empirical
    distribution function, and the p-value the asymptotic Kolmogorov one (Stephens' correction) for
    the effective size n*m/(n+m). Returns (D, p); (NaN, NaN) without values.
    """
    q = np.asarray(quantiles, dtype=np.float64)
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    v = v[np.isfinite(v)]
    if v.size == 0 or q.size < 2:
        return float("nan"), float("nan")
    p = np.linspace(0.0, 1.0, q.size)
    points = np.unique(np.concatenate([v, q]))
    current_right = np.searchsorted(v, points, side="right") / v.size
    current_left = np.searchsorted(v, points, side="left") / v.size
    gap = max(float(np.max(np.abs(current_right - _reference_cdf(q, p, points, "right")))),
              float(np.max(np.abs(current_left - _reference_cdf(q, p, points, "left")))))
    effective = v.size * reference_n / (v.size + reference_n)
    return gap, kolmogorov_p(gap, effective)


def _reference_cdf(q: np.ndarray, p: np.ndarray, t: np.ndarray, side: str) -> np.ndarray:
    """The piecewise linear distribution function through (q, p) at t: its right or left limit."""
    k = np.searchsorted(q, t, side="right" if side == "right" else "left")
    inside = (k > 0) & (k < q.size)
    out = np.where(k >= q.size, 1.0, 0.0)
    lo, hi = np.clip(k - 1, 0, q.size - 1), np.clip(k, 0, q.size - 1)
    width = q[hi] - q[lo]
    fraction = np.divide(t - q[lo], width, out=np.zeros_like(t, dtype=np.float64), where=width > 0)
    interpolated = p[lo] + np.clip(fraction, 0.0, 1.0) * (p[hi] - p[lo])
    return np.where(inside, interpolated, out)


def kolmogorov_p(statistic: float, effective_n: float) -> float:
    """P(D >= statistic) for the two-sample KS statistic, asymptotic with Stephens' small-sample correction."""
    if effective_n <= 0 or statistic != statistic:
        return float("nan")
    root = math.sqrt(effective_n)
    lam = (root + 0.12 + 0.11 / root) * statistic
    if lam < 1e-3:
        return 1.0
    total = sum(2 * (-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return float(min(1.0, max(0.0, total)))


# --- small helpers ----------------------------------------------------------------------------


def _same_length(a: np.ndarray, b: np.ndarray) -> None:
    if a.size != b.size:
        raise ValueError(f"got {a.size} probabilities but {b.size} labels; they must pair up one to one")


def _r(value: float | None) -> float | None:
    """Rounded plain float, None for missing or NaN (JSON and YAML both read None)."""
    if value is None or value != value:
        return None
    return round(float(value), 4)


def _r6(value: float) -> float:
    return round(float(value), 6)
