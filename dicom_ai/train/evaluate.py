"""Held-out metrics for trained models, in numpy only (no sklearn, no scipy).

Every report is plain ints, floats (rounded to 4 decimals), lists and dicts, so it can go straight
into a model card (YAML) or a JSON file; a value that cannot be computed (an AUROC without both
classes, a sensitivity without positives) is None rather than NaN, which neither format spells
portably. Operating points (`youden_threshold`, `threshold_for_sensitivity`) are meant to be chosen
on validation data and then applied, unchanged, to the test split by `binary_report`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np

from dicom_ai.metrics import CALIBRATION_BINS, _r, _same_length, auroc, bootstrap_auroc_ci, calibration, wilson_interval

__all__ = ["CALIBRATION_BINS", "auroc", "binary_report", "bootstrap_auroc_ci", "calibration", "multiclass_report",
           "one_vs_rest_auroc", "pointing_game", "threshold_for_sensitivity", "wilson_interval", "youden_threshold"]

Distance = Literal["chebyshev", "euclidean"]


def one_vs_rest_auroc(probabilities: np.ndarray, labels: np.ndarray) -> list[float]:
    """AUROC of each class's probability column against the rest (NaN for a class absent or alone)."""
    probs, y = _multiclass_inputs(probabilities, labels)
    return [auroc(probs[:, k], (y == k).astype(np.int64)) for k in range(probs.shape[1])]


# --- ranking and operating points -------------------------------------------------------------------------


def youden_threshold(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (Youden's J); choose it on validation data.

    Candidates are the distinct scores rounded to 4 decimals (the precision a card stores); a
    case is positive when its score is >= the threshold. The lowest candidate wins ties.
    """
    p, positives, negatives = _split_by_class(probabilities, labels, "Youden's J")
    candidates = np.unique(np.round(p, 4))
    # Counting with searchsorted gives exactly the means of (p >= candidate) a loop would take.
    sensitivity = (positives.size - np.searchsorted(positives, candidates, side="left")) / positives.size
    specificity = np.searchsorted(negatives, candidates, side="left") / negatives.size
    j = sensitivity + specificity - 1
    best = int(np.argmax(j))
    return round(float(candidates[best]), 4) if j[best] > -1.0 else 0.5


def threshold_for_sensitivity(probabilities: np.ndarray, labels: np.ndarray, target: float = 0.9) -> float:
    """The highest threshold (4 decimals) whose sensitivity is at least `target`; choose it on validation data.

    The highest such threshold keeps the most specificity: the usual choice for a triage tool
    that must not miss more than a set share of positives.
    """
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity must lie in (0, 1], got {target}")
    p, positives, _ = _split_by_class(probabilities, labels, "a sensitivity target")
    candidates = np.unique(np.concatenate([np.round(p, 4), np.zeros(1, dtype=p.dtype)]))
    sensitivity = (positives.size - np.searchsorted(positives, candidates, side="left")) / positives.size
    reaching = np.flatnonzero(sensitivity >= target - 1e-12)
    return round(float(candidates[reaching[-1]]), 4)


def _split_by_class(probabilities: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = np.asarray(probabilities).ravel()
    y = np.asarray(labels).ravel()
    _same_length(p, y)
    positives, negatives = np.sort(p[y == 1]), np.sort(p[y == 0])
    if positives.size == 0 or negatives.size == 0:
        raise ValueError(
            f"cannot choose a threshold by {what}: the labels hold {positives.size} positives and "
            f"{negatives.size} negatives; the validation split needs both classes"
        )
    return p, positives, negatives


# --- reports ----------------------------------------------------------------------------------


def binary_report(probabilities: np.ndarray, labels: np.ndarray, threshold: float, *, seed: int = 0, rounds: int = 1000) -> dict[str, Any]:
    """Everything a card states about a binary model on one held-out split, at a fixed threshold.

    A case is called positive when its probability is >= `threshold`. Interval columns are 95%:
    bootstrap (percentile, `rounds` resamples) for the AUROC, Wilson for sensitivity and specificity.
    """
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    _same_length(p, y)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("binary_report labels must be 0 or 1; use multiclass_report for more classes")
    called = p >= threshold
    positive = y == 1
    tp, fn = int((called & positive).sum()), int((~called & positive).sum())
    tn, fp = int((~called & ~positive).sum()), int((called & ~positive).sum())
    low, high = bootstrap_auroc_ci(p, y, rounds=rounds, seed=seed)
    return {
        "images": int(y.size),
        "positives": int(positive.sum()),
        "auroc": _r(auroc(p, y)),
        "auroc_95ci_bootstrap": [_r(low), _r(high)],
        "threshold": _r(float(threshold)),
        "sensitivity": _ratio(tp, tp + fn),
        "sensitivity_95ci_wilson": _interval(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "specificity_95ci_wilson": _interval(tn, tn + fp),
        "accuracy": _ratio(tp + tn, y.size),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "confusion": {"tp": tp, "fn": fn, "tn": tn, "fp": fp},
        "calibration": calibration(p, positive),
    }


def multiclass_report(
    probabilities: np.ndarray, labels: np.ndarray, classes: Sequence[str], *, seed: int = 0, rounds: int = 1000
) -> dict[str, Any]:
    """Accuracy, one-vs-rest AUROC per class (bootstrap 95% CI), macro AUROC, confusion matrix, calibration.

    The confusion matrix has one row per true class and one column per predicted (argmax) class;
    calibration is that of the top-class probability against being right. The macro AUROC
    averages the classes whose AUROC is defined.
    """
    probs, y = _multiclass_inputs(probabilities, labels)
    if len(classes) != probs.shape[1]:
        raise ValueError(f"multiclass_report got {len(classes)} class names for {probs.shape[1]} probability columns")
    predicted = probs.argmax(axis=1)
    per_class: dict[str, Any] = {}
    areas = one_vs_rest_auroc(probs, y)
    for k, name in enumerate(classes):
        is_k = (y == k).astype(np.int64)
        low, high = bootstrap_auroc_ci(probs[:, k], is_k, rounds=rounds, seed=[seed, k])
        per_class[str(name)] = {"images": int(is_k.sum()), "auroc": _r(areas[k]), "auroc_95ci_bootstrap": [_r(low), _r(high)]}
    defined = [a for a in areas if a == a]
    confusion = np.zeros((probs.shape[1], probs.shape[1]), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    return {
        "images": int(y.size),
        "classes": [str(name) for name in classes],
        "accuracy": _ratio(int((predicted == y).sum()), y.size),
        "per_class": per_class,
        "macro_auroc": _r(float(np.mean(defined))) if defined else None,
        "confusion_matrix": confusion.tolist(),
        "confusion_matrix_axes": "rows: true class, columns: predicted class, in the order of classes",
        "calibration": calibration(probs.max(axis=1), predicted == y),
    }


def _multiclass_inputs(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels).ravel()
    if probs.ndim != 2 or probs.shape[0] != y.size:
        raise ValueError(f"multiclass probabilities must be (N, K) with N = {y.size} labels, got shape {probs.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) and not np.all(y == np.round(y))):
        raise ValueError("multiclass labels must be class indices (integers)")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= probs.shape[1]):
        raise ValueError(f"multiclass labels must lie in 0..{probs.shape[1] - 1}, got {y.min()}..{y.max()}")
    return probs, y


# --- localisation -----------------------------------------------------------------------------


def pointing_game(
    heatmaps: Iterable[np.ndarray], masks: Iterable[np.ndarray], *, tolerance_px: int, distance: Distance = "chebyshev"
) -> dict[str, Any]:
    """Share of (heatmap, mask) pairs whose hottest pixel/voxel lies within `tolerance_px` of the mask.

    Works for 2-D and 3-D arrays of equal shape. Distances are in pixels (voxels), not mm: resample
    anisotropic volumes first. "chebyshev" grows the mask by a square/cube (the max-pool used
    so far), "euclidean" by a disc/ball. The first maximum wins ties. Pairs with an empty mask
    cannot be hit or missed and are counted apart. `chance` is the mean share of the image
    covered by the grown mask: what a uniformly random point would score.
    """
    if tolerance_px < 0:
        raise ValueError(f"pointing game tolerance must be >= 0 pixels, got {tolerance_px}")
    if distance not in ("chebyshev", "euclidean"):
        raise ValueError(f"pointing game distance must be 'chebyshev' or 'euclidean', got {distance!r}")
    hits, n, empty, chance = 0, 0, 0, 0.0
    heatmap_list, mask_list = list(heatmaps), list(masks)
    if len(heatmap_list) != len(mask_list):
        raise ValueError(f"pointing game got {len(heatmap_list)} heatmaps but {len(mask_list)} masks")
    for i, (heatmap, mask) in enumerate(zip(heatmap_list, mask_list)):
        heat, on = np.asarray(heatmap), np.asarray(mask) > 0
        if heat.shape != on.shape or heat.ndim not in (2, 3):
            raise ValueError(f"pointing game pair {i}: heatmap {heat.shape} and mask {on.shape} must be equal 2-D or 3-D shapes")
        if not on.any():
            empty += 1
            continue
        grown = _grow(on, int(tolerance_px), distance)
        peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
        hits += bool(grown[peak])
        chance += float(grown.mean())
        n += 1
    return {
        "hit_rate": _r(hits / n) if n else None,
        "hits": hits,
        "n": n,
        "chance": _r(chance / n) if n else None,
        "tolerance_px": int(tolerance_px),
        "distance": distance,
        "empty_masks_skipped": empty,
    }


def _grow(mask: np.ndarray, radius: int, distance: Distance) -> np.ndarray:
    """Dilate a boolean mask by a cube (Chebyshev) or ball (Euclidean) of `radius` pixels."""
    if radius == 0:
        return mask.copy()
    if distance == "chebyshev":
        grown = mask
        for axis in range(mask.ndim):
            grown = _any_within(grown, axis, radius)
        return grown
    # A ball is the union over offsets o in the leading axes of the mask shifted by o and then
    # grown along the last axis by sqrt(r^2 - |o|^2).
    grown = np.zeros_like(mask)
    span = range(-radius, radius + 1)
    for offset in np.array(np.meshgrid(*[span] * (mask.ndim - 1), indexing="ij")).reshape(mask.ndim - 1, -1).T:
        left = radius * radius - int((offset * offset).sum())
        if left < 0:
            continue
        grown |= _any_within(_shift(mask, tuple(int(o) for o in offset)), mask.ndim - 1, math.isqrt(left))
    return grown


def _any_within(mask: np.ndarray, axis: int, radius: int) -> np.ndarray:
    """True where any pixel within `radius` along `axis` is True (a 1-D max filter by cumulative sums)."""
    if radius == 0:
        return mask.copy()
    moved = np.moveaxis(mask, axis, -1).astype(np.int64)
    padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(radius + 1, radius)])
    total = np.cumsum(padded, axis=-1)
    window = total[..., 2 * radius + 1 :] - total[..., : -2 * radius - 1]
    return np.moveaxis(window > 0, -1, axis)


def _shift(mask: np.ndarray, offset: tuple[int, ...]) -> np.ndarray:
    """The mask moved by `offset` along its leading axes, filling with False."""
    out = np.zeros_like(mask)
    source, target = [], []
    for o, size in zip(offset, mask.shape):
        source.append(slice(max(0, -o), size - max(0, o)))
        target.append(slice(max(0, o), size - max(0, -o)))
    out[tuple(target)] = mask[tuple(source)]
    return out


# --- small helpers ----------------------------------------------------------------------------


def _ratio(numerator: int, denominator: int) -> float | None:
    return _r(numerator / denominator) if denominator else None


def _interval(successes: int, trials: int) -> list[float | None] | None:
    bounds = wilson_interval(successes, trials)
    return None if bounds is None else [_r(bounds[0]), _r(bounds[1])]
