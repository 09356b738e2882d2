"""Held-out metrics on cases small enough to check by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from dicom_ai.train.evaluate import (
    auroc,
    binary_report,
    bootstrap_auroc_ci,
    calibration,
    multiclass_report,
    pointing_game,
    threshold_for_sensitivity,
    wilson_interval,
    youden_threshold,
)

LABELS = np.array([0, 0, 1, 1])


def test_auroc_perfect_reversed_ties_and_partial() -> None:
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), LABELS) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), LABELS) == 0.0
    assert auroc(np.array([0.5, 0.5, 0.5, 0.5]), LABELS) == 0.5
    assert auroc(np.array([0.1, 0.6, 0.4, 0.9]), LABELS) == 0.75
    assert auroc(np.array([0.1, 0.5, 0.5, 0.9]), LABELS) == 0.875  # one tied pair counts half
    assert np.isnan(auroc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_auroc_equals_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(3)
    p = np.round(rng.random(60), 1)
    y = (rng.random(60) < 0.4).astype(int)
    pos, neg = p[y == 1], p[y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auroc(p, y) == pytest.approx(pairs, abs=1e-12)


def test_bootstrap_ci_contains_the_estimate_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.2, 80), 0, 1)
    low, high = bootstrap_auroc_ci(p, y, rounds=300, seed=1)
    assert 0.5 < low <= auroc(p, y) <= high <= 1.0
    assert bootstrap_auroc_ci(p, y, rounds=300, seed=1) == (low, high)
    assert all(np.isnan(bootstrap_auroc_ci(p[:5], np.ones(5), rounds=20)))


def test_operating_points_on_validation_scores() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    assert 0.3 < youden_threshold(p, y) <= 0.6
    assert threshold_for_sensitivity(p, y, target=1.0) == 0.6
    assert threshold_for_sensitivity(p, y, target=0.6) == 0.7  # 2 of 3 positives
    assert threshold_for_sensitivity(np.array([0.9, 0.1, 0.2]), np.array([0, 1, 1]), target=1.0) == 0.1
    with pytest.raises(ValueError, match="needs both classes"):
        youden_threshold(p[:3], y[:3])


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    assert wilson_interval(0, 0) is None


def test_binary_report_of_perfect_predictions_is_perfect_and_serialisable() -> None:
    y = np.array([0, 0, 0, 1, 1])
    report = binary_report(y.astype(float), y, threshold=0.5, rounds=50)
    assert report["images"] == 5 and report["positives"] == 2
    assert report["auroc"] == 1.0 and report["sensitivity"] == 1.0 and report["specificity"] == 1.0
    assert report["ppv"] == 1.0 and report["npv"] == 1.0 and report["accuracy"] == 1.0
    assert report["confusion"] == {"tp": 2, "fn": 0, "tn": 3, "fp": 0}
    assert report["calibration"]["brier"] == 0.0 and report["calibration"]["ece"] == 0.0
    assert report["sensitivity_95ci_wilson"][1] == 1.0
    assert json.loads(json.dumps(report)) == report
    assert yaml.safe_load(yaml.safe_dump(report)) == report


def test_binary_report_counts_at_the_threshold() -> None:
    y = np.array([0, 0, 1, 1])
    report = binary_report(np.array([0.2, 0.6, 0.4, 0.9]), y, threshold=0.5, rounds=50)
    assert report["confusion"] == {"tp": 1, "fn": 1, "tn": 1, "fp": 1}
    assert report["ppv"] == 0.5 and report["threshold"] == 0.5
    no_positives = binary_report(np.array([0.2, 0.6]), np.array([0, 0]), threshold=0.5, rounds=10)
    assert no_positives["sensitivity"] is None and no_positives["auroc"] is None


def test_calibration_bins_and_error() -> None:
    result = calibration(np.array([0.05, 0.05, 0.95, 0.95]), np.array([0, 1, 1, 1]))
    first, last = result["reliability"][0], result["reliability"][-1]
    assert len(result["reliability"]) == 10
    assert first == {"bin_low": 0.0, "bin_high": 0.1, "count": 2, "mean_predicted": 0.05, "observed_rate": 0.5}
    assert last["count"] == 2 and last["observed_rate"] == 1.0
    assert result["reliability"][5]["count"] == 0 and result["reliability"][5]["mean_predicted"] is None
    assert result["ece"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)


def test_multiclass_report() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[y] * 0.7 + 0.1
    report = multiclass_report(probs, y, ["a", "b", "c"], rounds=20)
    assert report["accuracy"] == 1.0 and report["macro_auroc"] == 1.0
    assert report["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert report["per_class"]["b"]["images"] == 2 and report["per_class"]["b"]["auroc"] == 1.0
    assert report["calibration"]["reliability"][7]["count"] == 6  # all top-class probabilities are 0.8
    swapped = multiclass_report(probs, np.array([1, 1, 2, 0, 1, 2]), ["a", "b", "c"], rounds=20)
    assert swapped["confusion_matrix"][1] == [1, 2, 0]
    with pytest.raises(ValueError, match="class names"):
        multiclass_report(probs, y, ["a", "b"])


def test_pointing_game_2d_distances_and_chance() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[5, 5] = True
    on, diagonal, far = (np.zeros((10, 10)) for _ in range(3))
    on[5, 5], diagonal[7, 7], far[5, 9] = 1, 1, 1
    cheb = pointing_game([on, diagonal, far], [mask] * 3, tolerance_px=2)
    assert (cheb["hits"], cheb["n"], cheb["distance"]) == (2, 3, "chebyshev")
    assert cheb["chance"] == 0.25  # a 5x5 square
    eucl = pointing_game([on, diagonal, far], [mask] * 3, tolerance_px=2, distance="euclidean")
    assert eucl["hits"] == 1 and eucl["chance"] == 0.13  # 13 pixels lie within 2 of the centre
    empty = pointing_game([on], [np.zeros((10, 10))], tolerance_px=1)
    assert empty["n"] == 0 and empty["hit_rate"] is None and empty["empty_masks_skipped"] == 1


def test_pointing_game_3d() -> None:
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[5, 5, 5] = True
    hit, miss = np.zeros((10, 10, 10)), np.zeros((10, 10, 10))
    hit[6, 6, 6], miss[5, 5, 8] = 1, 1
    cheb = pointing_game(np.stack([hit, miss]), np.stack([mask, mask]), tolerance_px=1)
    assert cheb["hit_rate"] == 0.5 and cheb["chance"] == 0.027
    eucl = pointing_game([hit], [mask], tolerance_px=1, distance="euclidean")
    assert eucl["hit_rate"] == 0.0 and eucl["chance"] == 0.007  # centre and its 6 face neighbours
    with pytest.raises(ValueError, match="equal 2-D or 3-D shapes"):
        pointing_game([hit], [mask[0]], tolerance_px=1)
