"""Evaluation protocols: no leakage, the right sizes, reproducible folds, and the dispatcher's record."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from recforge.data.contract import DataError
from recforge.evaluation import evaluate_ratings_kfold
from recforge.protocols import PROTOCOLS, RatingFold, global_time_split, kfold_random, make_splits
from recmodels.base import ModelConfig, Recommender, RunSettings
from recmodels.baselines.popularity import Popularity
from recmodels.data import Interactions


def frame(rows: list[tuple[str, str, int]], ratings: list[float] | None = None) -> pd.DataFrame:
    users, items, seconds = zip(*rows, strict=True)
    df = pd.DataFrame(
        {
            "user_id": pd.Series(users, dtype="str"),
            "item_id": pd.Series(items, dtype="str"),
            "timestamp": pd.to_datetime(list(seconds), unit="s", utc=True),
        }
    )
    if ratings is not None:
        df["rating"] = np.asarray(ratings, dtype=np.float64)
    return df


def at(second: int) -> datetime:
    return datetime.fromtimestamp(second, tz=UTC)


# ---- global_time ---------------------------------------------------------------------------------------------


def global_rows() -> pd.DataFrame:
    return frame(
        [
            ("a", "x", 1),
            ("a", "y", 2),
            ("a", "z", 12),  # test: a has train, z is in train (b)
            ("a", "x", 13),  # test, but a already has x in train: dropped as seen
            ("b", "z", 3),
            ("b", "x", 11),  # test
            ("b", "new", 14),  # test, item never in train: dropped as unseen
            ("c", "y", 15),  # test, c has no training event: user not evaluated
            ("d", "x", 4),  # only train: not evaluated
        ]
    )


def test_global_time_split_at_a_date_has_no_leakage_and_counts_drops() -> None:
    df = global_rows()
    split, cut = global_time_split(df, at=at(10))
    assert cut == pd.Timestamp(at(10))
    assert (split.train["timestamp"] < cut).all() and (split.test["timestamp"] >= cut).all()
    assert len(split.train) == 4  # every event before the cut
    assert sorted(zip(split.test["user_id"], split.test["item_id"], strict=True)) == [("a", "z"), ("b", "x")]
    assert split.test["user_id"].isin(split.train["user_id"]).all()
    assert split.test["item_id"].isin(split.train["item_id"]).all()
    assert split.users_without_train == 1  # c
    assert split.dropped_unseen_items == 1  # (b, new)
    assert split.dropped_seen_pairs == 1  # (a, x) again
    assert split.users_without_test == 1  # d
    # Every row is either in train, in test, or counted as dropped (c's one event is the users_without_train row).
    assert len(split.train) + len(split.test) + 1 + 1 + 1 == len(df)


def test_global_time_split_at_a_quantile_and_its_errors() -> None:
    df = global_rows()
    # Timestamps 1 2 3 4 11 12 13 14 15: the 0.5 quantile ("higher") is 11, so 4 events train.
    split, cut = global_time_split(df, quantile=0.5)
    assert cut == pd.Timestamp(at(11))
    assert len(split.train) == 4 and split.train["timestamp"].max() < cut
    with pytest.raises(ValueError, match="no time zone"):
        global_time_split(df, at=datetime(2020, 1, 1))
    with pytest.raises(DataError, match="leaves no event before"):
        global_time_split(df, at=at(0))
    with pytest.raises(DataError, match="leaves every event before"):
        global_time_split(df, at=at(100))
    with pytest.raises(ValueError, match="quantile"):
        global_time_split(df, quantile=1.0)


def test_global_time_on_movielens_keeps_train_strictly_before_test(ml100k_dir) -> None:  # type: ignore[no-untyped-def]
    from recforge.data.movielens import load_movielens_100k

    interactions = load_movielens_100k(ml100k_dir).interactions
    splits = make_splits(interactions, "global_time", quantile=0.8)
    split = splits.holdout
    assert split is not None
    cut = pd.Timestamp(splits.params["cut"])
    assert split.train["timestamp"].max() < cut <= split.test["timestamp"].min()
    # About 80 % of events are before the cut (ties at the cut second go to test).
    assert 0.79 <= len(split.train) / len(interactions) <= 0.81
    assert split.test["user_id"].isin(split.train["user_id"].unique()).all()
    record = splits.record()
    assert record["protocol"] == "global_time" and record["test_users"] == split.n_test_users > 0
    assert record["train_rows"] + record["test_rows"] + record["dropped_unseen_items"] + record[
        "dropped_seen_pairs"
    ] <= len(interactions)


# ---- kfold_random ---------------------------------------------------------------------------------------------


def rating_rows(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [(f"u{i % 7}", f"i{rng.integers(0, 9)}", i) for i in range(n)]
    return frame(rows, ratings=list(rng.integers(1, 6, n).astype(float)))


def test_kfold_partitions_rows_evenly_and_reproducibly() -> None:
    df = rating_rows(103)
    folds = kfold_random(df, n_folds=5, seed=3)
    assert [f.fold for f in folds] == [0, 1, 2, 3, 4]
    sizes = [len(f.test) for f in folds]
    assert sorted(sizes) == [20, 20, 21, 21, 21]
    test_labels = np.concatenate([f.test.index.to_numpy() for f in folds])
    assert sorted(test_labels.tolist()) == df.index.tolist()  # every row is test exactly once
    for f in folds:
        assert set(f.train.index).isdisjoint(f.test.index)
        assert len(f.train) + len(f.test) == len(df)
    again = kfold_random(df, n_folds=5, seed=3)
    assert all(a.test.index.equals(b.test.index) for a, b in zip(folds, again, strict=True))
    other = kfold_random(df, n_folds=5, seed=4)
    assert not folds[0].test.index.equals(other[0].test.index)
    # The documented rule, reproducible with numpy alone.
    expected_fold0 = np.flatnonzero(np.random.default_rng(3).permutation(103) % 5 == 0)
    np.testing.assert_array_equal(folds[0].test.index.to_numpy(), expected_fold0)
    with pytest.raises(ValueError, match="at least 2"):
        kfold_random(df, n_folds=1)


class ItemMean(Recommender):
    """Test-only rating model: an item's mean training rating; the global mean for unknown items."""

    name = "item_mean_kfold_test"
    family = "test"
    config_class = ModelConfig
    predicts_ratings = True
    requires_ratings = True

    def _fit(self, data: Interactions, settings: RunSettings) -> None:
        sums = np.bincount(data.item, weights=data.rating, minlength=data.n_items)
        counts = np.bincount(data.item, minlength=data.n_items)
        self.mean_ = sums / np.maximum(counts, 1)
        self.global_ = float(data.rating.mean())

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.mean_.astype(np.float32), (len(users), self.n_items_)).copy()

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        known = items >= 0
        return np.where(known, self.mean_[np.where(known, items, 0)], self.global_)


def test_kfold_rating_evaluation_per_fold_and_mean() -> None:
    df = rating_rows(60)
    splits = make_splits(df, "kfold_random", n_folds=3, seed=1)
    assert splits.record() == {"protocol": "kfold_random", "n_folds": 3, "seed": 1, "fold_test_rows": [20, 20, 20]}
    result = evaluate_ratings_kfold(ItemMean, splits.folds)
    assert result.per_fold["fold"].tolist() == [0, 1, 2]
    expected_rmse = []
    for fold in splits.folds:
        means = fold.train.groupby("item_id")["rating"].mean()
        pred = fold.test["item_id"].map(means).fillna(fold.train["rating"].mean()).to_numpy()
        err = pred - fold.test["rating"].to_numpy()
        expected_rmse.append(float(np.sqrt(np.mean(err**2))))
        row = result.per_fold.loc[result.per_fold["fold"] == fold.fold].iloc[0]
        assert row["mae"] == pytest.approx(float(np.mean(np.abs(err))))
    np.testing.assert_allclose(result.per_fold["rmse"], expected_rmse)
    assert result.rmse == pytest.approx(np.mean(expected_rmse))
    summary = result.summary().set_index("metric")
    assert summary.loc["rmse", "value"] == pytest.approx(np.mean(expected_rmse))
    assert summary.loc["rmse", "ci_low"] < summary.loc["rmse", "value"] < summary.loc["rmse", "ci_high"]
    with pytest.raises(ValueError, match="does not predict ratings"):
        evaluate_ratings_kfold(Popularity, splits.folds)


def test_kfold_rating_evaluation_leaves_filled_in_ratings_out_as_evaluate_ratings_does() -> None:
    # The pipeline fills in missing ratings and marks them; k-fold scored them as measured ratings (QA: RMSE 1.667
    # where the measured rows alone give 1.901).
    df = rating_rows(60)
    filled = np.arange(60) % 4 == 1
    df = df.assign(rating=np.where(filled, 3.0, df["rating"]), rating_missing=filled)
    folds = make_splits(df, "kfold_random", n_folds=3, seed=1).folds
    result = evaluate_ratings_kfold(ItemMean, folds)
    measured = [
        dataclasses.replace(f, train=f.train[~f.train["rating_missing"]], test=f.test[~f.test["rating_missing"]])
        for f in folds
    ]
    expected = evaluate_ratings_kfold(ItemMean, measured)
    assert result.per_fold["test_rows"].sum() == 45 and result.rmse == pytest.approx(expected.rmse)
    assert result.rmse != pytest.approx(evaluate_ratings_kfold(ItemMean, [_unmarked(f) for f in folds]).rmse)


def test_kfold_names_a_fold_whose_test_ratings_were_all_filled_in() -> None:
    df = rating_rows(30)
    folds = make_splits(df, "kfold_random", n_folds=3, seed=1).folds
    filled = df.index.isin(folds[0].test.index)
    marked = make_splits(df.assign(rating_missing=filled), "kfold_random", n_folds=3, seed=1).folds
    with pytest.raises(DataError, match=r"every rating of fold 0's 10 test rows was filled in"):
        evaluate_ratings_kfold(ItemMean, marked)


def _unmarked(fold: RatingFold) -> RatingFold:
    return dataclasses.replace(
        fold, train=fold.train.drop(columns="rating_missing"), test=fold.test.drop(columns="rating_missing")
    )


# ---- dispatcher --------------------------------------------------------------------------------------------


def test_make_splits_dispatches_and_refuses_unknown_or_unfit_protocols() -> None:
    df = rating_rows(40)
    holdout = make_splits(df, "temporal_holdout", test_fraction=0.25)
    assert holdout.holdout is not None and holdout.folds == ()
    assert holdout.record()["protocol"] == "temporal_holdout" and holdout.record()["test_fraction"] == 0.25
    # Per-user holdout: every user's newest events are test, so train and test share every user.
    assert set(holdout.holdout.test["user_id"]) <= set(holdout.holdout.train["user_id"])
    assert set(PROTOCOLS) == {"temporal_holdout", "global_time", "kfold_random"}
    with pytest.raises(ValueError, match="unknown evaluation protocol 'leave_one_out'"):
        make_splits(df, "leave_one_out")
    with pytest.raises(DataError, match="rating-prediction protocol"):
        make_splits(df.drop(columns="rating"), "kfold_random")
