"""The statistics both the trainer and the validation loop use: the count-based bootstrap is the same
resampling as the plain one; PSI and the KS test tell a drifted distribution from a resampled one."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_ai.metrics import (
    bootstrap_auroc_ci,
    bootstrap_auroc_ci_by_counts,
    categorical_psi,
    categorical_reference,
    kolmogorov_p,
    ks_against_quantiles,
    numeric_psi,
    numeric_reference,
    psi,
)


def test_count_bootstrap_gives_the_plain_bootstrap_interval_for_the_same_seed() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 400)
    scores = np.round(np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1), 2)  # many ties
    for seed in (0, 7, [3, 1]):
        plain = bootstrap_auroc_ci(scores, labels, rounds=150, seed=seed)
        fast = bootstrap_auroc_ci_by_counts(scores, labels, rounds=150, seed=seed)
        assert fast == pytest.approx(plain, abs=1e-12)


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift() -> None:
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    small, large = psi(np.array([0.5, 0.5]), np.array([0.45, 0.55])), psi(np.array([0.5, 0.5]), np.array([0.1, 0.9]))
    assert 0 < small < 0.1 < 0.25 < large
    assert psi(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(2 * (1 - 1e-4) * np.log(1 / 1e-4))  # floored


def test_numeric_reference_bins_at_deciles_and_merges_ties() -> None:
    reference = numeric_reference(np.arange(1000.0))
    assert len(reference["edges"]) == 11 and reference["proportions"] == [0.0] + [0.1] * 10 + [0.0]
    assert len(reference["quantiles"]) == 21 and reference["quantiles"][0] == 0.0 and reference["quantiles"][-1] == 999.0
    constant = numeric_reference([672.0] * 50)
    assert constant["edges"] == [672.0, 672.000672] and constant["proportions"] == [0.0, 1.0, 0.0]  # 672, just above
    assert numeric_psi(constant["edges"], constant["proportions"], np.full(20, 672.0)) == 0.0
    assert numeric_psi(constant["edges"], constant["proportions"], np.full(20, 448.0)) > 5
    assert numeric_psi(constant["edges"], constant["proportions"], np.full(20, 896.0)) > 5  # beyond the range too


def test_ks_tells_a_shifted_sample_from_a_fresh_one() -> None:
    rng = np.random.default_rng(1)
    reference = numeric_reference(rng.normal(size=2000))
    _, same = ks_against_quantiles(reference["quantiles"], 2000, rng.normal(size=80))
    statistic, shifted = ks_against_quantiles(reference["quantiles"], 2000, rng.normal(0.8, size=80))
    assert same > 0.05 and shifted < 1e-4 and statistic > 0.25
    constant = numeric_reference([672.0] * 50)
    assert ks_against_quantiles(constant["quantiles"], 50, np.full(30, 672.0)) == (0.0, 1.0)
    assert ks_against_quantiles(constant["quantiles"], 50, np.r_[np.full(15, 672.0), np.full(15, 448.0)])[0] == 0.5


def test_kolmogorov_p_matches_known_values() -> None:
    # Asymptotic Kolmogorov distribution: P(sqrt(n) D > 1.36) = 0.049 and > 1.63 = 0.0098 (large n).
    assert kolmogorov_p(1.36 / np.sqrt(1e6), 1e6) == pytest.approx(0.0494, abs=2e-3)
    assert kolmogorov_p(1.63 / np.sqrt(1e6), 1e6) == pytest.approx(0.0098, abs=1e-3)
    assert kolmogorov_p(0.0, 100) == 1.0


def test_categorical_psi_puts_unseen_values_in_one_bin() -> None:
    reference = categorical_reference(["GE"] * 8 + ["Siemens"] * 2)
    assert reference == {"n": 10, "proportions": {"GE": 0.8, "Siemens": 0.2}}
    assert categorical_psi(reference["proportions"], ["GE"] * 8 + ["Siemens"] * 2) == 0.0
    assert categorical_psi(reference["proportions"], ["Philips"] * 10) > 10
