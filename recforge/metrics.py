"""Top-N ranking and rating-error metrics, vectorised over users (numpy/scipy only).

Top-N conventions (the project's standard protocol, docs/BENCHMARKS.md), for one user with relevant set R and
top-K list r_1..r_K (item ``-1`` = padding, never relevant):

- precision = hits / K;  recall = hits / |R|;  hit_rate = 1 if hits > 0.
- ndcg = DCG / IDCG with DCG = Σ rel_j / log2(j + 1) and IDCG over min(|R|, K) relevant items at the top.
- map: average precision = Σ_j rel_j · precision@j / min(|R|, K).
- mrr: 1 / rank of the first relevant item within the top K, else 0.

Per-user values come from :func:`topn_per_user` (so that callers can bootstrap or compare by user);
:func:`topn_per_user_at` computes them for several cut-offs from one ranked list of the largest K;
:func:`topn_metrics` averages them and adds catalogue coverage.

Beyond accuracy (``recommended`` holds item indices, ``-1`` = padding, which is never an item):

- catalogue coverage = distinct recommended items / catalogue size.
- exposure Gini = Gini index of how often each catalogue item is recommended (items never shown count as 0):
  0 when every item is shown equally often, (n − 1) / n when one item takes every slot.
- novelty = mean self-information −log2(p_i) of a user's recommended items, p_i = share of training users who
  interacted with item i (Zhou et al. 2010).
- intra-list diversity (ILD) = mean pairwise distance 1 − Jaccard(attributes_i, attributes_j) over the pairs of a
  user's list; pairs with an item without attributes are left out.
- popularity bias = mean popularity percentile of a user's recommended items (1.0 = the most popular item).

User activity groups (:func:`activity_groups`): cold / regular / heavy by training events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata

TOPN_KEYS = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate")
#: Per-user beyond-accuracy metrics (each user's list has a value; ILD only when item attributes are given).
PER_USER_BEYOND_KEYS = ("novelty", "popularity_bias", "ild")
#: Metrics of the set of all lists together (no per-user value, so no bootstrap interval).
SET_KEYS = ("coverage", "gini")
#: Activity group labels, least to most active.
ACTIVITY_GROUPS = ("cold", "regular", "heavy")


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


def check_ks(ks: int | Sequence[int]) -> tuple[int, ...]:
    """The distinct cut-offs of ``ks`` in increasing order, after checking each is a positive integer."""
    values = (ks,) if isinstance(ks, int | np.integer) else tuple(ks)
    if not values:
        raise ValueError("ks is empty; pass at least one cut-off, e.g. ks=(5, 10, 20)")
    bad = [k for k in values if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1]
    if bad:
        raise ValueError(f"every cut-off must be an integer >= 1; got {bad} in ks={values}")
    return tuple(sorted({int(k) for k in values}))


def topn_per_user_at(
    recommended: np.ndarray, relevant: sp.csr_matrix, ks: int | Sequence[int] = (5, 10, 20)
) -> dict[int, dict[str, np.ndarray]]:
    """Per-user top-N metrics at every cut-off in ``ks``, from one ranked list of the largest cut-off.

    Returns ``{k: {metric: float64 array with one value per row}}`` for the :data:`TOPN_KEYS` metrics.
    recommended: ``(n_users, >= max(ks))`` item indices, best first, ``-1`` for padding.
    relevant: ``(n_users, n_items)`` CSR whose positive entries are each user's test items (binary relevance);
        every row must have at least one.

    Metrics at a smaller k are prefixes of the same list, so running sums over the ranks give every cut-off at
    once (the value at k is the running sum at column k − 1).
    """
    ks = check_ks(ks)
    k_max = ks[-1]
    hits, n_relevant = _hits(recommended, relevant, k_max)
    hit_f = hits.astype(np.float64)
    ranks = np.arange(1, k_max + 1, dtype=np.float64)
    discount = 1.0 / np.log2(ranks + 1.0)
    cum_hits = np.cumsum(hit_f, axis=1)
    cum_dcg = np.cumsum(hit_f * discount, axis=1)
    # Average precision's numerator: precision@j summed over the ranks j that hold a relevant item.
    cum_ap = np.cumsum(cum_hits / ranks * hit_f, axis=1)
    # ideal_dcg[m] = DCG of m relevant items in the first m slots.
    ideal_dcg = np.concatenate(([0.0], np.cumsum(discount)))
    any_hit = hits.any(axis=1)
    first_rank = np.where(any_hit, np.argmax(hits, axis=1) + 1.0, np.inf)

    out: dict[int, dict[str, np.ndarray]] = {}
    for k in ks:
        n_hits = cum_hits[:, k - 1]
        ideal_len = np.minimum(n_relevant, k)
        hit_at_k = first_rank <= k
        out[k] = {
            "precision": n_hits / k,
            "recall": n_hits / n_relevant,
            "ndcg": cum_dcg[:, k - 1] / ideal_dcg[ideal_len],
            "map": cum_ap[:, k - 1] / ideal_len,
            "mrr": np.where(hit_at_k, 1.0 / first_rank, 0.0),
            "hit_rate": hit_at_k.astype(np.float64),
        }
    return out


def topn_per_user(recommended: np.ndarray, relevant: sp.csr_matrix, k: int = 10) -> dict[str, np.ndarray]:
    """Per-user precision, recall, ndcg, map, mrr and hit_rate at ``k`` (float64 arrays, one value per row).

    recommended: ``(n_users, >= k)`` item indices, best first, ``-1`` for padding.
    relevant: ``(n_users, n_items)`` CSR whose positive entries are each user's test items (binary relevance);
        every row must have at least one.
    """
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return topn_per_user_at(recommended, relevant, (int(k),))[int(k)]


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


# ---- beyond accuracy -----------------------------------------------------------------------------------------


def _top(recommended: np.ndarray, k: int | None, n_items: int) -> np.ndarray:
    """The first ``k`` columns (all when None) of a checked ``(n_users, ranks)`` item-index array, as int64."""
    recommended = np.asarray(recommended)
    if recommended.ndim != 2:
        raise ValueError(f"recommended must be a 2-D (users × ranks) array, got shape {recommended.shape}")
    if k is not None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if recommended.shape[1] < k:
            raise ValueError(f"recommended has {recommended.shape[1]} columns but k={k}; pad short lists with item -1")
        recommended = recommended[:, :k]
    top = recommended.astype(np.int64, copy=False)
    if top.size and (top.max() >= n_items or top.min() < -1):
        raise ValueError(
            f"recommended holds item indices outside [-1, {n_items}); use the item index of the training "
            "catalogue (-1 only as padding)"
        )
    return top


def _mean_over_lists(top: np.ndarray, item_values: np.ndarray) -> np.ndarray:
    """Per row, the mean of ``item_values`` over the row's non-padding items; NaN for an all-padding row."""
    valid = top >= 0
    values = np.where(valid, item_values[np.where(valid, top, 0)], 0.0)
    counts = valid.sum(axis=1)
    sums = values.sum(axis=1)
    return np.divide(sums, counts, out=np.full(len(top), np.nan), where=counts > 0)


def exposure_counts(recommended: np.ndarray, n_items: int, k: int | None = None) -> np.ndarray:
    """How many lists (top ``k``) recommend each catalogue item: an int64 array of length ``n_items``."""
    if n_items < 1:
        raise ValueError(f"n_items must be positive, got {n_items}")
    top = _top(recommended, k, n_items)
    return np.bincount(top[top >= 0], minlength=n_items).astype(np.int64)


def catalogue_coverage(recommended: np.ndarray, n_items: int, k: int | None = None) -> float:
    """Share of the ``n_items`` catalogue that appears in at least one list's top ``k``."""
    return float((exposure_counts(recommended, n_items, k) > 0).sum() / n_items)


def gini_index(values: np.ndarray) -> float:
    """Gini index of non-negative amounts: 0 = perfectly equal, (n − 1) / n = one holder has everything.

    G = Σᵢ (2i − n − 1) · x₍ᵢ₎ / (n · Σ x) with x sorted ascending, i = 1..n. NaN when every amount is 0.
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if x.size == 0:
        raise ValueError("gini_index needs at least one value")
    if (x < 0).any() or not np.isfinite(x).all():
        raise ValueError("gini_index needs finite, non-negative amounts (e.g. recommendation counts)")
    total = x.sum()
    if total == 0:
        return float("nan")
    n = x.size
    weights = 2.0 * np.arange(1, n + 1) - n - 1
    return float((weights @ x) / (n * total))


def exposure_gini(recommended: np.ndarray, n_items: int, k: int | None = None) -> float:
    """Gini index of the recommendation counts of every catalogue item (never-shown items count as 0)."""
    return gini_index(exposure_counts(recommended, n_items, k))


def _check_popularity(item_popularity: np.ndarray) -> np.ndarray:
    popularity = np.asarray(item_popularity, dtype=np.float64).ravel()
    if popularity.size == 0 or (popularity < 0).any() or not np.isfinite(popularity).all():
        raise ValueError(
            "item_popularity must be finite, non-negative training counts, one per catalogue item "
            "(e.g. Interactions.item_counts of the training data)"
        )
    return popularity


def self_information(item_popularity: np.ndarray, n_train_users: int) -> np.ndarray:
    """−log2(p_i) per item, p_i = (training users of item i) / ``n_train_users``.

    An item nobody interacted with in training is counted as seen by one user (the largest finite value), so
    a model that recommends brand-new items is scored as maximally novel instead of infinitely so.
    """
    popularity = _check_popularity(item_popularity)
    if n_train_users < 1 or popularity.max() > n_train_users:
        raise ValueError(
            f"n_train_users={n_train_users} must be positive and at least the largest item count "
            f"({popularity.max():g}): item_popularity counts distinct training users per item"
        )
    return -np.log2(np.maximum(popularity, 1.0) / n_train_users)


def novelty_per_user(
    recommended: np.ndarray, item_popularity: np.ndarray, n_train_users: int, k: int | None = None
) -> np.ndarray:
    """Per user, the mean self-information of the recommended items (bits; higher = less popular items).

    item_popularity: distinct training users per catalogue item; n_train_users: users in training.
    All-padding lists give NaN.
    """
    info = self_information(item_popularity, n_train_users)
    return _mean_over_lists(_top(recommended, k, info.size), info)


def popularity_percentiles(item_popularity: np.ndarray) -> np.ndarray:
    """Each item's popularity percentile in (0, 1]: its average rank by training popularity / catalogue size.

    The most popular item gets 1.0; tied items share their average rank, so over the whole catalogue the
    percentiles average to (n + 1) / (2n) ≈ 0.5 — what a recommender that ignores popularity would score.
    """
    popularity = _check_popularity(item_popularity)
    return rankdata(popularity, method="average") / popularity.size


def popularity_bias_per_user(recommended: np.ndarray, item_popularity: np.ndarray, k: int | None = None) -> np.ndarray:
    """Per user, the mean popularity percentile of the recommended items (NaN for all-padding lists)."""
    percentiles = popularity_percentiles(item_popularity)
    return _mean_over_lists(_top(recommended, k, percentiles.size), percentiles)


def intra_list_diversity_per_user(
    recommended: np.ndarray, item_attributes: sp.spmatrix | np.ndarray, k: int | None = None
) -> np.ndarray:
    """Per user, the mean Jaccard distance 1 − |A ∩ B| / |A ∪ B| over all pairs of items in the top ``k``.

    item_attributes: ``(n_items, n_attributes)`` matrix; a positive entry means the item has the attribute
        (e.g. one column per genre). Pairs in which an item has no attribute at all are left out (an unknown
        genre is not evidence of difference); users with no pair left get NaN.

    Every pair of every list is scored at once: the intersection sizes are the row-wise dot products of the two
    items' attribute rows, or, with at most 64 attributes (genres), the bit counts of the two items' attribute
    bits ANDed together: the same integers without gathering a sparse row per item of every pair (at 20,000 users
    the top-20's 3.8M pairs took 0.5 s in scipy's row indexing alone).
    """
    attributes = sp.csr_matrix(item_attributes, dtype=np.float64)
    attributes.eliminate_zeros()
    attributes.data = (attributes.data > 0).astype(np.float64)
    n_items = attributes.shape[0]
    top = _top(recommended, k, n_items)
    n_users, width = top.shape
    out = np.full(n_users, np.nan)
    if width < 2:
        return out
    sizes = attributes.getnnz(axis=1)
    first, second = np.triu_indices(width, 1)
    a, b = top[:, first], top[:, second]
    ok = (a >= 0) & (b >= 0)
    a, b = np.where(ok, a, 0), np.where(ok, b, 0)
    ok &= (sizes[a] > 0) & (sizes[b] > 0)
    user_of_pair = np.broadcast_to(np.arange(n_users)[:, None], a.shape)[ok]
    a, b = a[ok], b[ok]
    if attributes.shape[1] <= 64:
        coo = attributes.tocoo()
        bits = np.zeros(n_items, dtype=np.uint64)
        np.bitwise_or.at(bits, coo.row, np.left_shift(np.uint64(1), coo.col.astype(np.uint64)))
        intersection = np.bitwise_count(bits[a] & bits[b]).astype(np.float64)
    else:
        intersection = np.asarray(attributes[a].multiply(attributes[b]).sum(axis=1)).ravel()
    distance = 1.0 - intersection / (sizes[a] + sizes[b] - intersection)
    pairs = np.bincount(user_of_pair, minlength=n_users)
    totals = np.bincount(user_of_pair, weights=distance, minlength=n_users)
    np.divide(totals, pairs, out=out, where=pairs > 0)
    return out


# ---- user activity groups -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivityGroups:
    """Each evaluated user's activity group and the thresholds used.

    labels: ``"cold"`` (train events ≤ ``cold_max``), ``"heavy"`` (≥ ``heavy_min``) or ``"regular"``, per user.
    """

    labels: np.ndarray
    cold_max: float
    heavy_min: float

    def mask(self, group: str) -> np.ndarray:
        """Boolean mask of the users in ``group`` (one of :data:`ACTIVITY_GROUPS`)."""
        if group not in ACTIVITY_GROUPS:
            raise ValueError(f"unknown activity group {group!r}; choose from {ACTIVITY_GROUPS}")
        return self.labels == group


def activity_groups(
    train_events: np.ndarray,
    cold_max: float | None = None,
    heavy_min: float | None = None,
    quantiles: tuple[float, float] = (0.25, 0.75),
) -> ActivityGroups:
    """Bucket users by their number of training events into cold / regular / heavy.

    By default the thresholds come from the users' own distribution, so that they suit any data set: cold =
    at most the 25th percentile (rounded down), heavy = above the 75th percentile (at least its floor + 1),
    i.e. roughly the least and the most active quarter. Pass ``cold_max`` / ``heavy_min`` to fix them instead
    (e.g. ``cold_max=20``).
    """
    events = np.asarray(train_events, dtype=np.float64).ravel()
    if events.size == 0:
        raise ValueError("activity_groups needs at least one user")
    low_q, high_q = quantiles
    if not 0.0 <= low_q <= high_q <= 1.0:
        raise ValueError(f"quantiles must satisfy 0 <= low <= high <= 1, got {quantiles}")
    cold = float(np.floor(np.quantile(events, low_q))) if cold_max is None else float(cold_max)
    heavy = float(np.floor(np.quantile(events, high_q)) + 1.0) if heavy_min is None else float(heavy_min)
    if heavy <= cold:
        raise ValueError(
            f"heavy_min ({heavy:g}) must be greater than cold_max ({cold:g}); users with at most cold_max "
            "training events are cold and users with at least heavy_min are heavy"
        )
    labels = np.full(events.size, "regular", dtype=object)
    labels[events <= cold] = "cold"
    labels[events >= heavy] = "heavy"
    return ActivityGroups(labels=labels, cold_max=cold, heavy_min=heavy)


# ---- rating prediction --------------------------------------------------------------------------------------


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
