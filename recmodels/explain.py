"""Why a model recommended an item: the user's history items that drove each (user, item) score.

:func:`explain` returns, for every (user, item) row, up to ``n_reasons`` *cited* history items with their weights
and a *kind* of reason; :func:`format_reason` turns one row into text ("because you rated Heat (1995) and Toy
Story (1995)"). What is cited follows each model's own scoring formula, so that removing the cited items lowers
the score (``tests/test_explain.py`` checks this on MovieLens 100K):

- ``item_knn`` (``"neighbours"``): ``score_ui = Σ_j h_uj · sim(i, j)``; item ``j`` contributes ``h_uj · sim(i, j)``
  (``h`` is 1, or the rating in rating mode). Exact.
- ``user_knn`` (``"neighbours"``): ``score_ui = Σ_v sim(u, v) · h_vi``. Each neighbour's vote is shared among the
  items ``j`` the user has in common with that neighbour, in proportion to their share of the similarity's dot
  product ``Σ_j w_uj w_vj`` (``w``: the weighted vectors the similarity was computed from):
  ``c_j = w_uj Σ_v sim(u, v) h_vi w_vj / (w_u · w_v)``. The ``c_j`` sum to the score exactly, and the cited items
  are the ones the user shares most with the neighbours who chose the recommended item.
- ``ease`` (``"neighbours"``): ``score_ui = Σ_j h_uj B_ji`` (``h``: the recency-weighted history when the model
  uses one); item ``j`` contributes ``h_uj B_ji``. Exact.
- ``pure_svd`` (``"latent_similarity"``): users are folded in as ``h_u V``, so ``score_ui = Σ_j h_uj (V Vᵀ)_ji``;
  item ``j`` contributes ``h_uj v_j · v_i``, its similarity to ``i`` in the latent space. Exact.
- ``als`` (``"latent_similarity"``): with the item factors ``Y`` fixed, a user's factor solves
  ``A_u x_u = Σ_j c_uj y_j`` (``A_u = YᵀY + λI + Σ_j (c_uj − 1) y_j y_jᵀ``), so
  ``score_ui = Σ_j c_uj y_jᵀ A_u⁻¹ y_i``: item ``j`` contributes ``c_uj y_jᵀ A_u⁻¹ y_i`` (Hu, Koren & Volinsky
  2008, §5). Exact for the factor re-solved against the final ``Y`` (:func:`als_user_factor`); the stored factor
  was solved against the previous iteration's ``Y`` (and by CG when confidences vary), so it differs slightly.
- ``bpr``, ``biased_mf``, ``nmf``, ``neumf`` (``"latent_similarity"``): the user's factor is a learned parameter,
  not a function of the history that could be taken apart, so the cited items are the user's items whose factors
  (NeuMF: GMF and MLP item embeddings side by side) have the largest cosine with the recommended item's. These are
  similarities, not additive parts of the score. On rated data only items the user rated at or above their own
  mean rating are cited: a reason should be something the user liked.
- ``gru4rec``, ``caser`` (``"sequence"``): occlusion of the newest :data:`SEQUENCE_OCCLUSIONS` events (at most the
  model's window): each is dropped from the sequence (an older event slides into the window), the network is
  re-run, and the weight is how much the recommended item's score falls. Exact for one dropped event; batched, one
  forward pass for all users and occlusions. Users without events are ranked by popularity, as the models do.
- ``popularity``, and any user the model does not know (those are ranked by popularity): ``"popularity"``, no
  cited items.

Only items with a positive weight are cited, never the recommended item itself; missing citations are ``-1``
with weight 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from recmodels.base import Recommender
from recmodels.baselines.ease import EASE
from recmodels.baselines.popularity import Popularity
from recmodels.blas import blas_threads
from recmodels.data import Interactions
from recmodels.knn.item import NeighbourhoodRecommender
from recmodels.knn.similarity import BLOCK_VALUES, SimilarityLookup, weigh_rows
from recmodels.mf.als import ALS, confidence_matrix
from recmodels.mf.biased_mf import BiasedMF
from recmodels.mf.nmf import NMF
from recmodels.mf.pure_svd import PureSVD
from recmodels.neural import Caser, GRU4Rec, NeuMF, NeuralRecommender, SequenceData
from recmodels.torch_utils import torch_threads

__all__ = [
    "KINDS",
    "POPULAR_REASON",
    "SEQUENCE_OCCLUSIONS",
    "Explanation",
    "als_user_factor",
    "contributions",
    "explain",
    "format_reason",
    "model_kind",
]

KINDS: tuple[str, ...] = ("neighbours", "latent_similarity", "sequence", "popularity")
#: The reason of a row ranked by global popularity (the popularity model, users a model does not know).
POPULAR_REASON = "popular with everyone"

#: Sequence models: how many of a user's newest events are occluded one at a time. The network's state is shaped
#: mostly by the newest events, and each occlusion is one more forward pass per user.
SEQUENCE_OCCLUSIONS = 5

# A user's attribution: (their history items (H,), weights (len(targets), H)) for the target items.
_Attribution = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True, eq=False)
class Explanation:
    """Reasons for ``len(users)`` (user, item) rows.

    users, items: the explained rows (int64, aligned).
    cited: ``(rows, n_reasons)`` history item indices, strongest first, ``-1`` where there are fewer reasons.
    weights: ``(rows, n_reasons)`` float32 weight of each cited item (its contribution to the score, or its
        similarity for models that only offer one; see the module docstring), 0 where nothing is cited.
    kinds: ``(rows,)`` one of :data:`KINDS` per row.
    explicit: the history holds ratings (the text says "rated", else "interacted with": clicks, views, purchases).
    """

    users: np.ndarray
    items: np.ndarray
    cited: np.ndarray
    weights: np.ndarray
    kinds: np.ndarray
    explicit: bool

    def __len__(self) -> int:
        return len(self.users)

    def reasons(self, labels: Sequence[str] | np.ndarray) -> list[str]:
        """One short text per row (:func:`format_reason`'s); ``labels[i]`` names item ``i`` (e.g. its title).

        Built column-wise on object arrays, one string operation per part for all rows alike, rather than one
        :func:`format_reason` call per row: publishing 200,000 users × 50 rows made ten million of those calls.
        """
        names = np.array([str(label) for label in labels] + [""], dtype=object)  # cited -1 → "" (never shown)
        kinds = np.asarray(self.kinds).astype(str, copy=False)
        known = np.zeros(len(kinds), dtype=bool)
        for kind in KINDS:  # a pass per kind: sorting millions of strings (np.unique) took seconds
            known |= kinds == kind
        if not known.all():
            raise ValueError(f"unknown kind {kinds[~known][0]!r}; choose from: {', '.join(KINDS)}")
        present = self.cited >= 0
        cited = self.cited
        if (present[:, 1:] & ~present[:, :-1]).any():  # move each row's cited items to the front, in their order
            cited = np.take_along_axis(cited, np.argsort(~present, axis=1, kind="stable"), axis=1)
        cited = np.where(cited >= 0, cited, len(names) - 1)
        counts = present.sum(axis=1)
        verb = "rated" if self.explicit else "interacted with"
        prefixes = np.array([f"because you {verb} ", f"because you recently {verb} "], dtype=object)
        out = np.full(len(kinds), "based on your history", dtype=object)
        for count in range(1, cited.shape[1] + 1):
            rows = np.flatnonzero((counts == count) & (kinds != "popularity"))
            if len(rows) == 0:
                continue
            parts = names[cited[rows, :count]]
            listed = parts[:, 0].copy()
            for position in range(1, count):
                listed = listed + (" and " if position == count - 1 else ", ") + parts[:, position]
            out[rows] = prefixes[(kinds[rows] == "sequence").astype(np.intp)] + listed
        # Global popularity: the same list for everyone, so "users like you" would claim a likeness never used.
        out[kinds == "popularity"] = POPULAR_REASON
        return out.tolist()


def format_reason(kind: str, cited_item_labels: Sequence[str], explicit: bool = True) -> str:
    """A short reason: "because you rated A and B" (``explicit``) / "because you interacted with A and B" /
    "popular with everyone" (:data:`POPULAR_REASON`); sequence models say "recently". Rows with nothing to cite get
    a generic text."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from: {', '.join(KINDS)}")
    if kind == "popularity":
        return POPULAR_REASON
    labels = list(cited_item_labels)
    if not labels:
        return "based on your history"
    listed = labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} and {labels[-1]}"
    verb = "rated" if explicit else "interacted with"
    if kind == "sequence":
        verb = f"recently {verb}"
    return f"because you {verb} {listed}"


def explain(
    model: Recommender, data: Interactions, users: np.ndarray, items: np.ndarray, n_reasons: int = 2
) -> Explanation:
    """Reasons for each (``users[r]``, ``items[r]``) row of a fitted ``model`` trained on ``data``.

    ``data`` supplies what the model does not keep (ALS confidences, ratings, event order); it must be the data
    the model was fitted on. Work is batched per user: rows of the same user share one attribution, so explaining
    a top-50 list costs little more than a top-1. Raises ``TypeError`` for a model this module does not know.
    """
    model._check_fitted()
    users = np.asarray(users, dtype=np.int64).ravel()
    items = np.asarray(items, dtype=np.int64).ravel()
    if users.shape != items.shape:
        raise ValueError(f"users and items differ in length: {users.shape} vs {items.shape}")
    if n_reasons < 1:
        raise ValueError(f"n_reasons must be ≥ 1, got {n_reasons}")
    n = len(users)
    cited = np.full((n, n_reasons), -1, dtype=np.int64)
    weights = np.zeros((n, n_reasons), dtype=np.float32)
    kind = model_kind(model)
    kinds = np.full(n, kind, dtype=object)
    known = (users >= 0) & (users < model.n_users_) & (items >= 0) & (items < model.n_items_)
    kinds[(users < 0) | (users >= model.n_users_)] = "popularity"  # unknown users are ranked by popularity
    if isinstance(model, NeuralRecommender):
        # So are users without a stored event: a network has no state to build for them.
        empty = np.zeros(n, dtype=bool)
        empty[known] = model.history_.lengths[users[known]] == 0
        kinds[empty] = "popularity"
        known &= ~empty
    rows = np.flatnonzero(known)
    if kind != "popularity" and len(rows):
        rows = rows[np.argsort(users[rows], kind="stable")]
        unique_users, starts = np.unique(users[rows], return_index=True)
        attribution = _attribution(model, data, unique_users)
        with _single_threaded_blas():
            for user, group in zip(unique_users, np.split(rows, starts[1:]), strict=True):
                targets = items[group]
                history, contrib = attribution(int(user), targets)
                if len(history) == 0:
                    continue
                cited[group], weights[group] = _strongest(history, contrib, targets, n_reasons)
    return Explanation(users, items, cited, weights, kinds.astype(str), data.rating is not None)


def contributions(
    model: Recommender, data: Interactions, user: int, items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(history, weights)`` for one known user: their history items and a ``(len(items), len(history))``
    matrix of each history item's weight for each of ``items`` (before the choice of the strongest)."""
    model._check_fitted()
    if model_kind(model) == "popularity":
        return np.empty(0, dtype=np.int64), np.empty((len(items), 0), dtype=np.float64)
    attribution = _attribution(model, data, np.array([user], dtype=np.int64))
    return attribution(int(user), np.asarray(items, dtype=np.int64))


def model_kind(model: Recommender) -> str:
    """The kind of reason ``model`` gives (one of :data:`KINDS`)."""
    if isinstance(model, Popularity):
        return "popularity"
    if isinstance(model, NeighbourhoodRecommender | EASE):
        return "neighbours"
    if isinstance(model, Caser | GRU4Rec):
        return "sequence"
    return "latent_similarity"


def als_user_factor(model: ALS, items: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """The exact ALS user factor for a history (``items`` with confidences ``c``) against the model's final item
    factors: the solution of ``(YᵀY + λI + Σ_j (c_j − 1) y_j y_jᵀ) x = Σ_j c_j y_j`` (float64)."""
    y = model.item_factors_.astype(np.float64)
    y_hist = y[np.asarray(items, dtype=np.int64)]
    c = np.asarray(confidence, dtype=np.float64)
    lhs = _als_gram(model) + (y_hist * (c - 1.0)[:, None]).T @ y_hist
    return np.linalg.solve(lhs, y_hist.T @ c)


# ---- attributions ---------------------------------------------------------------------------------------------


def _attribution(model: Recommender, data: Interactions, users: np.ndarray) -> _Attribution:
    """The per-user attribution function for ``model`` (``users``: every user that will be asked about)."""
    if isinstance(model, NeighbourhoodRecommender):
        return _user_knn(model) if model.user_based else _item_knn(model)
    if isinstance(model, EASE):
        return _ease(model)
    if isinstance(model, PureSVD):
        return _pure_svd(model)
    if isinstance(model, ALS):
        return _als(model, data)
    if isinstance(model, Caser | GRU4Rec):
        return _sequence(model, data, users)
    if isinstance(model, BiasedMF | NMF):
        return _latent_similarity((model.ranker_ or model.model_).item_factors, data)
    if isinstance(model, NeuMF):
        net = model.net_
        embeddings = np.hstack([net.gmf_item.weight.detach().cpu().numpy(), net.mlp_item.weight.detach().cpu().numpy()])
        return _latent_similarity(embeddings, data)
    factors = getattr(model, "item_factors_", None)  # BPR, and any other factor model with item factors
    if isinstance(factors, np.ndarray) and factors.ndim == 2:
        return _latent_similarity(factors, data)
    raise TypeError(f"no explanation is defined for {type(model).__name__} ({model.name})")


def _row(matrix: sp.csr_matrix, user: int) -> tuple[np.ndarray, np.ndarray]:
    """(columns, values) of one CSR row, as int64 / float64."""
    lo, hi = matrix.indptr[user], matrix.indptr[user + 1]
    return matrix.indices[lo:hi].astype(np.int64), matrix.data[lo:hi].astype(np.float64)


def _item_knn(model: NeighbourhoodRecommender) -> _Attribution:
    history = sp.csr_matrix(model.history_)
    lookup = SimilarityLookup(model.similarity_)  # rows are targets: sim(i, j) = similarity_[i, j]

    def attribute(user: int, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hist, values = _row(history, user)
        sims = lookup(targets, np.broadcast_to(hist, (len(targets), len(hist))))
        return hist, sims * values[None, :]

    return attribute


def _user_knn(model: NeighbourhoodRecommender) -> _Attribution:
    cfg = model.config
    history = sp.csr_matrix(model.history_)
    # The vectors the user–user similarity was computed from (users are the entities, items the features).
    vectors = weigh_rows(history, cfg.weighting, cfg.bm25_k1, cfg.bm25_b)
    similarity = sp.csr_matrix(model.similarity_)
    small = history.shape[0] * history.shape[1] <= BLOCK_VALUES
    # Dense copies make the per-user sub-blocks plain gathers; large catalogues are sliced sparsely instead.
    history_m = history.toarray() if small else history
    vectors_m = vectors.toarray() if small else vectors

    def block(matrix: np.ndarray | sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if isinstance(matrix, np.ndarray):
            return matrix[np.ix_(rows, cols)].astype(np.float64)
        return matrix[rows][:, cols].toarray().astype(np.float64)

    def attribute(user: int, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hist, _ = _row(history, user)
        neighbours, sims = _row(similarity, user)
        if len(hist) == 0 or len(neighbours) == 0:
            return hist, np.zeros((len(targets), len(hist)))
        own = block(vectors_m, np.array([user]), hist)[0]  # w_uj
        shared = block(vectors_m, neighbours, hist)  # w_vj, (N, H)
        dots = shared @ own  # w_u · w_v: the user's vector is zero outside ``hist``
        votes = block(history_m, neighbours, targets)  # h_vi, (N, T)
        scale = np.divide(sims, dots, out=np.zeros_like(sims), where=dots > 0)
        return hist, ((votes * scale[:, None]).T @ shared) * own[None, :]

    return attribute


def _ease(model: EASE) -> _Attribution:
    history = sp.csr_matrix(model.history_ if model.history_ is not None else model.seen_)
    weights = model.weights_  # score = h @ B

    def attribute(user: int, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hist, values = _row(history, user)
        return hist, weights[np.ix_(hist, targets)].T.astype(np.float64) * values[None, :]

    return attribute


def _pure_svd(model: PureSVD) -> _Attribution:
    history = sp.csr_matrix(model.history_ if model.history_ is not None else model.seen_)
    factors = model.item_factors_.astype(np.float64)

    def attribute(user: int, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hist, values = _row(history, user)
        return hist, (factors[targets] @ factors[hist].T) * values[None, :]

    return attribute


def _als_gram(model: ALS) -> np.ndarray:
    y = model.item_factors_.astype(np.float64)
    return y.T @ y + model.config.regularization * np.eye(y.shape[1])


def _als_confidence(model: ALS, data: Interactions) -> sp.csr_matrix:
    cfg = model.config
    return sp.csr_matrix(confidence_matrix(data, cfg.alpha, cfg.confidence, cfg.epsilon, cfg.use_ratings))


def _als(model: ALS, data: Interactions) -> _Attribution:
    confidence = _als_confidence(model, data)
    y = model.item_factors_.astype(np.float64)
    gram = _als_gram(model)
    # With every confidence 1 all users share A = YᵀY + λI, so A⁻¹yᵢ is computed once for the whole catalogue.
    shared = y @ np.linalg.inv(gram) if bool(np.all(confidence.data == 1.0)) else None

    def attribute(user: int, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hist, conf = _row(confidence, user)
        y_hist = y[hist]
        if shared is not None:
            solved = shared[targets]  # (A⁻¹ y_i)ᵀ per target, A symmetric
        else:
            lhs = gram + (y_hist * (conf - 1.0)[:, None]).T @ y_hist
            solved = np.linalg.solve(lhs, y[targets].T).T
        return hist, (solved @ y_hist.T) * conf[None, :]

    return attribute


def _latent_similarity(item_factors: np.ndarray, data: Interactions) -> _Attribution:
    factors = np.asarray(item_factors, dtype=np.float64)
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    unit = np.divide(factors, norms, out=np.zeros_like(factors), where=norms > 0)
    history = data.ratings if data.rating is not None else data.binary

    def attribute(user: int, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hist, values = _row(history, user)
        if data.rating is not None and len(hist):
            hist = hist[values >= values.mean()]  # cite what the user liked, not what they panned
        return hist, unit[targets] @ unit[hist].T

    return attribute


def _sequence(model: Recommender, data: Interactions, users: np.ndarray) -> _Attribution:
    """Occlusion for GRU4Rec and Caser: how much each of the newest events raises each target's score."""
    window = model.config.window if isinstance(model, Caser) else model.config.max_len
    # The full event order (when ``data`` has it) lets an older event slide into the window when one is dropped,
    # as it would have if the user had never had the dropped one; the model's stored history is only the window.
    sequences = SequenceData.from_interactions(data) if data.timestamp is not None else model.history_
    lengths = sequences.lengths[users]
    width = int(max(1, lengths.max(initial=0))) if window is None else window
    # Events older than the window do not reach the network: occluding them would change nothing.
    n_occluded = np.minimum(lengths, min(SEQUENCE_OCCLUSIONS, width))
    # Rows: per user, the sequence as scored, then one row per occluded event (newest first).
    per_user = 1 + n_occluded
    row_user = np.repeat(users, per_user)
    dropped = np.concatenate([np.arange(-1, k) for k in n_occluded])  # -1: nothing dropped; k: k-th newest
    stop = sequences.indptr[row_user + 1]
    reach = np.where(dropped >= 0, width + 1, width)  # one more event is read when one is dropped
    start = np.maximum(sequences.indptr[row_user], stop - reach)
    seq, seq_len = sequences.gather(start, stop, width=width + 1)
    drop_pos = np.where(dropped >= 0, seq_len - 1 - dropped, width + 1)
    cols = np.arange(width + 1)[None, :]
    keep = (cols < seq_len[:, None]) & (cols != drop_pos[:, None])
    # Left-align the kept events of each row, newest last, and cut to the window.
    order = np.argsort(~keep, axis=1, kind="stable")
    seq = np.take_along_axis(seq, order, axis=1)[:, :width]  # a dropped event leaves at most ``width``
    seq_len = keep.sum(axis=1)
    seq[cols[:, :width] >= seq_len[:, None]] = sequences.pad
    # Each user's newest events (oldest first), to name what each occlusion row dropped.
    user_stop = sequences.indptr[users + 1]
    user_start = np.maximum(sequences.indptr[users], user_stop - SEQUENCE_OCCLUSIONS)
    newest, _ = sequences.gather(user_start, user_stop, width=SEQUENCE_OCCLUSIONS)

    net = model.net_
    device = model.device_
    states = []
    net.eval()
    with torch_threads(model.threads_), torch.no_grad():
        for first in range(0, len(seq), 4096):
            part = slice(first, first + 4096)
            items_t = torch.from_numpy(seq[part]).to(device)
            lens_t = torch.from_numpy(np.maximum(seq_len[part], 1)).to(device)
            if isinstance(model, Caser):
                state = net.last_state(torch.from_numpy(row_user[part]).to(device), items_t, lens_t)
            else:
                state = net.last_state(items_t, lens_t)
            states.append(state.float().cpu().numpy())
    states_all = np.concatenate(states).astype(np.float64) if states else np.empty((0, 0))
    out_weight = net.out.weight.detach().cpu().numpy().astype(np.float64)
    first_row = np.concatenate([[0], np.cumsum(per_user)])
    position = {int(u): k for k, u in enumerate(users)}

    def attribute(user: int, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = position[user]
        m = int(n_occluded[k])
        if m == 0:
            return np.empty(0, dtype=np.int64), np.zeros((len(targets), 0))
        block = states_all[first_row[k] : first_row[k + 1]]  # (1 + m, hidden)
        drops = (block[0] - block[1:]) @ out_weight[targets].T  # bias cancels in the difference
        # newest[k] is oldest first, padded at the end; the k-th newest sits at length - 1 - k.
        held = int(min(lengths[k], SEQUENCE_OCCLUSIONS))
        hist = newest[k][held - 1 - np.arange(m)]
        return hist.astype(np.int64), drops.T

    return attribute


def _single_threaded_blas() -> contextlib.AbstractContextManager[object]:
    """One BLAS thread for the per-user loop: its products are tiny (tens × hundreds), and on a busy machine
    (the flow trains models side by side) multi-threaded BLAS made explaining 943 × 50 rows 10× slower (0.2 s →
    2 s for user_knn). Effective when explaining from the main thread: OpenBLAS ignores limits set from other
    threads, such as the flow's task threads, which the flow limits itself (:mod:`recmodels.blas`)."""
    return blas_threads(1)


def _strongest(
    history: np.ndarray, contrib: np.ndarray, targets: np.ndarray, n_reasons: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each target's ``n_reasons`` largest positive weights (never the target itself): (items, weights)."""
    contrib = np.where(history[None, :] == targets[:, None], -np.inf, contrib)
    n_hist = contrib.shape[1]
    if n_hist > n_reasons:
        top = np.argpartition(-contrib, n_reasons - 1, axis=1)[:, :n_reasons]
    else:
        top = np.broadcast_to(np.arange(n_hist), (len(targets), n_hist))
    values = np.take_along_axis(contrib, top, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    positive = values > 0
    items = np.full((len(targets), n_reasons), -1, dtype=np.int64)
    weights = np.zeros((len(targets), n_reasons), dtype=np.float32)
    width = top.shape[1]
    items[:, :width] = np.where(positive, history[top], -1)
    weights[:, :width] = np.where(positive, values, 0.0)
    return items, weights
