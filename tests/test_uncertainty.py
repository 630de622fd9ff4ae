"""Bootstrap intervals and paired tests: exact small cases, reproducibility, and simulated error rates."""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import pytest

from recforge.uncertainty import bootstrap_ci, bootstrap_cis, bootstrap_means, paired_test, resample_counts


def test_resample_counts_are_the_seeded_index_matrix_counted_per_user() -> None:
    n, n_boot = 7, 5
    blocks = list(resample_counts(n, n_boot, seed=3))
    counts = np.vstack(blocks)
    drawn = np.random.default_rng(3).integers(0, n, size=(n_boot, n))
    expected = np.stack([np.bincount(row, minlength=n) for row in drawn])
    np.testing.assert_array_equal(counts, expected)
    assert (counts.sum(axis=1) == n).all()


def test_bootstrap_means_equal_explicit_resampled_means() -> None:
    values = np.arange(10, dtype=float) ** 2
    means = bootstrap_means(values, n_boot=50, seed=11)[:, 0]
    drawn = np.random.default_rng(11).integers(0, 10, size=(50, 10))
    np.testing.assert_allclose(means, values[drawn].mean(axis=1))


def test_bootstrap_means_leave_out_missing_values_per_column() -> None:
    values = np.array([[1.0, 10.0], [2.0, np.nan], [3.0, 30.0]])
    means = bootstrap_means(values, n_boot=40, seed=0)
    drawn = np.random.default_rng(0).integers(0, 3, size=(40, 3))
    np.testing.assert_allclose(means[:, 0], values[drawn, 0].mean(axis=1))
    # A resample that drew only user 1 has no value for the second metric: NaN, not 0.
    with pytest.warns(RuntimeWarning, match="Mean of empty slice") if (drawn == 1).all(axis=1).any() else nullcontext():
        expected = np.nanmean(values[drawn, 1], axis=1)
    np.testing.assert_allclose(means[:, 1], expected)


def test_interval_is_reproducible_ordered_and_degenerate_for_constants() -> None:
    values = np.random.default_rng(1).exponential(size=300)
    a = bootstrap_ci(values, n_boot=500, seed=5)
    b = bootstrap_ci(values, n_boot=500, seed=5)
    assert a == b
    assert a.low < a.estimate < a.high and a.n == 300
    assert a.estimate == pytest.approx(values.mean())
    c = bootstrap_ci(values, n_boot=500, seed=6)
    assert (c.low, c.high) != (a.low, a.high)
    flat = bootstrap_ci(np.full(20, 0.25), n_boot=100)
    assert flat.low == flat.estimate == flat.high == pytest.approx(0.25)
    skipped = bootstrap_ci(values, n_boot=0)
    assert math.isnan(skipped.low) and skipped.estimate == pytest.approx(values.mean())


def test_several_metrics_share_resamples_and_reject_ragged_input() -> None:
    values = np.random.default_rng(2).random(100)
    got = bootstrap_cis({"x": values, "twice": 2 * values}, n_boot=200, seed=9)
    # Same resamples: the interval of 2x is exactly twice the interval of x.
    assert got["twice"].low == pytest.approx(2 * got["x"].low)
    assert got["twice"].high == pytest.approx(2 * got["x"].high)
    with pytest.raises(ValueError, match="lengths differ"):
        bootstrap_cis({"a": np.ones(3), "b": np.ones(4)})
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_cis({"a": np.ones(3)}, confidence=1.5)


def test_interval_covers_the_true_mean_at_about_the_nominal_rate() -> None:
    # 300 samples of 120 "users" from a skewed distribution with a known mean (exponential, mean 0.2).
    rng = np.random.default_rng(2024)
    reps, n = 300, 120
    covered = 0
    for rep in range(reps):
        sample = rng.exponential(scale=0.2, size=n)
        covered += bootstrap_ci(sample, n_boot=1000, seed=rep).contains(0.2)
    rate = covered / reps
    # Nominal 0.95; the percentile bootstrap runs slightly low on skewed data with n = 120. The binomial
    # standard error of the rate over 300 repetitions is about 0.013.
    assert 0.90 <= rate <= 0.985, rate


def test_paired_test_by_hand_when_differences_have_no_spread() -> None:
    a = np.array([0.5, 0.2, 0.9, 0.1])
    same = paired_test(a, a.copy(), n_boot=100)
    assert same.difference == 0.0 and same.p_value == 1.0 and same.p_wilcoxon == 1.0 and same.p_bootstrap == 1.0
    shifted = paired_test(a + 0.1, a, n_boot=100)
    assert shifted.difference == pytest.approx(0.1)
    assert shifted.p_value == 0.0
    assert shifted.ci_low == pytest.approx(0.1) and shifted.ci_high == pytest.approx(0.1)
    assert shifted.mean_candidate == pytest.approx(a.mean() + 0.1) and shifted.mean_baseline == pytest.approx(a.mean())
    # One user cannot show a difference: the bootstrap said p 0.001 (its resamples are all that user) while the
    # t-test said 1.
    one = paired_test(np.array([0.6]), np.array([0.3]), n_boot=999)
    assert one.difference == pytest.approx(0.3) and one.p_value == 1.0 and one.p_bootstrap == 1.0


def test_paired_test_matches_scipy_and_drops_missing_pairs() -> None:
    from scipy import stats

    rng = np.random.default_rng(4)
    a, b = rng.random(50), rng.random(50)
    a[3], b[7] = np.nan, np.nan
    got = paired_test(a, b, n_boot=200)
    keep = ~(np.isnan(a) | np.isnan(b))
    assert got.n == 48
    assert got.difference == pytest.approx(float((a[keep] - b[keep]).mean()))
    assert got.p_value == pytest.approx(stats.ttest_rel(a[keep], b[keep]).pvalue)
    assert got.p_wilcoxon == pytest.approx(stats.wilcoxon(a[keep] - b[keep]).pvalue)
    with pytest.raises(ValueError, match="same users"):
        paired_test(a, b[:10])


def test_paired_test_detects_a_planted_difference_and_not_a_null_one() -> None:
    rng = np.random.default_rng(77)
    n_users, reps = 300, 100
    planted_found = null_found = 0
    for rep in range(reps):
        # Per-user quality varies a lot between users (shared by both models) and a little within a user.
        base = rng.beta(2, 8, size=n_users)
        baseline = np.clip(base + rng.normal(0, 0.05, n_users), 0, 1)
        better = np.clip(base + 0.02 + rng.normal(0, 0.05, n_users), 0, 1)
        same = np.clip(base + rng.normal(0, 0.05, n_users), 0, 1)
        planted = paired_test(better, baseline, n_boot=200, seed=rep)
        null = paired_test(same, baseline, n_boot=200, seed=rep)
        planted_found += planted.significant(0.05) and planted.difference > 0 and planted.ci_low > 0
        null_found += null.significant(0.05)
    # A 0.02 shift with per-user noise sd 0.07 over 300 users: power is about 0.99.
    assert planted_found / reps >= 0.9
    # Under the null the test should reject about 5 % of the time.
    assert null_found / reps <= 0.12


def test_a_metric_without_values_gets_nan_bounds_without_touching_the_warnings_filters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Intervals are computed in the model threads, where warnings.catch_warnings is not safe (two threads in it at
    # once can leave one's filter installed for the process): an all-NaN metric must need no filter, and must not
    # change the other metrics' intervals.
    import warnings

    values = np.random.default_rng(4).random(50)

    def no_catch_warnings(*args: object, **kwargs: object) -> None:
        raise AssertionError("bootstrap_cis changed the process-wide warnings filters")

    alone = bootstrap_cis({"x": values}, n_boot=100, seed=3)["x"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.setattr(warnings, "catch_warnings", no_catch_warnings)
        got = bootstrap_cis({"empty": np.full(50, np.nan), "x": values}, n_boot=100, seed=3)
        monkeypatch.undo()
    assert math.isnan(got["empty"].low) and math.isnan(got["empty"].high) and got["empty"].n == 0
    # The resampled means of all metrics come from one matrix product, whose sums may round differently with another
    # column beside them (the last bit, seen on an AMD EPYC machine): equal to float rounding, not bit for bit.
    assert (got["x"].low, got["x"].high) == pytest.approx((alone.low, alone.high), rel=1e-12, abs=0.0)
