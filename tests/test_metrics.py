"""Top-N and rating metrics against small cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recforge.metrics import mae, rmse, topn_metrics, topn_per_user

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
