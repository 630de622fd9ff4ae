"""Id index, the evaluation glue (hand-computed tiny cases) and the protocol on MovieLens 100K."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge.data.contract import DataError
from recforge.data.movielens import load_movielens_100k
from recforge.evaluation import evaluate_ratings, evaluate_topn
from recforge.ids import IdIndex
from recforge.split import temporal_holdout
from recmodels.base import ModelConfig, Recommender, RunSettings
from recmodels.baselines.popularity import Popularity
from recmodels.data import Interactions

ML100K = Path(__file__).resolve().parents[1].parent / "shared/data/ml-100k"


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


# ---- IdIndex -----------------------------------------------------------------------------------------------


def test_id_index_orders_integer_ids_numerically_and_maps_unknown_to_minus_one() -> None:
    index = IdIndex.from_frame(frame([("10", "b", 1), ("2", "a", 2), ("10", "a", 3), ("1", "c", 4)]))
    assert index.users.tolist() == ["1", "2", "10"]
    assert index.items.tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(index.user_codes(["10", "nobody", "1"]), [2, -1, 0])
    np.testing.assert_array_equal(index.item_codes(pd.Series(["c", "zz"], dtype="str")), [2, -1])


def test_id_index_interactions_drops_unknown_rows_and_converts_times() -> None:
    train = frame([("u", "a", 1), ("v", "b", 2)], ratings=[4.0, 2.0])
    index = IdIndex.from_frame(train)
    later = frame([("v", "a", 1_000_000_000), ("w", "a", 5), ("u", "zz", 6)], ratings=[5.0, 1.0, 3.0])
    data = index.interactions(later, ratings=True)
    assert isinstance(data, Interactions)
    assert (data.n_users, data.n_items) == (2, 2)
    np.testing.assert_array_equal(data.user, [1])
    np.testing.assert_array_equal(data.item, [0])
    np.testing.assert_array_equal(data.rating, [5.0])
    np.testing.assert_array_equal(data.timestamp, [1_000_000_000])
    assert index.interactions(later, ratings=False).rating is None
    with pytest.raises(DataError, match="no 'rating' column"):
        index.interactions(later.drop(columns="rating"), ratings=True)
    later.loc[0, "rating"] = np.nan
    with pytest.raises(DataError, match="missing in 1 row"):
        index.interactions(later, ratings=True)


# ---- top-N -------------------------------------------------------------------------------------------------


def test_evaluate_topn_with_popularity_matches_hand_computation() -> None:
    rows = [
        # a: train x, y; test z.
        ("a", "x", 1),
        ("a", "y", 2),
        ("a", "z", 3),
        # b: train x, y, z, w; test v, which nobody has in train: dropped, b is not evaluated.
        ("b", "x", 1),
        ("b", "y", 2),
        ("b", "z", 3),
        ("b", "w", 4),
        ("b", "v", 5),
        # c: train x, w; test y.
        ("c", "x", 1),
        ("c", "w", 2),
        ("c", "y", 3),
    ]
    split = temporal_holdout(frame(rows))
    got = evaluate_topn(Popularity, split, k=2)
    # Train popularity: x 3, w 2, y 2, z 1; index order w, x, y, z, so w ranks before y on the tie.
    # a (seen x, y) gets [w, z]: hit at rank 2. c (seen x, w) gets [y, z]: hit at rank 1.
    assert got["users"] == 2
    assert got["precision"] == pytest.approx(0.5)
    assert got["recall"] == pytest.approx(1.0)
    assert got["ndcg"] == pytest.approx((1 / math.log2(3) + 1.0) / 2)
    assert got["map"] == pytest.approx(0.75)
    assert got["mrr"] == pytest.approx(0.75)
    assert got["hit_rate"] == pytest.approx(1.0)
    assert got["coverage"] == pytest.approx(3 / 4)  # w, y, z of 4 training items
    assert got["dropped_unseen_items"] == 1 and got["users_without_test"] == 1
    assert got["dropped_seen_pairs"] == split.dropped_seen_pairs  # every drop reported, as evaluate_full does
    assert got["fit_seconds"] >= 0 and got["score_seconds"] >= 0


def test_evaluate_topn_pads_when_catalogue_is_smaller_than_k() -> None:
    split = temporal_holdout(frame([("a", "x", 1), ("a", "y", 2), ("b", "y", 1), ("b", "x", 2)]))
    got = evaluate_topn(Popularity, split, k=10)
    # One unseen item per user, and it is the test item: a perfect, padded list.
    assert got["ndcg"] == pytest.approx(1.0)
    assert got["precision"] == pytest.approx(0.1)


# ---- ratings -----------------------------------------------------------------------------------------------


class ItemMean(Recommender):
    """Test-only rating model: an item's mean training rating; the global mean for unknown items."""

    name = "item_mean_test"
    family = "test"
    config_class = ModelConfig
    predicts_ratings = True
    requires_ratings = True

    def _fit(self, data: Interactions, settings: RunSettings) -> None:
        sums = np.bincount(data.item, weights=data.rating, minlength=data.n_items)
        counts = np.bincount(data.item, minlength=data.n_items)  # events, not distinct users
        self.mean_ = sums / np.maximum(counts, 1)
        self.global_ = float(data.rating.mean())

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.mean_.astype(np.float32), (len(users), self.n_items_)).copy()

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        known = items >= 0
        return np.where(known, self.mean_[np.where(known, items, 0)], self.global_)


def test_evaluate_ratings_uses_the_numpy_mask_and_the_model_fallback() -> None:
    n = 60
    rng = np.random.default_rng(0)
    rows = [(f"u{i % 5}", f"i{rng.integers(0, 8) if i < 50 else 100 + i}", i) for i in range(n)]
    df = frame(rows, ratings=list(rng.integers(1, 6, n).astype(float)))
    got = evaluate_ratings(ItemMean, df)

    # Expected, computed independently with pandas from the protocol's mask.
    mask = np.random.default_rng(42).random(n) < 0.2
    train, test = df[~mask], df[mask]
    means = train.groupby("item_id")["rating"].mean()
    pred = test["item_id"].map(means).fillna(train["rating"].mean()).to_numpy()
    err = pred - test["rating"].to_numpy()
    assert got["rmse"] == pytest.approx(float(np.sqrt(np.mean(err**2))))
    assert got["mae"] == pytest.approx(float(np.mean(np.abs(err))))
    assert got["test_rows"] == mask.sum()
    assert got["unknown_pairs"] == (~test["item_id"].isin(train["item_id"])).sum() > 0


def test_evaluate_ratings_refuses_ranking_models_and_implicit_data() -> None:
    df = frame([("u", "a", 1), ("v", "a", 2)], ratings=[1.0, 2.0])
    with pytest.raises(ValueError, match="does not predict ratings"):
        evaluate_ratings(Popularity, df)
    with pytest.raises(DataError, match="'rating' column"):
        evaluate_ratings(ItemMean, df.drop(columns="rating"))


# ---- the standard protocol on MovieLens 100K ---------------------------------------------------------------


def test_movielens_100k_protocol_counts_and_popularity_reference() -> None:
    interactions = load_movielens_100k(ML100K).interactions
    split = temporal_holdout(interactions)
    # Every ML-100K user has at least 20 ratings: ceil(20%) of each user's events are held out.
    sizes = interactions.groupby("user_id").size()
    held_out = int(np.ceil(sizes * 0.2).sum())
    assert split.users_without_train == 0 and split.users_without_test == 0
    assert len(split.test) + split.dropped_unseen_items + split.dropped_seen_pairs == held_out
    assert len(split.train) == len(interactions) - held_out
    got = evaluate_topn(Popularity, split, k=10)
    assert got["users"] == 943
    # The project's reference value (docs/BENCHMARKS.md); string tie order would give 0.119.
    assert got["ndcg"] == pytest.approx(0.1161, abs=5e-4)
