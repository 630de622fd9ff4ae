"""Top-N, beyond-accuracy and rating metrics against small cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recforge.metrics import (
    TOPN_KEYS,
    activity_groups,
    catalogue_coverage,
    check_ks,
    exposure_counts,
    exposure_gini,
    gini_index,
    intra_list_diversity_per_user,
    mae,
    novelty_per_user,
    popularity_bias_per_user,
    popularity_percentiles,
    rmse,
    self_information,
    topn_metrics,
    topn_per_user,
    topn_per_user_at,
)

L3 = math.log2(3)  # discount denominator of rank 2
L4 = 2.0  # log2(4): rank 3


def relevance(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    data, r, c = [], [], []
    for user, items in enumerate(rows):
        for item in items:
            r.append(user)
            c.append(item)
            data.append(1.0)
    return sp.csr_matrix((data, (r, c)), shape=(len(rows), n_items))


def two_users() -> tuple[np.ndarray, sp.csr_matrix]:
    # user 0: one hit at rank 2, |R| = 2 < k.
    # user 1: one hit at rank 1, then padding; |R| = 4 > k. Items 0 and 5 (= index -1 from the end) are
    # relevant, so padding that were looked up as item -1, or as item 0, would count as a hit.
    recommended = np.array([[0, 1, 2, 4], [3, -1, -1, 5]])
    return recommended, relevance([[1, 4], [0, 2, 3, 5]], n_items=6)


def test_per_user_values_match_hand_computation() -> None:
    recommended, relevant = two_users()
    got = topn_per_user(recommended, relevant, k=3)
    np.testing.assert_allclose(got["precision"], [1 / 3, 1 / 3])
    np.testing.assert_allclose(got["recall"], [1 / 2, 1 / 4])
    # Ideal DCG over min(|R|, k): 2 slots for user 0, 3 slots for user 1.
    np.testing.assert_allclose(got["ndcg"], [(1 / L3) / (1 + 1 / L3), 1 / (1 + 1 / L3 + 1 / L4)])
    # AP normalised by min(|R|, k): user 0 hit at rank 2 (precision 1/2) / 2; user 1 hit at rank 1 / 3.
    np.testing.assert_allclose(got["map"], [0.25, 1 / 3])
    np.testing.assert_allclose(got["mrr"], [0.5, 1.0])
    np.testing.assert_allclose(got["hit_rate"], [1.0, 1.0])


def test_only_first_k_columns_count() -> None:
    recommended, relevant = two_users()
    # Column 4 of user 0 is relevant item 4 and column 4 of user 1 is relevant item 5: both beyond k = 3.
    got = topn_per_user(recommended, relevant, k=3)
    assert got["recall"][0] == pytest.approx(0.5)
    full = topn_per_user(recommended, relevant, k=4)
    np.testing.assert_allclose(full["recall"], [1.0, 2 / 4])


def test_means_coverage_and_user_count() -> None:
    recommended, relevant = two_users()
    got = topn_metrics(recommended, relevant, k=3)
    assert got["precision"] == pytest.approx(1 / 3)
    assert got["recall"] == pytest.approx(0.375)
    assert got["ndcg"] == pytest.approx(((1 / L3) / (1 + 1 / L3) + 1 / (1 + 1 / L3 + 0.5)) / 2)
    assert got["map"] == pytest.approx((0.25 + 1 / 3) / 2)
    assert got["mrr"] == pytest.approx(0.75)
    assert got["hit_rate"] == pytest.approx(1.0)
    # Items 0, 1, 2, 3 appear in the top 3 lists; padding is not an item.
    assert got["coverage"] == pytest.approx(4 / 6)
    assert got["users"] == 2
    assert topn_metrics(recommended, relevant, k=3, n_items=8)["coverage"] == pytest.approx(4 / 8)


def test_several_hits_and_a_miss() -> None:
    recommended = np.array([[1, 0, 2], [0, 1, 2]])
    relevant = relevance([[1, 2], [4]], n_items=5)
    got = topn_per_user(recommended, relevant, k=3)
    np.testing.assert_allclose(got["ndcg"], [(1 + 1 / L4) / (1 + 1 / L3), 0.0])
    np.testing.assert_allclose(got["map"], [(1 / 1 + 2 / 3) / 2, 0.0])
    np.testing.assert_allclose(got["precision"], [2 / 3, 0.0])
    np.testing.assert_allclose(got["mrr"], [1.0, 0.0])
    np.testing.assert_allclose(got["hit_rate"], [1.0, 0.0])


def test_perfect_ranking_scores_one() -> None:
    recommended = np.array([[2, 0, 1]])
    got = topn_per_user(recommended, relevance([[0, 2]], n_items=3), k=3)
    assert got["ndcg"][0] == pytest.approx(1.0)
    assert got["map"][0] == pytest.approx(1.0)


def test_all_padding_scores_zero() -> None:
    got = topn_metrics(np.full((1, 3), -1), relevance([[0, 2]], n_items=3), k=3)
    assert got["ndcg"] == 0.0 and got["hit_rate"] == 0.0 and got["coverage"] == 0.0


def test_rejects_users_without_relevant_items() -> None:
    with pytest.raises(ValueError, match="no relevant items"):
        topn_per_user(np.array([[0, 1], [1, 0]]), relevance([[0], []], n_items=2), k=2)


def test_rejects_repeated_items_and_short_lists() -> None:
    relevant = relevance([[0]], n_items=3)
    with pytest.raises(ValueError, match="repeat an item"):
        topn_per_user(np.array([[1, 1, 0]]), relevant, k=3)
    with pytest.raises(ValueError, match="columns but k=3"):
        topn_per_user(np.array([[1, 0]]), relevant, k=3)
    with pytest.raises(ValueError, match="same users"):
        topn_per_user(np.array([[1, 0], [0, 1]]), relevant, k=2)
    with pytest.raises(ValueError, match="n_items"):
        topn_per_user(np.array([[3, 0]]), relevant, k=2)
    # Two padding slots are not a repeat.
    assert topn_per_user(np.array([[0, -1, -1]]), relevant, k=3)["hit_rate"][0] == 1.0


def test_rmse_and_mae() -> None:
    pred = np.array([1.0, 2.0, 3.0])
    truth = np.array([1.0, 4.0, 0.0])
    assert rmse(pred, truth) == pytest.approx(math.sqrt(13 / 3))
    assert mae(pred, truth) == pytest.approx(5 / 3)
    with pytest.raises(ValueError, match="non-finite"):
        rmse(np.array([np.nan, 1.0]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="pred has 2 values"):
        mae(np.array([1.0, 1.0]), np.array([1.0]))


# ---- several cut-offs at once -------------------------------------------------------------------------------


def naive_per_user(ranked: list[int], relevant: set[int], k: int) -> dict[str, float]:
    """Textbook definitions with Python loops, one user at a time (the project's MAP normalisation)."""
    hits = [1.0 if item >= 0 and item in relevant else 0.0 for item in ranked[:k]]
    n_hits = sum(hits)
    dcg = sum(h / math.log2(j + 2) for j, h in enumerate(hits))
    idcg = sum(1 / math.log2(j + 2) for j in range(min(len(relevant), k)))
    ap = sum(sum(hits[: j + 1]) / (j + 1) for j, h in enumerate(hits) if h) / min(len(relevant), k)
    first = next((j + 1 for j, h in enumerate(hits) if h), None)
    return {
        "precision": n_hits / k,
        "recall": n_hits / len(relevant),
        "ndcg": dcg / idcg,
        "map": ap,
        "mrr": 0.0 if first is None else 1 / first,
        "hit_rate": float(first is not None),
    }


def test_several_cutoffs_match_naive_loops_on_random_lists() -> None:
    rng = np.random.default_rng(7)
    n_users, n_items, k_max = 40, 30, 12
    ranked = np.stack([rng.permutation(n_items)[:k_max] for _ in range(n_users)])
    ranked[rng.random(ranked.shape) < 0.05] = -1  # some padding slots, also between items
    rel_sets = [set(rng.choice(n_items, size=rng.integers(1, 15), replace=False).tolist()) for _ in range(n_users)]
    relevant = relevance([sorted(r) for r in rel_sets], n_items)

    got = topn_per_user_at(ranked, relevant, ks=(10, 1, 5, 12, 5))
    assert sorted(got) == [1, 5, 10, 12]
    for k in (1, 5, 10, 12):
        for user in range(n_users):
            expected = naive_per_user(ranked[user].tolist(), rel_sets[user], k)
            for key in TOPN_KEYS:
                assert got[k][key][user] == pytest.approx(expected[key], abs=1e-12), (k, user, key)
        # The single-k function gives the same arrays.
        single = topn_per_user(ranked, relevant, k=k)
        for key in TOPN_KEYS:
            np.testing.assert_allclose(single[key], got[k][key], rtol=0, atol=1e-15)


def test_check_ks_rejects_bad_cutoffs() -> None:
    assert check_ks(10) == (10,)
    assert check_ks([20, 5, 10, 5]) == (5, 10, 20)
    with pytest.raises(ValueError, match="integer >= 1"):
        check_ks((5, 0))
    with pytest.raises(ValueError, match="empty"):
        check_ks(())
    recommended, relevant = two_users()
    with pytest.raises(ValueError, match="columns but k=5"):
        topn_per_user_at(recommended, relevant, ks=(3, 5))


# ---- beyond accuracy ------------------------------------------------------------------------------------------


def test_coverage_and_exposure_counts() -> None:
    recommended = np.array([[0, 1, -1], [1, 3, 0]])
    np.testing.assert_array_equal(exposure_counts(recommended, n_items=5), [2, 2, 0, 1, 0])
    np.testing.assert_array_equal(exposure_counts(recommended, n_items=5, k=1), [1, 1, 0, 0, 0])
    assert catalogue_coverage(recommended, n_items=5) == pytest.approx(3 / 5)
    assert catalogue_coverage(recommended, n_items=5, k=1) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="outside"):
        exposure_counts(recommended, n_items=3)


def test_gini_by_hand() -> None:
    assert gini_index(np.array([1, 1, 1, 1])) == pytest.approx(0.0)
    # One item takes every slot: (n - 1) / n.
    assert gini_index(np.array([0, 0, 0, 4])) == pytest.approx(0.75)
    # Sorted 1, 2, 3: (-2·1 + 0·2 + 2·3) / (3 · 6) = 4 / 18.
    assert gini_index(np.array([3, 1, 2])) == pytest.approx(4 / 18)
    assert math.isnan(gini_index(np.zeros(3)))
    with pytest.raises(ValueError, match="non-negative"):
        gini_index(np.array([1.0, -1.0]))
    # Exposure counts [2, 2, 0, 1, 0] sorted 0, 0, 1, 2, 2: (-4·0 - 2·0 + 0·1 + 2·2 + 4·2) / (5 · 5) = 12 / 25.
    recommended = np.array([[0, 1, -1], [1, 3, 0]])
    assert exposure_gini(recommended, n_items=5) == pytest.approx(12 / 25)


def test_novelty_by_hand() -> None:
    # 8 training users; item 0 seen by 8 (0 bits), item 1 by 4 (1 bit), item 2 by 2 (2 bits), item 3 by nobody.
    popularity = np.array([8.0, 4.0, 2.0, 0.0])
    np.testing.assert_allclose(self_information(popularity, 8), [0.0, 1.0, 2.0, 3.0])  # unseen counts as 1 user
    recommended = np.array([[0, 1], [2, -1], [-1, -1]])
    got = novelty_per_user(recommended, popularity, n_train_users=8)
    np.testing.assert_allclose(got[:2], [0.5, 2.0])  # padding is not an item
    assert math.isnan(got[2])
    np.testing.assert_allclose(novelty_per_user(recommended, popularity, 8, k=1)[:2], [0.0, 2.0])
    with pytest.raises(ValueError, match="at least the largest item count"):
        novelty_per_user(recommended, popularity, n_train_users=4)


def test_popularity_bias_by_hand() -> None:
    popularity = np.array([5.0, 1.0, 3.0, 3.0])
    # Ranks by popularity (ties averaged): 4, 1, 2.5, 2.5 out of 4.
    np.testing.assert_allclose(popularity_percentiles(popularity), [1.0, 0.25, 0.625, 0.625])
    recommended = np.array([[0, 2], [1, -1]])
    np.testing.assert_allclose(popularity_bias_per_user(recommended, popularity), [(1.0 + 0.625) / 2, 0.25])


def test_intra_list_diversity_by_hand() -> None:
    # Items: 0 {a, b}, 1 {b, c}, 2 {a, b}, 3 {} (no attributes), 4 {d}.
    attributes = sp.csr_matrix(
        np.array(
            [
                [1, 1, 0, 0],
                [0, 1, 1, 0],
                [1, 1, 0, 0],
                [0, 0, 0, 0],
                [0, 0, 0, 1],
            ]
        )
    )
    recommended = np.array(
        [
            [0, 1, 2],  # pairs: (0,1) 1 - 1/3, (0,2) 0, (1,2) 1 - 1/3 → mean 4/9
            [0, 3, 4],  # item 3 has no attributes: only (0,4) counts, distance 1
            [3, -1, 1],  # no pair with attributes on both sides
            [0, 2, -1],  # identical attribute sets: 0
        ]
    )
    got = intra_list_diversity_per_user(recommended, attributes)
    np.testing.assert_allclose(got[[0, 1, 3]], [4 / 9, 1.0, 0.0])
    assert math.isnan(got[2])
    np.testing.assert_allclose(intra_list_diversity_per_user(recommended, attributes, k=2)[0], 2 / 3)
    # A single-item list has no pair.
    assert np.isnan(intra_list_diversity_per_user(recommended, attributes, k=1)).all()


def test_intra_list_diversity_bit_counts_equal_the_sparse_products() -> None:
    # Up to 64 attributes the intersections are bit counts; one column more takes the sparse row products. Both
    # must give the same numbers, the 64th bit (column 63) and weighted entries included.
    rng = np.random.default_rng(7)
    dense = (rng.random((300, 64)) < 0.08) * rng.uniform(0.5, 3.0, size=(300, 64))
    dense[:40] = 0.0  # items without attributes
    dense[40:80, 63] = 2.0
    recommended = rng.integers(-1, 300, size=(500, 20))
    bits = intra_list_diversity_per_user(recommended, sp.csr_matrix(dense), 20)
    sparse = intra_list_diversity_per_user(recommended, sp.csr_matrix(np.hstack([dense, np.zeros((300, 1))])), 20)
    np.testing.assert_array_equal(bits, sparse)
    assert np.isfinite(bits).sum() > 450


def test_activity_groups_quantile_and_fixed_thresholds() -> None:
    events = np.array([5, 10, 20, 30, 40, 50, 60, 100])
    # 25th percentile 17.5 → cold ≤ 17; 75th percentile 52.5 → heavy ≥ 53.
    groups = activity_groups(events)
    assert (groups.cold_max, groups.heavy_min) == (17.0, 53.0)
    assert groups.labels.tolist() == ["cold", "cold", "regular", "regular", "regular", "regular", "heavy", "heavy"]
    fixed = activity_groups(events, cold_max=20, heavy_min=60)
    assert fixed.labels.tolist() == ["cold", "cold", "cold", "regular", "regular", "regular", "heavy", "heavy"]
    assert fixed.mask("regular").sum() == 3
    with pytest.raises(ValueError, match="greater than cold_max"):
        activity_groups(events, cold_max=50, heavy_min=50)
