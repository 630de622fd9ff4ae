"""The metrics against an independent reference (trec_eval via pytrec_eval) on MovieLens 100K, and
evaluate_full against a tiny case computed by hand.

Reference: ``pytrec_eval`` (package ``pytrec-eval-terrier``), Python bindings of NIST's trec_eval. Its
definitions match ours except one, adapted below:

- ``P_k`` = hits / k, ``recall_k`` = hits / |R|, ``ndcg_cut_k`` (ideal DCG over min(|R|, k) relevant items,
  gain 1, discount log2(rank + 1)), ``success_k`` = hit rate: identical.
- ``recip_rank`` is over the whole submitted list, so each cut-off is evaluated on a run truncated to k.
- ``map_cut_k`` divides by |R| (all relevant items); ours divides by min(|R|, k), the usual recommender
  convention (a list of k items cannot hold more than k hits). Ours = trec's × |R| / min(|R|, k).

trec_eval orders a run by score, breaking ties by document id; the runs below get distinct scores so the order
is exactly the ranked list.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytrec_eval

from recforge.data.movielens import load_movielens_100k
from recforge.evaluation import evaluate_full, item_attribute_matrix, relevance_matrix
from recforge.ids import IdIndex
from recforge.metrics import topn_per_user_at
from recforge.split import temporal_holdout
from recmodels.base import top_k
from recmodels.baselines.popularity import Popularity

KS = (5, 10, 20)
TREC = {"precision": "P", "recall": "recall", "ndcg": "ndcg_cut", "map": "map_cut", "hit_rate": "success"}


def trec_per_user(ranked: np.ndarray, relevant_sets: list[set[int]], k: int) -> dict[str, np.ndarray]:
    """Per-user metrics at ``k`` from trec_eval, on the top ``k`` of each ranked list."""
    qrels = {str(u): {str(i): 1 for i in items} for u, items in enumerate(relevant_sets)}
    run = {
        str(u): {str(int(item)): float(k - rank) for rank, item in enumerate(row[:k]) if item >= 0}
        for u, row in enumerate(ranked)
    }
    measures = {f"{name}.{k}" for name in ("P", "recall", "ndcg_cut", "map_cut", "success")} | {"recip_rank"}
    result = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    users = [str(u) for u in range(len(ranked))]
    out = {ours: np.array([result[u][f"{trec}_{k}"] for u in users]) for ours, trec in TREC.items()}
    out["mrr"] = np.array([result[u]["recip_rank"] for u in users])
    sizes = np.array([len(s) for s in relevant_sets], dtype=np.float64)
    out["map"] = out["map"] * sizes / np.minimum(sizes, k)  # trec divides by |R|, we by min(|R|, k)
    return out


@pytest.fixture(scope="module")
def ml100k_lists(ml100k_dir: Path) -> tuple[dict[str, np.ndarray], list[set[int]], object]:
    """Two sets of ranked top-20 lists on the standard ML-100K split, and each user's relevant items."""
    split = temporal_holdout(load_movielens_100k(ml100k_dir).interactions)
    index = IdIndex.from_frame(split.train)
    train = index.interactions(split.train, ratings=False)
    users, relevant = relevance_matrix(index, split.test)
    model = Popularity().fit(train)
    popular, _ = model.recommend(users, max(KS))
    # Popularity plus per-user noise: varied lists with hits at every rank, to exercise every position.
    scores = model.score(users) + np.random.default_rng(0).gamma(2.0, 20.0, size=(len(users), index.n_items))
    seen = train.binary[users].tocoo()
    scores[seen.row, seen.col] = -np.inf
    noisy, _ = top_k(scores.astype(np.float32), max(KS))
    relevant_sets = [set(relevant[row].indices.tolist()) for row in range(relevant.shape[0])]
    return {"popularity": popular, "noisy_popularity": noisy}, relevant_sets, relevant


@pytest.mark.parametrize("lists", ["popularity", "noisy_popularity"])
def test_topn_metrics_agree_with_trec_eval_on_movielens(ml100k_lists, lists: str) -> None:  # type: ignore[no-untyped-def]
    ranked_by_name, relevant_sets, relevant = ml100k_lists
    ranked = ranked_by_name[lists]
    assert ranked.shape == (943, 20)
    ours = topn_per_user_at(ranked, relevant, KS)
    for k in KS:
        reference = trec_per_user(ranked, relevant_sets, k)
        for metric, expected in reference.items():
            np.testing.assert_allclose(ours[k][metric], expected, rtol=0, atol=1e-6, err_msg=f"{metric}@{k}")
            assert ours[k][metric].mean() == pytest.approx(expected.mean(), abs=1e-6)
        # The comparison is not vacuous: the lists have hits, and not all at rank 1.
        assert 0 < ours[k]["precision"].mean() < 1 and 0 < ours[k]["mrr"].mean() < 1


# ---- evaluate_full on a tiny case -----------------------------------------------------------------------------


def tiny_split() -> object:
    rows = [
        # a: train x, y; test z.   b: train x, y, z, w; test v (never in train: b is not evaluated).
        # c: train x, w; test y.
        ("a", "x", 1), ("a", "y", 2), ("a", "z", 3),
        ("b", "x", 1), ("b", "y", 2), ("b", "z", 3), ("b", "w", 4), ("b", "v", 5),
        ("c", "x", 1), ("c", "w", 2), ("c", "y", 3),
    ]  # fmt: skip
    users, items, seconds = zip(*rows, strict=True)
    frame = pd.DataFrame(
        {
            "user_id": pd.Series(users, dtype="str"),
            "item_id": pd.Series(items, dtype="str"),
            "timestamp": pd.to_datetime(list(seconds), unit="s", utc=True),
        }
    )
    return temporal_holdout(frame)


ITEMS = pd.DataFrame(
    {
        "item_id": pd.Series(["w", "x", "y", "z", "not_in_train"], dtype="str"),
        "genres": pd.Series(["A|B", "A", "B|C", "C", "D"], dtype="str"),
    }
)


def test_evaluate_full_matches_hand_computation() -> None:
    # Train popularity (distinct users of 3): x 3, w 2, y 2, z 1; index order w, x, y, z; ties by index.
    # a (seen x, y) gets [w, z], test z; c (seen x, w) gets [y, z], test y.
    got = evaluate_full(Popularity, tiny_split(), ks=(1, 2), item_attributes=ITEMS, bootstrap=200, seed=1)
    assert got.model == "popularity" and got.info["users"] == 2 and got.info["n_items"] == 4
    assert got.per_user.index.tolist() == ["a", "c"]
    info_w, info_z = -math.log2(2 / 3), -math.log2(1 / 3)
    expected = {
        "ndcg@1": 0.5,
        "ndcg@2": (1 / math.log2(3) + 1) / 2,
        "precision@2": 0.5,
        "recall@1": 0.5,
        "mrr@2": 0.75,
        "hit_rate@1": 0.5,
        "map@2": 0.75,
        "novelty@1": info_w,  # w for a, y for c: both seen by 2 of 3 users
        "novelty@2": (info_w + info_z) / 2,
        # Popularity ranks (ties averaged) / 4: w 0.625, x 1, y 0.625, z 0.25.
        "popularity_bias@2": (0.625 + 0.25) / 2,
        # a: w {A,B} vs z {C} → 1; c: y {B,C} vs z {C} → 1 − 1/2.
        "ild@2": 0.75,
        "coverage@1": 2 / 4,  # w, y
        "coverage@2": 3 / 4,  # w, y, z
        # counts w 1, x 0, y 1, z 2 → sorted 0 1 1 2: (−3·0 − 1·1 + 1·1 + 3·2) / (4 · 4).
        "gini@2": 6 / 16,
    }
    for key, value in expected.items():
        assert got.value(key) == pytest.approx(value), key
    np.testing.assert_allclose(got.user_values("ndcg@1"), [0.0, 1.0])
    np.testing.assert_allclose(got.user_values("ild@2"), [1.0, 0.5])
    assert math.isnan(got.value("ild@1"))  # one item: no pair
    low, high = got.interval("ndcg@2")
    assert 1 / math.log2(3) <= low <= got.value("ndcg@2") <= high <= 1.0
    assert np.isnan(got.interval("coverage@2")).all()  # set-level: no interval

    summary = got.summary
    assert list(summary.columns) == ["metric", "k", "group", "value", "ci_low", "ci_high", "users"]
    assert str(summary["k"].dtype) == "Int64" and str(summary["users"].dtype) == "Int64"
    # 11 metrics × 2 cut-offs × 4 groups.
    assert len(summary) == 11 * 2 * 4
    # Both users have 2 training events: the quantile thresholds make them cold; other groups are empty.
    assert got.per_user["group"].tolist() == ["cold", "cold"] and got.per_user["train_events"].tolist() == [2, 2]
    assert got.value("ndcg@2", group="cold") == pytest.approx(expected["ndcg@2"])
    heavy = summary.loc[summary["group"].eq("heavy")]
    assert (heavy["users"] == 0).all() and heavy["value"].isna().all()
    flat = got.flat()
    assert flat["ndcg@2"] == pytest.approx(expected["ndcg@2"]) and flat["fit_seconds"] >= 0


def test_evaluate_full_without_attributes_skips_diversity_and_groups_by_fixed_thresholds() -> None:
    got = evaluate_full(Popularity, tiny_split(), ks=(2,), bootstrap=0, cold_max=1, heavy_min=2)
    assert "ild" not in set(got.summary["metric"]) and got.info["ild"].startswith("skipped")
    assert got.per_user["group"].tolist() == ["heavy", "heavy"]
    assert got.summary["ci_low"].isna().all()  # bootstrap=0: no intervals
    no_genres = ITEMS.assign(genres=pd.Series([None] * 5, dtype="str"))
    skipped = evaluate_full(Popularity, tiny_split(), ks=(2,), item_attributes=no_genres, bootstrap=0)
    assert "ild" not in set(skipped.summary["metric"]) and "no training item has a value" in skipped.info["ild"]
    # A catalogue without the label column (a shop's: item_id, title, category) skips diversity too; it failed
    # every model's evaluation, so nothing was published.
    catalogue = ITEMS.drop(columns="genres").assign(category="shoes")
    skipped = evaluate_full(Popularity, tiny_split(), ks=(2,), item_attributes=catalogue, bootstrap=0)
    assert "ild" not in set(skipped.summary["metric"]) and skipped.info["ild"] == (
        "skipped: the items table has no column 'genres'"
    )
    with pytest.raises(KeyError, match="available"):
        got.value("ild@2")


def test_item_attribute_matrix_and_its_errors() -> None:
    index = IdIndex.from_frame(tiny_split().train)
    matrix = item_attribute_matrix(ITEMS.set_index(pd.Index([10, 11, 12, 13, 14])), index)
    # Rows w, x, y, z; columns A, B, C (D belongs to an item outside the index).
    np.testing.assert_array_equal(matrix.toarray(), [[1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match="no column"):
        item_attribute_matrix(ITEMS.drop(columns="genres"), index)
    with pytest.raises(ValueError, match="repeats ids"):
        item_attribute_matrix(pd.concat([ITEMS, ITEMS.head(1)]), index)
