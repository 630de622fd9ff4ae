"""Champion selection: primary metric, coverage floor, regression guard (in-run and stored), reasons."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from recforge.champion import (
    Candidate,
    ChampionRules,
    ChampionSelection,
    PreviousChampion,
    keep_standing_champion,
    select_champion,
)
from recforge.config import RunConfig
from recforge.evaluation import evaluate_full
from recforge.metrics import TOPN_KEYS
from recforge.split import temporal_holdout
from recforge.store import ChampionDecision
from recmodels.baselines.popularity import Popularity

USERS = np.array([f"u{i}" for i in range(400)], dtype=object)


def candidate(
    model: str,
    per_user: np.ndarray,
    coverage: float = 0.2,
    interval: tuple[float, float] | None = None,
    error: str | None = None,
) -> Candidate:
    mean = float(per_user.mean())
    return Candidate(
        model=model,
        metrics={"ndcg@10": mean, "coverage@10": coverage},
        intervals={"ndcg@10": interval or (mean - 0.01, mean + 0.01)},
        per_user={"ndcg@10": per_user},
        users=USERS,
        error=error,
    )


def quality(shift: float, seed: int) -> np.ndarray:
    """Per-user NDCG-like values: a common per-user level plus model noise, shifted by ``shift``."""
    base = np.random.default_rng(0).beta(2, 6, size=len(USERS))
    return np.clip(base + shift + np.random.default_rng(seed).normal(0, 0.03, len(USERS)), 0, 1)


def test_best_primary_metric_wins_and_converts_to_the_store_decision() -> None:
    a, b = candidate("a", quality(0.0, 1)), candidate("b", quality(0.05, 2))
    got = select_champion([a, b])
    assert got.chosen and got.model == "b" and got.metric == "ndcg@10"
    assert got.value == pytest.approx(b.metrics["ndcg@10"])
    assert (got.ci_low, got.ci_high) == b.intervals["ndcg@10"]
    assert got.reason.startswith("chose b: highest ndcg@10")
    assert "a (lower-ranked" in got.reason
    assert [r.model for r in got.rejected] == ["a"]
    decision = got.to_decision()
    assert isinstance(decision, ChampionDecision)
    assert (decision.model, decision.metric, decision.value) == ("b", "ndcg@10", got.value)
    assert decision.reason == got.reason


def test_coverage_floor_rejects_the_most_accurate_model_with_a_reason() -> None:
    narrow = candidate("popularity", quality(0.1, 1), coverage=0.0447)
    broad = candidate("item_knn", quality(0.0, 2), coverage=0.13)
    got = select_champion([narrow, broad], ChampionRules(coverage_floor=0.05))
    assert got.model == "item_knn"
    assert got.rejected[0].model == "popularity"
    assert "coverage@10 0.0447 is below the floor 0.05" in got.rejected[0].reason
    assert "popularity" in got.reason and "below the floor" in got.reason
    # Without the floor the more accurate model wins.
    assert select_champion([narrow, broad], ChampionRules(coverage_floor=0.0)).model == "popularity"


def test_significant_regression_against_the_previous_champion_in_this_run_is_rejected() -> None:
    # The previous champion is still the most accurate but now fails the coverage floor; the next model is
    # clearly worse on the same users, so nobody replaces it.
    previous = candidate("old", quality(0.05, 1), coverage=0.01)
    worse = candidate("worse", quality(0.0, 2))
    got = select_champion([previous, worse], previous=PreviousChampion("old", "ndcg@10", 0.3))
    assert not got.chosen and got.model is None and math.isnan(got.value)
    reasons = {r.model: r.reason for r in got.rejected}
    assert "below the floor" in reasons["old"]
    assert "significant regression" in reasons["worse"] and "previous champion old" in reasons["worse"]
    assert "serving keeps the previous champion old" in got.reason
    with pytest.raises(ValueError, match="no champion was chosen"):
        got.to_decision()

    # A model that is only insignificantly worse than the previous champion may replace it.
    noise = np.random.default_rng(3).normal(0, 0.03, len(USERS))
    close = candidate("close", previous.per_user["ndcg@10"] + (noise - noise.mean()) - 0.001)  # mean diff -0.001
    got = select_champion([previous, close], previous=PreviousChampion("old", "ndcg@10", 0.3))
    assert got.model == "close"
    assert got.comparison is not None and got.comparison.n == len(USERS)
    assert got.comparison.difference < 0 and not got.comparison.significant(0.05)
    assert "no significant regression" in got.reason


def test_paired_test_uses_the_users_both_models_share() -> None:
    previous = candidate("old", quality(0.05, 1), coverage=0.01)
    half = Candidate(
        model="half",
        metrics={"ndcg@10": 0.2, "coverage@10": 0.2},
        per_user={"ndcg@10": quality(0.05, 1)[:200]},
        users=USERS[:200],
    )
    got = select_champion([previous, half], previous=PreviousChampion("old", "ndcg@10", 0.3))
    # Same values on the 200 shared users: difference 0, no regression.
    assert got.model == "half" and got.comparison is not None
    assert got.comparison.n == 200 and got.comparison.difference == 0.0


def test_regression_against_a_stored_value_uses_the_intervals() -> None:
    stored = PreviousChampion("gone", "ndcg@10", 0.30, ci_low=0.28, ci_high=0.32)
    low = candidate("low", quality(0.0, 1), interval=(0.20, 0.25))
    overlapping = candidate("overlap", quality(-0.01, 2), interval=(0.26, 0.29))
    got = select_champion([low, overlapping], previous=stored)
    assert got.model == "overlap", got.reason
    assert "significant regression" in {r.model: r.reason for r in got.rejected}["low"]
    # Without a stored interval the stored value itself is the bar: (0.26, 0.29) lies below 0.30.
    bare = PreviousChampion.from_decision(ChampionDecision("gone", "ndcg@10", 0.30, "earlier"))
    got = select_champion([overlapping], previous=bare)
    assert not got.chosen and "stored ndcg@10 of previous champion gone 0.3000" in got.reason
    # A stored interval of NaN (not computed) is no interval: compared with NaN, the regression passed unseen.
    nan_interval = PreviousChampion("gone", "ndcg@10", 0.30, ci_low=math.nan, ci_high=math.nan)
    got = select_champion([overlapping], previous=nan_interval)
    assert not got.chosen and "significant regression" in got.reason, got.reason
    # A candidate's NaN interval is none either: said, not passed as "no significant regression".
    unmeasured = candidate("unmeasured", quality(-0.01, 2), interval=(math.nan, math.nan))
    got = select_champion([unmeasured], previous=stored)
    assert "no ndcg@10 interval for unmeasured: regression vs the stored value not checked" in got.reason
    # A previous champion chosen by another metric cannot be compared.
    other_metric = PreviousChampion("gone", "recall@20", 0.9)
    got = select_champion([low], previous=other_metric)
    assert got.model == "low" and "was chosen by recall@20, not ndcg@10: not compared" in got.reason


def test_lower_is_better_failures_missing_values_and_ties() -> None:
    def rated(model: str, value: float) -> Candidate:
        return Candidate(model=model, metrics={"rmse": value}, intervals={"rmse": (value - 0.01, value + 0.01)})

    rules = ChampionRules(primary_metric="rmse", coverage_floor=0.0)
    got = select_champion([rated("svd", 0.92), rated("baseline", 0.95), Candidate("broken", error="boom")], rules)
    assert got.model == "svd" and got.reason.startswith("chose svd: lowest rmse 0.9200")
    assert "broken (evaluation failed: boom)" in got.reason
    # Stored regression for a lower-is-better metric: the candidate's whole interval above the stored value.
    got = select_champion([rated("svd", 0.92)], rules, previous=PreviousChampion("old", "rmse", 0.85))
    assert not got.chosen
    # Ties go to the first model in run order.
    tie = select_champion([rated("first", 0.9), rated("second", 0.9)], rules)
    assert tie.model == "first"
    assert "has no ndcg@10 value" in select_champion([rated("x", 0.9)]).rejected[0].reason
    with pytest.raises(ValueError, match="coverage_metric"):
        ChampionRules(primary_metric="rmse")
    with pytest.raises(ValueError, match="not of the form"):
        ChampionRules(primary_metric="ndcg at 10")
    with pytest.raises(ValueError, match="unique"):
        select_champion([rated("x", 1.0), rated("x", 2.0)], rules)


def test_selects_from_full_evaluations() -> None:
    seconds = pd.to_datetime(list(range(1, 13)), unit="s", utc=True)
    rows = [("a", "x"), ("a", "y"), ("a", "z"), ("b", "x"), ("b", "y"), ("b", "w"), ("c", "x"), ("c", "w")]
    rows += [("c", "y"), ("d", "w"), ("d", "z"), ("d", "x")]
    df = pd.DataFrame(
        {
            "user_id": pd.Series([u for u, _ in rows], dtype="str"),
            "item_id": pd.Series([i for _, i in rows], dtype="str"),
            "timestamp": seconds,
        }
    )
    evaluation = evaluate_full(Popularity, temporal_holdout(df), ks=(1, 2), bootstrap=200)
    cand = Candidate.from_evaluation(evaluation)
    assert cand.model == "popularity"
    assert cand.metrics["ndcg@2"] == pytest.approx(evaluation.value("ndcg@2"))
    assert set(cand.per_user) >= {"ndcg@1", "ndcg@2", "novelty@2", "popularity_bias@1"}
    assert "coverage@2" in cand.metrics and "coverage@2" not in cand.intervals  # set-level: no interval
    np.testing.assert_array_equal(cand.users, evaluation.per_user.index.to_numpy())
    got = select_champion([evaluation], ChampionRules(primary_metric="ndcg@2", coverage_floor=0.1))
    assert got.model == "popularity" and got.value == pytest.approx(evaluation.value("ndcg@2"))
    # Every metric a run may name as its primary one picks a champion (RunConfig refuses the others).
    for metric in (*TOPN_KEYS, "coverage", "novelty"):
        got = select_champion([evaluation], ChampionRules(primary_metric=f"{metric}@2", coverage_floor=0.1))
        assert got.model == "popularity" and got.value == pytest.approx(evaluation.value(f"{metric}@2")), metric


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ndgc", "unknown primary_metric 'ndgc' (did you mean 'ndcg'?)"),
        ("ndcg@5", "name the metric alone and set its cut-off with k (primary_metric = 'ndcg', k = 5)"),
        ("gini", "primary_metric 'gini' cannot pick a champion (lower is better, or not every run has it"),
        ("ild", "primary_metric 'ild' cannot pick a champion"),
    ],
)
def test_the_run_config_refuses_a_primary_metric_that_cannot_pick_a_champion(value: str, message: str) -> None:
    # Before, "ndgc" gave a completed run without a champion, and "ndcg@5" failed the run after every model trained.
    with pytest.raises(ValidationError, match=re.escape(message)):
        RunConfig(primary_metric=value)
    assert RunConfig(primary_metric=" NDCG ").primary_metric == "ndcg"
    assert RunConfig(primary_metric="rmse").primary_metric == "rmse"
    assert RunConfig(primary_metric="coverage").primary_metric == "coverage"  # it picked champions before: still


def _selection(model: str | None, value: float, metric: str = "ndcg@10") -> ChampionSelection:
    return ChampionSelection(model, metric, value, math.nan, math.nan, f"chose {model}" if model else "none passed")


@pytest.mark.parametrize(
    ("selection", "standing", "retrained", "kept"),
    [
        (_selection("popularity", 0.0750), None, {"popularity"}, False),  # nothing stands for this date
        (_selection("popularity", 0.0750), ChampionDecision("ease", "ndcg@10", 0.0829, "r"), {"popularity"}, True),
        (_selection("item_knn", 0.0900), ChampionDecision("ease", "ndcg@10", 0.0829, "r"), {"item_knn"}, False),
        (_selection("popularity", 0.0750), ChampionDecision("ease", "ndcg@10", 0.0829, "r"), {"ease"}, False),
        (_selection("popularity", 0.0750), ChampionDecision("ease", "map@10", 0.0829, "r"), {"popularity"}, False),
        (_selection(None, math.nan), ChampionDecision("ease", "ndcg@10", 0.0829, "r"), {"popularity"}, True),
        (_selection("nmf", 0.95, "rmse"), ChampionDecision("biased_mf", "rmse", 0.91, "r"), {"nmf"}, True),
        (_selection("nmf", 0.90, "rmse"), ChampionDecision("biased_mf", "rmse", 0.91, "r"), {"nmf"}, False),
    ],
    ids=["none-standing", "worse", "better", "standing-retrained", "other-metric", "none-passed", "rmse-worse",
         "rmse-better"],
)  # fmt: skip
def test_a_rerun_with_some_models_keeps_a_better_standing_champion(
    selection: ChampionSelection, standing: ChampionDecision | None, retrained: set[str], kept: bool
) -> None:
    out = keep_standing_champion(selection, standing, retrained)
    if not kept:
        assert out is selection
        return
    assert standing is not None and out.model is None
    assert out.reason.startswith(
        f"kept {standing.model}, this date's champion ({standing.metric} {standing.value:.4f})"
    )
    assert out.kept == standing.model and selection.reason not in out.reason  # no "chose <other>" beside "kept"


def test_a_standing_champion_that_failed_in_this_run_is_kept_and_the_reason_says_it_failed() -> None:
    # Its rows of the date stay published (a failure never changes what was published), but "which this run did
    # not retrain" was untrue for a model this run tried (a timed-out bpr).
    standing = ChampionDecision("bpr", "ndcg@10", 0.2, "r")
    out = keep_standing_champion(_selection("popularity", 0.1), standing, {"popularity"}, failed={"bpr"})
    assert out.model is None and out.kept == "bpr"
    assert "which failed in this run (its published rows of this date stay): popularity scores 0.1000" in out.reason
    assert "did not retrain" not in out.reason
