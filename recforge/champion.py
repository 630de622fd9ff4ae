"""Champion selection: the model that serves, chosen by one declared metric behind two guard rails.

Rule (docs/evaluation.md, "Choosing the champion"):

1. Rank the models that were evaluated without error by the primary metric (default ``ndcg@10``; ``rmse`` and
   ``mae`` are lower-is-better). Ties go to the model listed first.
2. Walk down that ranking and take the first model that passes both guard rails:
   - **coverage floor**: catalogue coverage at the primary metric's cut-off is at least ``coverage_floor``
     (a model that shows almost nobody anything new is not worth serving however accurate it looks);
   - **no significant regression against the previous champion**: when the previous champion was evaluated
     in this run, a paired test on the same users (:func:`recforge.uncertainty.paired_test`) must not find the
     candidate significantly worse (p < ``alpha``); when it was not, the candidate's bootstrap interval must not
     lie entirely below the stored value (or below the stored interval, when one was kept).
3. If no model passes, nobody is chosen: the decision says why, and serving keeps the previous champion.

The result, :class:`ChampionSelection`, explains the choice and every rejection in plain words, and converts to
the :class:`recforge.store.ChampionDecision` the store publishes.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from recforge.evaluation import FullEvaluation, metric_key, parse_metric_key
from recforge.store import ChampionDecision
from recforge.uncertainty import DEFAULT_BOOTSTRAP, DEFAULT_CONFIDENCE, PairedComparison, paired_test

#: Metrics where lower is better; every other metric is maximised.
LOWER_IS_BETTER = frozenset({"rmse", "mae"})


@dataclass(frozen=True)
class ChampionRules:
    """The declared selection rule.

    primary_metric: ``"name@k"`` (e.g. ``"ndcg@10"``) or a metric without cut-off (``"rmse"``).
    coverage_floor: minimum catalogue coverage (0–1) at the primary metric's cut-off (``coverage@k``); 0 turns
        the floor off. For a metric without a cut-off, ``coverage_metric`` must name the coverage to use.
    coverage_metric: the coverage key to check; default ``coverage@k`` of the primary metric.
    alpha: significance level of the regression test.
    bootstrap / seed / confidence: resamples, seed and level of the paired bootstrap interval.
    """

    primary_metric: str = "ndcg@10"
    coverage_floor: float = 0.05
    coverage_metric: str | None = None
    alpha: float = 0.05
    bootstrap: int = DEFAULT_BOOTSTRAP
    seed: int = 42
    confidence: float = DEFAULT_CONFIDENCE

    def __post_init__(self) -> None:
        parse_metric_key(self.primary_metric)  # raises on a malformed name
        if not 0.0 <= self.coverage_floor <= 1.0:
            raise ValueError(f"coverage_floor is a share of the catalogue in [0, 1], got {self.coverage_floor!r}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must lie strictly between 0 and 1, got {self.alpha!r}")
        if self.coverage_floor > 0 and self.coverage_key is None:
            raise ValueError(
                f"primary metric {self.primary_metric!r} has no cut-off, so the coverage floor needs "
                "coverage_metric (e.g. 'coverage@10'), or set coverage_floor=0"
            )

    @property
    def metric(self) -> str:
        """The primary metric's canonical key, e.g. ``"ndcg@10"``."""
        return metric_key(*parse_metric_key(self.primary_metric))

    @property
    def lower_is_better(self) -> bool:
        return parse_metric_key(self.primary_metric)[0] in LOWER_IS_BETTER

    @property
    def coverage_key(self) -> str | None:
        if self.coverage_metric is not None:
            return metric_key(*parse_metric_key(self.coverage_metric))
        k = parse_metric_key(self.primary_metric)[1]
        return None if k is None else metric_key("coverage", k)


@dataclass(frozen=True)
class Candidate:
    """One model's evaluation, as champion selection needs it.

    metrics: key → value over all users (e.g. ``{"ndcg@10": 0.19, "coverage@10": 0.13}``).
    intervals: key → (low, high) bootstrap interval, where one exists.
    per_user: key → per-user values, in the order of ``users`` (for the paired test).
    users: the evaluated users' ids; two candidates are paired on the ids they share.
    error: why the model could not be evaluated (it is then never chosen).
    """

    model: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    intervals: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    per_user: Mapping[str, np.ndarray] = field(default_factory=dict)
    users: np.ndarray | None = None
    error: str | None = None

    @classmethod
    def from_evaluation(cls, evaluation: FullEvaluation) -> Candidate:
        """The overall metrics, intervals and per-user values of an :func:`~recforge.evaluation.evaluate_full`."""
        overall = evaluation.summary.loc[evaluation.summary["group"].eq("all")]
        metrics: dict[str, float] = {}
        intervals: dict[str, tuple[float, float]] = {}
        for metric, k, value, low, high in zip(
            overall["metric"], overall["k"], overall["value"], overall["ci_low"], overall["ci_high"], strict=True
        ):
            key = metric_key(metric, None if pd.isna(k) else int(k))
            metrics[key] = float(value)
            if np.isfinite(low) and np.isfinite(high):
                intervals[key] = (float(low), float(high))
        per_user = {
            column: evaluation.per_user[column].to_numpy(dtype=np.float64)
            for column in evaluation.per_user.columns
            if column not in ("group", "train_events")
        }
        return cls(
            model=evaluation.model,
            metrics=metrics,
            intervals=intervals,
            per_user=per_user,
            users=evaluation.per_user.index.to_numpy(),
        )


@dataclass(frozen=True)
class PreviousChampion:
    """The champion currently serving: its model, the metric it was chosen by, and that value (with CI if kept)."""

    model: str
    metric: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None

    @classmethod
    def from_decision(cls, decision: ChampionDecision) -> PreviousChampion:
        """From the store's champion row (which keeps no interval)."""
        return cls(model=decision.model, metric=decision.metric, value=float(decision.value))


@dataclass(frozen=True)
class Rejection:
    """A model that was not chosen, and why (in plain words)."""

    model: str
    reason: str


@dataclass(frozen=True)
class ChampionSelection:
    """The outcome of :func:`select_champion`.

    model: the chosen model, or None when no model passed the guard rails (serving keeps the previous champion).
    value / ci_low / ci_high: the chosen model's primary metric and its bootstrap interval (NaN when none).
    reason: why it was chosen and what was rejected, in plain words.
    rejected: each model passed over (better-ranked ones that failed a guard rail, and the rest) with its reason.
    comparison: the paired test against the previous champion, when one ran for the chosen model.
    kept: the date's standing champion when it stays (model is then None: no champion row is written).
    """

    model: str | None
    metric: str
    value: float
    ci_low: float
    ci_high: float
    reason: str
    rejected: tuple[Rejection, ...] = ()
    comparison: PairedComparison | None = None
    kept: str | None = None

    @property
    def chosen(self) -> bool:
        return self.model is not None

    def to_decision(self) -> ChampionDecision:
        """The store's :class:`~recforge.store.ChampionDecision` (model, metric, value, reason)."""
        if self.model is None:
            raise ValueError(f"no champion was chosen, so there is nothing to publish as champion: {self.reason}")
        return ChampionDecision(model=self.model, metric=self.metric, value=self.value, reason=self.reason)


def keep_standing_champion(
    selection: ChampionSelection,
    standing: ChampionDecision | None,
    retrained: Collection[str],
    failed: Collection[str] = (),
) -> ChampionSelection:
    """``selection``, or no champion when this date's standing one should stay.

    A rerun of an ``as_of`` with some of the models (``--models popularity``) publishes only theirs; the others'
    rows of that date stay published, the standing champion's too. Its value was measured on the same date, so a
    candidate replaces it only by scoring better on the same metric; otherwise no champion row is written and the
    view keeps serving it (before, the rerun's best model replaced a better champion that nothing had retrained).
    ``failed``: the models this run tried and that failed; a standing champion among them is kept too (its rows
    stay published), and the reason says it failed rather than that it was not retrained.
    """
    if standing is None or standing.model in retrained or standing.metric != selection.metric:
        return selection
    if selection.model is not None:
        better = (
            selection.value < standing.value
            if selection.metric in LOWER_IS_BETTER
            else selection.value > standing.value
        )
        if better:
            return selection
    best = (
        "no model passed the guard rails"
        if selection.model is None
        else f"{selection.model} scores {_fmt(selection.value)}"
    )
    # Not followed by the selection's own "chose <model>: …": printed as "Champion: None (kept als … chose
    # popularity …)" it said both that there was no champion and that another had been chosen.
    why = (
        "failed in this run (its published rows of this date stay)"
        if standing.model in failed
        else "this run did not retrain"
    )
    reason = (
        f"kept {standing.model}, this date's champion ({standing.metric} {_fmt(standing.value)}), which {why}: {best}"
    )
    return replace(selection, model=None, reason=reason, kept=standing.model)


def _fmt(value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.4f}"


def _paired_on_shared_users(
    candidate: Candidate, baseline: Candidate, key: str, rules: ChampionRules
) -> PairedComparison | None:
    """The paired test of ``candidate`` − ``baseline`` on ``key`` over the users both were evaluated on."""
    if key not in candidate.per_user or key not in baseline.per_user:
        return None
    a, b = np.asarray(candidate.per_user[key]), np.asarray(baseline.per_user[key])
    if candidate.users is not None and baseline.users is not None:
        shared, ia, ib = np.intersect1d(candidate.users, baseline.users, assume_unique=True, return_indices=True)
        if shared.size == 0:
            return None
        a, b = a[ia], b[ib]
    elif a.shape != b.shape:
        return None
    return paired_test(a, b, n_boot=rules.bootstrap, confidence=rules.confidence, seed=rules.seed)


def _regression_check(
    candidate: Candidate,
    previous: PreviousChampion | None,
    by_model: Mapping[str, Candidate],
    rules: ChampionRules,
) -> tuple[str | None, str, PairedComparison | None]:
    """``(rejection or None, note for the reason text, paired comparison or None)`` against the previous champion."""
    if previous is None:
        return None, "no previous champion to compare with", None
    key = rules.metric
    if candidate.model == previous.model:
        return None, f"it is the previous champion ({previous.model})", None
    sign = 1.0 if rules.lower_is_better else -1.0  # multiplies a difference so that "worse" is positive
    in_run = by_model.get(previous.model)
    if in_run is not None and in_run.error is None:
        comparison = _paired_on_shared_users(candidate, in_run, key, rules)
        if comparison is not None:
            worse = sign * comparison.difference > 0 and comparison.significant(rules.alpha)
            text = (
                f"{key} difference vs previous champion {previous.model} on the same {comparison.n} users "
                f"{comparison.difference:+.4f} ({rules.confidence:.0%} CI {_fmt(comparison.ci_low)} to "
                f"{_fmt(comparison.ci_high)}, paired t-test p={comparison.p_value:.3g})"
            )
            if worse:
                return f"significant regression: {text}", text, comparison
            return None, f"no significant regression: {text}", comparison
    if parse_metric_key(previous.metric) != parse_metric_key(key):
        return (
            None,
            f"previous champion {previous.model} was chosen by {previous.metric}, not {key}: not compared",
            None,
        )
    interval = candidate.intervals.get(key)
    # A NaN bound (an interval not computed, e.g. bootstrap=0) is no interval: compared with NaN, every regression
    # check passed silently.
    if interval is None or not all(math.isfinite(bound) for bound in interval):
        return None, f"no {key} interval for {candidate.model}: regression vs the stored value not checked", None
    low, high = interval
    has_stored_ci = all(bound is not None and math.isfinite(bound) for bound in (previous.ci_low, previous.ci_high))
    # The stored value comes from another run (other users, another time window), so only a clear gap counts:
    # the candidate's whole interval on the worse side of the stored interval (or value, when none was kept).
    if rules.lower_is_better:
        bound = previous.ci_high if has_stored_ci else previous.value
        worse = low > bound
    else:
        bound = previous.ci_low if has_stored_ci else previous.value
        worse = high < bound
    stored = f"stored {key} of previous champion {previous.model} {_fmt(previous.value)}" + (
        f" (CI {_fmt(previous.ci_low)} to {_fmt(previous.ci_high)})" if has_stored_ci else ""
    )
    text = f"{key} {_fmt(candidate.metrics.get(key, math.nan))} (CI {_fmt(low)} to {_fmt(high)}) vs {stored}"
    if worse:
        return f"significant regression: {text}", text, None
    return None, f"no significant regression: {text}", None


def select_champion(
    candidates: Sequence[Candidate | FullEvaluation],
    rules: ChampionRules | None = None,
    previous: PreviousChampion | ChampionDecision | None = None,
) -> ChampionSelection:
    """Choose the champion among ``candidates`` (in run order) under ``rules``; see the module docstring."""
    rules = rules or ChampionRules()
    if isinstance(previous, ChampionDecision):
        previous = PreviousChampion.from_decision(previous)
    pool = [c if isinstance(c, Candidate) else Candidate.from_evaluation(c) for c in candidates]
    names = [c.model for c in pool]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate model names must be unique; got {names}")
    by_model = {c.model: c for c in pool}
    key = rules.metric
    rejected: list[Rejection] = []
    ranked: list[Candidate] = []
    for candidate in pool:
        value = candidate.metrics.get(key)
        if candidate.error is not None:
            rejected.append(Rejection(candidate.model, f"evaluation failed: {candidate.error}"))
        elif value is None or not np.isfinite(value):
            rejected.append(Rejection(candidate.model, f"has no {key} value"))
        else:
            ranked.append(candidate)
    sign = 1.0 if rules.lower_is_better else -1.0
    ranked.sort(key=lambda c: sign * c.metrics[key])  # stable: ties keep run order

    coverage_key = rules.coverage_key
    for position, candidate in enumerate(ranked):
        value = float(candidate.metrics[key])
        if rules.coverage_floor > 0 and coverage_key is not None:
            coverage = candidate.metrics.get(coverage_key)
            if coverage is None or not np.isfinite(coverage):
                rejected.append(Rejection(candidate.model, f"{key} {_fmt(value)}, but it has no {coverage_key}"))
                continue
            if coverage < rules.coverage_floor:
                rejected.append(
                    Rejection(
                        candidate.model,
                        f"{key} {_fmt(value)}, but {coverage_key} {_fmt(coverage)} is below the floor "
                        f"{rules.coverage_floor:g}",
                    )
                )
                continue
        regression, note, comparison = _regression_check(candidate, previous, by_model, rules)
        if regression is not None:
            rejected.append(Rejection(candidate.model, f"{key} {_fmt(value)}, but {regression}"))
            continue
        rejected.extend(
            Rejection(other.model, f"lower-ranked: {key} {_fmt(other.metrics[key])}")
            for other in ranked[position + 1 :]
        )
        low, high = candidate.intervals.get(key, (math.nan, math.nan))
        direction = "lowest" if rules.lower_is_better else "highest"
        passed = (
            f"{coverage_key} {_fmt(candidate.metrics.get(coverage_key, math.nan))} >= {rules.coverage_floor:g}; "
            if rules.coverage_floor > 0 and coverage_key is not None
            else ""
        )
        reason = (
            f"chose {candidate.model}: {direction} {key} {_fmt(value)} ({rules.confidence:.0%} CI {_fmt(low)} to "
            f"{_fmt(high)}) among the models passing the guard rails; {passed}{note}."
        )
        if rejected:
            reason += " Not chosen: " + "; ".join(f"{r.model} ({r.reason})" for r in rejected) + "."
        return ChampionSelection(
            model=candidate.model,
            metric=key,
            value=value,
            ci_low=low,
            ci_high=high,
            reason=reason,
            rejected=tuple(rejected),
            comparison=comparison,
        )

    keep = f"; serving keeps the previous champion {previous.model}" if previous is not None else ""
    details = "; ".join(f"{r.model} ({r.reason})" for r in rejected) or "no candidates"
    return ChampionSelection(
        model=None,
        metric=key,
        value=math.nan,
        ci_low=math.nan,
        ci_high=math.nan,
        reason=f"no champion chosen: no model passed the guard rails{keep}. Rejected: {details}.",
        rejected=tuple(rejected),
    )
