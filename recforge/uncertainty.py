"""How sure are we? Bootstrap intervals over users and paired comparisons of two models.

Every per-user metric (NDCG, recall, novelty, ...) is a mean over the evaluated users, so its uncertainty comes
from which users happened to be in the test set. The percentile bootstrap resamples users with replacement
``n_boot`` times and reads the interval off the resampled means.

Resampling is vectorised: a seeded ``(chunk, n_users)`` matrix of drawn user indices is turned into per-user
draw counts ``W``, and ``W @ values / n`` gives every resample's mean for every metric at once (one BLAS call).
All metrics of one call share the same resamples, and two calls with the same seed and the same number of users
draw the same resamples, so intervals of different models are comparable.

A paired comparison (:func:`paired_test`) looks at per-user differences between a candidate and a baseline on
the same users, which removes the between-user variation both models share and is far more sensitive than
comparing two separate intervals.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

DEFAULT_BOOTSTRAP = 1000
DEFAULT_CONFIDENCE = 0.95
# Upper bound on the draws held in memory at once (chunk × n_users int64 indices and float64 counts).
_MAX_DRAWS_PER_CHUNK = 2_000_000


@dataclass(frozen=True)
class Interval:
    """A mean over users with its bootstrap confidence interval.

    estimate: the plain mean over users with a finite value; low/high: percentile bootstrap bounds (NaN when
    no bootstrap ran or no user has a value); n: users with a finite value; confidence: e.g. 0.95.
    """

    estimate: float
    low: float
    high: float
    n: int
    confidence: float

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies within [low, high]."""
        return bool(self.low <= value <= self.high)


@dataclass(frozen=True)
class PairedComparison:
    """Candidate versus baseline on the same users (difference = candidate − baseline, per user, then mean).

    ci_low/ci_high: percentile bootstrap interval of the mean difference.
    p_value: two-sided paired t-test (scipy.stats.ttest_rel); the decision statistic, since with hundreds of
        users the mean difference is close to normal even when per-user values are not.
    p_wilcoxon: two-sided Wilcoxon signed-rank test (zero differences dropped), robust to outliers.
    p_bootstrap: two-sided bootstrap p-value, the share of centred resampled differences at least as far from 0.
    """

    mean_candidate: float
    mean_baseline: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    p_wilcoxon: float
    p_bootstrap: float
    n: int
    confidence: float

    def significant(self, alpha: float = 0.05) -> bool:
        """Whether the paired t-test rejects "no difference" at level ``alpha``."""
        return bool(self.p_value < alpha)


def _check_settings(n_boot: int, confidence: float) -> None:
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0 (0 skips the bootstrap), got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def resample_counts(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Per-user draw counts of ``n_boot`` bootstrap resamples of ``n`` users, in ``(chunk, n)`` float64 blocks.

    Row ``b`` counts how often each user was drawn in resample ``b`` (rows sum to ``n``). The draws come from
    ``numpy.random.default_rng(seed).integers(0, n, size=(chunk, n))``, chunk after chunk.
    """
    if n < 1:
        raise ValueError("cannot resample zero users")
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _MAX_DRAWS_PER_CHUNK // n))
    done = 0
    while done < n_boot:
        rows = min(chunk, n_boot - done)
        drawn = rng.integers(0, n, size=(rows, n))
        # Offsetting each row by row × n turns the counts of the whole block into one bincount.
        flat = (drawn + (np.arange(rows) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)
        done += rows


def bootstrap_means(values: np.ndarray, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 42) -> np.ndarray:
    """Bootstrap means of each column of ``values`` ``(n_users,)`` or ``(n_users, n_metrics)``, resampling rows.

    Non-finite entries (a user without a value for that metric) are left out of that column's means, so every
    column shares the same resampled users. Returns ``(n_boot, n_metrics)`` (NaN where a resample holds no user
    with a value).
    """
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2:
        raise ValueError(f"values must be 1-D or 2-D (users × metrics), got shape {matrix.shape}")
    finite = np.isfinite(matrix)
    filled = np.where(finite, matrix, 0.0)
    present = finite.astype(np.float64)
    out = np.empty((n_boot, matrix.shape[1]))
    start = 0
    for counts in resample_counts(matrix.shape[0], n_boot, seed):
        sums = counts @ filled
        users = counts @ present
        out[start : start + len(counts)] = np.divide(sums, users, out=np.full_like(sums, np.nan), where=users > 0)
        start += len(counts)
    return out


def bootstrap_cis(
    per_user: Mapping[str, np.ndarray],
    n_boot: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 42,
) -> dict[str, Interval]:
    """Percentile bootstrap interval of the mean of every per-user array, all from the same resampled users.

    per_user: metric name → float array with one value per user (all the same length; NaN = no value).
    ``n_boot=0`` returns the means with NaN bounds.
    """
    _check_settings(n_boot, confidence)
    names = list(per_user)
    if not names:
        return {}
    columns = [np.asarray(per_user[name], dtype=np.float64).ravel() for name in names]
    lengths = {name: len(col) for name, col in zip(names, columns, strict=True)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"per-user arrays must all have one value per user; lengths differ: {lengths}")
    matrix = np.column_stack(columns)
    finite = np.isfinite(matrix)
    counts = finite.sum(axis=0)
    sums = np.where(finite, matrix, 0.0).sum(axis=0)
    estimates = np.divide(sums, counts, out=np.full(len(names), np.nan), where=counts > 0)
    low = high = np.full(len(names), np.nan)
    if n_boot > 0 and matrix.shape[0] > 0:
        means = bootstrap_means(matrix, n_boot, seed)
        alpha = 1.0 - confidence
        # A metric without any value gives an all-NaN column: its bounds stay NaN, and nanquantile, which would
        # warn about it, only sees the others (no warnings filter: this runs in the model threads, and
        # catch_warnings is not thread-safe).
        low, high = np.full(len(names), np.nan), np.full(len(names), np.nan)
        some = ~np.isnan(means).all(axis=0)
        if some.any():
            low[some], high[some] = np.nanquantile(means[:, some], [alpha / 2.0, 1.0 - alpha / 2.0], axis=0)
    return {
        name: Interval(float(estimates[j]), float(low[j]), float(high[j]), int(counts[j]), confidence)
        for j, name in enumerate(names)
    }


def bootstrap_ci(
    values: np.ndarray, n_boot: int = DEFAULT_BOOTSTRAP, confidence: float = DEFAULT_CONFIDENCE, seed: int = 42
) -> Interval:
    """Percentile bootstrap interval of the mean of one per-user array (NaN entries are left out)."""
    return bootstrap_cis({"value": values}, n_boot, confidence, seed)["value"]


def _t_test_p(candidate: np.ndarray, baseline: np.ndarray) -> float:
    """Two-sided paired t-test p-value; exact answers where the differences have no spread."""
    diff = candidate - baseline
    if diff.size < 2:
        return 1.0  # one user cannot show anything
    # Differences equal up to rounding (e.g. (x + 0.1) - x) have no real spread; scipy would return NaN or a
    # meaningless tiny p-value from the rounding noise.
    tolerance = 1e-12 * max(1.0, float(np.abs(diff).max()))
    if np.ptp(diff) <= tolerance:
        # The same result on every user is no evidence of a difference; the same non-zero difference on every
        # user is as certain as data gets.
        return 1.0 if abs(float(diff.mean())) <= tolerance else 0.0
    return float(stats.ttest_rel(candidate, baseline).pvalue)


def _wilcoxon_p(diff: np.ndarray) -> float:
    nonzero = diff[diff != 0]
    if nonzero.size == 0:
        return 1.0
    return float(stats.wilcoxon(nonzero).pvalue)


def paired_test(
    candidate: np.ndarray,
    baseline: np.ndarray,
    n_boot: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 42,
) -> PairedComparison:
    """Compare two models' per-user values on the same users (same order): mean difference, CI and p-values.

    Users where either value is missing (NaN) are left out. The sign is candidate − baseline, so for a
    higher-is-better metric a negative, significant difference is a regression of the candidate.
    """
    _check_settings(n_boot, confidence)
    a = np.asarray(candidate, dtype=np.float64).ravel()
    b = np.asarray(baseline, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(
            f"paired_test needs one value per user for both models; got {a.size} candidate and {b.size} "
            "baseline values: evaluate both on the same split and the same users"
        )
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    diff = a - b
    n = int(diff.size)
    if n == 0:
        raise ValueError("paired_test: no user has a value for both models")
    mean_diff = float(diff.mean())
    ci_low = ci_high = p_boot = math.nan
    if n_boot > 0:
        means = bootstrap_means(diff, n_boot, seed)[:, 0]
        alpha = 1.0 - confidence
        ci_low, ci_high = (float(v) for v in np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0]))
        # Centring the resampled means on 0 imitates the null hypothesis; count those at least as extreme.
        # Adding one to both counts keeps the p-value above 0, as befits a finite number of resamples.
        extreme = int(np.count_nonzero(np.abs(means - mean_diff) >= abs(mean_diff) - 1e-15))
        # One user's resamples are all that user: no spread, so any difference looked significant (p 0.001)
        # while the t-test says 1. One user cannot show a difference.
        p_boot = (extreme + 1) / (n_boot + 1) if n > 1 else 1.0
    return PairedComparison(
        mean_candidate=float(a.mean()),
        mean_baseline=float(b.mean()),
        difference=mean_diff,
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=_t_test_p(a, b),
        p_wilcoxon=_wilcoxon_p(diff),
        p_bootstrap=p_boot,
        n=n,
        confidence=confidence,
    )
