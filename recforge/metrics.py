"""Top-N ranking and rating-error metrics, vectorised over users (numpy/scipy only).

Top-N conventions (the project's standard protocol, docs/BENCHMARKS.md), for one user with relevant set R and
top-K list r_1..r_K (item ``-1`` = padding, never relevant):

- precision = hits / K;  recall = hits / |R|;  hit_rate = 1 if hits > 0.
- ndcg = DCG / IDCG with DCG = Σ rel_j / log2(j + 1) and IDCG over min(|R|, K) relevant items at the top.
- map: average precision = Σ_j rel_j · precision@j / min(|R|, K).
- mrr: 1 / rank of the first relevant item within the top K, else 0.

Per-user values come from :func:`topn_per_user` (so that callers can bootstrap or compare by user);
:func:`topn_metrics` averages them and adds catalogue coverage.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

TOPN_KEYS = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate")


def _hits(recommended: np.ndarray, relevant: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean hit matrix ``(n_users, k)`` and the per-user count of relevant items, after checking inputs."""
    recommended = np.asarray(recommended)
    if recommended.ndim != 2:
        raise ValueError(f"recommended must be a 2-D (users × ranks) array, got shape {recommended.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n_users, n_cols = recommended.shape
    if n_cols < k:
        raise ValueError(f"recommended has {n_cols} columns but k={k}; pad short lists with item -1")
    relevant = sp.csr_matrix(relevant)
    if relevant.shape[0] != n_users:
        raise ValueError(
            f"recommended has {n_users} user rows but relevant has {relevant.shape[0]}; both must list the "
            "same users in the same order"
        )
    top = recommended[:, :k].astype(np.int64, copy=False)
    valid = top >= 0
    if (top >= relevant.shape[1]).any():
        raise ValueError(f"recommended holds item indices >= n_items ({relevant.shape[1]})")
    if (top < -1).any():
        raise ValueError("recommended holds negative item indices other than the padding value -1")
    # A repeated item would be counted as two hits; recommenders must never return one twice.
    sorted_top = np.sort(top, axis=1)
    repeated = (sorted_top[:, 1:] == sorted_top[:, :-1]) & (sorted_top[:, 1:] >= 0)
    if repeated.any():
        rows = np.flatnonzero(repeated.any(axis=1))[:5].tolist()
        raise ValueError(f"recommended lists repeat an item in rows {rows}; each item may appear once per user")

    positive = relevant > 0
    n_relevant = np.asarray(positive.sum(axis=1)).ravel().astype(np.int64)
    if (n_relevant == 0).any():
        rows = np.flatnonzero(n_relevant == 0)[:5].tolist()
        raise ValueError(
            f"{int((n_relevant == 0).sum())} user row(s) have no relevant items (first: {rows}); metrics are "
            "undefined for them: leave users without test items out of the evaluation"
        )
    # Elementwise CSR lookup of (user, item) for every slot; padding is looked up as item 0 and masked off.
    rows = np.repeat(np.arange(n_users), k)
    cols = np.where(valid, top, 0).ravel()
    looked_up = np.asarray(positive[rows, cols]).reshape(n_users, k)
    return looked_up & valid, n_relevant


def topn_per_user(recommended: np.ndarray, relevant: sp.csr_matrix, k: int = 10) -> dict[str, np.ndarray]:
    """Per-user precision, recall, ndcg, map, mrr and hit_rate at ``k`` (float64 arrays, one value per row).

    recommended: ``(n_users, >= k)`` item indices, best first, ``-1`` for padding.
    relevant: ``(n_users, n_items)`` CSR whose positive entries are each user's test items (binary relevance);
        every row must have at least one.
    """
    hits, n_relevant = _hits(recommended, relevant, k)
    hit_f = hits.astype(np.float64)
    ranks = np.arange(1, k + 1, dtype=np.float64)
    discount = 1.0 / np.log2(ranks + 1.0)
    n_hits = hit_f.sum(axis=1)
    ideal_len = np.minimum(n_relevant, k)

    dcg = hit_f @ discount
    # idcg[m] = DCG of m relevant items in the first m slots.
    idcg = np.concatenate(([0.0], np.cumsum(discount)))[ideal_len]
    precision_at = np.cumsum(hit_f, axis=1) / ranks
    first = np.argmax(hits, axis=1)
    any_hit = hits.any(axis=1)
    return {
        "precision": n_hits / k,
        "recall": n_hits / n_relevant,
        "ndcg": dcg / idcg,
        "map": (precision_at * hit_f).sum(axis=1) / ideal_len,
        "mrr": np.where(any_hit, 1.0 / (first + 1.0), 0.0),
        "hit_rate": any_hit.astype(np.float64),
    }


def topn_metrics(
    recommended: np.ndarray, relevant: sp.csr_matrix, k: int = 10, n_items: int | None = None
) -> dict[str, float]:
    """Mean top-N metrics over users plus catalogue coverage and the number of users evaluated.

    coverage = distinct items in anyone's top ``k`` / ``n_items`` (defaults to ``relevant.shape[1]``).
    """
    per_user = topn_per_user(recommended, relevant, k)
    n_items = int(relevant.shape[1] if n_items is None else n_items)
    if n_items < 1:
        raise ValueError(f"n_items must be positive, got {n_items}")
    top = np.asarray(recommended)[:, :k]
    distinct = np.unique(top[top >= 0]).size
    out = {key: float(per_user[key].mean()) for key in TOPN_KEYS}
    out["coverage"] = distinct / n_items
    out["users"] = float(top.shape[0])
    return out


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=np.float64).ravel()
    if pred.shape != truth.shape:
        raise ValueError(f"pred has {pred.size} values but truth has {truth.size}")
    if pred.size == 0:
        raise ValueError("cannot compute an error over zero predictions")
    for name, values in (("pred", pred), ("truth", truth)):
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(
                f"{name} holds {int(bad.sum())} non-finite value(s) (first positions: "
                f"{np.flatnonzero(bad)[:5].tolist()}); a rating model must predict a number for every pair"
            )
    return pred, truth


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    """Root mean squared error between predicted and true ratings."""
    pred, truth = _pair(pred, truth)
    return float(np.sqrt(np.mean((pred - truth) ** 2)))


def mae(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute error between predicted and true ratings."""
    pred, truth = _pair(pred, truth)
    return float(np.mean(np.abs(pred - truth)))
