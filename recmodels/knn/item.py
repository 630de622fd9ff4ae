"""Item–item neighbourhood model (``item_knn``), plus the config and model base shared with ``user_knn``.

A user-based model is the item-based one with users and items swapped, so both are one base class
(:class:`NeighbourhoodRecommender`) that works on *entities* (the side whose similarities are computed: items
here, users in :mod:`recmodels.knn.user`) and *features* (the other side). Two modes, chosen by ``mode``:

- ``"implicit"`` ranks from the binary interactions by an asymmetric cosine between (optionally tf-idf / BM25
  weighted) item vectors, ``sim(j, i) = (|U_j ∩ U_i| / (|U_j|^α |U_i|^(1−α)))^exponent`` for a target ``j`` and
  a neighbour ``i``: a user's score for ``j`` is the sum of ``sim(j, i)`` over the items ``i`` in their history
  among the pairs kept. By default each item ``i`` keeps the ``neighbors`` targets it is most similar to
  (``pruning="history"``, implicit's convention); ``pruning="target"`` keeps each target's ``neighbors`` most
  similar items instead (classic item-kNN). With ``α = 0.5``, ``exponent = 1`` this is the plain cosine item-kNN;
  ``α > 0.5`` penalises popular targets and ``exponent > 1`` lets the closest neighbours dominate (Aiolli's
  asymmetric cosine with locality, which the validation slice prefers). Needs no ratings.
- ``"rating"`` needs ratings. It ranks the same way but from the rating values (cosine of rating vectors, history
  weighted by the user's ratings), and fits the classic rating predictor eagerly (below).

``predict`` (both modes, whenever the training data had ratings) is the kNN rating formula of surprise's
KNNBaseline / KNNWithMeans, item-based: ``r̂_ui = c_ui + Σ_{j ∈ N} sim(i, j)(r_uj − c_uj) / Σ_{j ∈ N} |sim(i, j)|``
where ``N`` is the ``rating_neighbors`` items most (positively) similar to ``i`` among those ``u`` rated, and the
centre ``c`` is the baseline ``μ + b_u + b_i`` (``centering="baseline"``) or the item's mean rating
(``"mean"``). In implicit mode these rating neighbourhoods are built on the first ``predict`` call, so ranking-only
use never pays for them. Unknown users or items get ``μ + b_u + b_i`` with the unknown side's bias left out.

Ranking by the normalised prediction itself is not offered: dividing by ``Σ|sim|`` throws away how much evidence
stands behind an item, and on the ML-100K validation slice it ranks far below popularity (NDCG@10 0.02); see
docs/benchmarks/knn.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

import numpy as np
import scipy.sparse as sp

from recmodels.base import ModelConfig, Recommender, RunSettings, csr_from_state, csr_state
from recmodels.data import Interactions
from recmodels.knn.similarity import (
    BLOCK_VALUES,
    RATING_SIMILARITIES,
    WEIGHTINGS,
    PackedRows,
    als_baselines,
    cosine_topk,
    neighbourhood_offsets,
    rating_similarity,
    weigh_rows,
)

#: Most similarities a rating model keeps when ``rating_candidates`` is None (see :class:`KNNConfig`): 20 bytes each
#: while the blocks' parts are gathered, 8 once assembled (4 and 1.6 GB). Every positive one fits below it up to
#: 14,142 entities (ML-100K: 1,682); at the 900k-event set's 20,000 users 34 % of pairs are positive (137M), and at
#: 200,000 users the same share would be ~1.4·10¹⁰ entries, over 100 GB: there each user keeps its 1,000 most similar.
RATING_ENTRY_BUDGET = 200_000_000
#: A neighbour is scored as a dense row (a hub) when at least this share of the targets have it as a neighbour.
HUB_FILL = 1 / 32

MODES: tuple[str, ...] = ("implicit", "rating")
PRUNINGS: tuple[str, ...] = ("target", "history")
CENTERINGS: tuple[str, ...] = ("baseline", "mean")


@dataclass(frozen=True)
class KNNConfig(ModelConfig):
    """Hyperparameters shared by :class:`ItemKNN` and :class:`~recmodels.knn.user.UserKNN` (defaults: item_knn's).

    mode: ``"implicit"`` ranks from binary interactions; ``"rating"`` (needs ratings) ranks from the rating values
        and fits the rating predictor during ``fit``. ``predict`` works in both modes when ratings were given.

    Ranking neighbourhoods (both modes):

    neighbors: K, the most similar entities kept per target entity (the one being scored) for ranking, or per
        history entity with ``pruning="history"``.
    pruning: whose K nearest are kept. ``"target"``: each target keeps its K most similar neighbours (classic
        kNN, LensKit's convention; user_knn's default). ``"history"``: each entity keeps the K targets it is most
        similar to, so a user's score sums at most K entries per item in their history (implicit's
        ItemItemRecommender convention; item_knn's default): popular items then no longer reach almost every
        target, which makes item–item scoring of large catalogues several times cheaper (docs/benchmarks/knn.md).
    alpha: asymmetry of the cosine ``a·b / (‖a‖^(2α) ‖b‖^(2(1−α)))`` between a target ``a`` and a neighbour
        ``b``; 0.5 is the symmetric cosine. For item–item, larger values penalise popular target items; for
        user–user, they penalise neighbours less for having long histories. No effect with ``"bm25"``.
    exponent: similarities are raised to this power (after pruning); > 1 sharpens the neighbourhood.
    weighting: ``"none"`` (cosine, like implicit's CosineRecommender), ``"tfidf"`` (tf-idf weights, then cosine,
        like TFIDFRecommender) or ``"bm25"`` (BM25 weights with BM25's own length normalisation and no cosine,
        like BM25Recommender: on binary data a cosine would cancel BM25's length norm and leave plain tf-idf).
    bm25_k1, bm25_b: BM25's saturation and length-normalisation parameters (BM25Recommender's defaults).
    shrinkage: added to the cosine denominator, damping similarities of rarely seen entities; must be
        0 with ``weighting="bm25"``, which has no cosine denominator.
    min_similarity: ranking similarities at or below this value are dropped.

    Rating prediction:

    similarity: ``"pearson_baseline"`` (correlation of baseline residuals), ``"pearson"`` or ``"cosine"`` (of
        raw ratings), each over co-rated features only, as in surprise.
    rating_neighbors: k, the most similar rated entities averaged per prediction (surprise's ``k``).
    min_neighbors: fewer positively similar neighbours than this → the prediction is the centre alone.
    min_support: entity pairs with fewer co-rated features get similarity 0.
    rating_shrinkage: similarities are multiplied by ``(n − 1) / (n − 1 + rating_shrinkage)`` for ``n``
        co-rated features (surprise's pearson_baseline shrinkage; 0 disables it).
    rating_candidates: keep only each entity's this-many most similar entities for prediction (bounds memory
        on large catalogues); ``None`` keeps every positive similarity, as surprise does, as long as all of them
        could not exceed :data:`RATING_ENTRY_BUDGET` (``n (n − 1)`` for ``n`` entities); beyond that, each
        entity's ``RATING_ENTRY_BUDGET // n`` most similar (at least ``rating_neighbors``).
    centering: ``"baseline"`` centres on ``μ + b_u + b_i`` (KNNBaseline), ``"mean"`` on the entity's mean
        rating (KNNWithMeans).
    baseline_epochs, baseline_reg_users, baseline_reg_items: the alternating fit of the biases ``b_u``, ``b_i``
        (surprise's ALS baseline defaults). The biases also answer for unknown users or items.
    clip: clip predictions into the range of the training ratings.
    """

    mode: Literal["implicit", "rating"] = "implicit"
    neighbors: int = 200
    pruning: Literal["target", "history"] = "history"
    alpha: float = 0.6
    exponent: float = 1.5
    weighting: Literal["none", "bm25", "tfidf"] = "none"
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    shrinkage: float = 0.0
    min_similarity: float = 0.0
    similarity: Literal["pearson", "cosine", "pearson_baseline"] = "pearson_baseline"
    rating_neighbors: int = 60
    min_neighbors: int = 1
    min_support: int = 1
    rating_shrinkage: float = 1000.0
    rating_candidates: int | None = None
    centering: Literal["baseline", "mean"] = "baseline"
    baseline_epochs: int = 10
    baseline_reg_users: float = 15.0
    baseline_reg_items: float = 10.0
    clip: bool = True

    def __post_init__(self) -> None:
        choices = {
            "mode": MODES,
            "pruning": PRUNINGS,
            "weighting": WEIGHTINGS,
            "similarity": RATING_SIMILARITIES,
            "centering": CENTERINGS,
        }
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field} must be one of {allowed}, got {getattr(self, field)!r}")
        for field in ("neighbors", "rating_neighbors", "min_neighbors"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be ≥ 1, got {getattr(self, field)}")
        non_negative = ("shrinkage", "min_similarity", "rating_shrinkage", "min_support", "baseline_epochs")
        for field in (*non_negative, "baseline_reg_users", "baseline_reg_items", "bm25_k1"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must be ≥ 0, got {getattr(self, field)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if self.exponent <= 0:
            raise ValueError(f"exponent must be > 0, got {self.exponent}")
        if not 0.0 <= self.bm25_b <= 1.0:
            raise ValueError(f"bm25_b must lie in [0, 1], got {self.bm25_b}")
        if self.weighting == "bm25" and self.shrinkage > 0:
            raise ValueError("shrinkage applies to the cosine denominator; weighting='bm25' has none: set shrinkage=0")
        if self.rating_candidates is not None and self.rating_candidates < 1:
            raise ValueError(f"rating_candidates must be ≥ 1 or None, got {self.rating_candidates}")

    @classmethod
    def rating_defaults(cls) -> Self:
        """The tuned rating-mode config (what the RMSE benchmark uses); every other field keeps its default."""
        return cls(mode="rating")


@dataclass
class RatingNeighbourhood:
    """The fitted rating predictor, oriented entity × feature (built by ``_fit_rating_model``).

    global_mean, user_bias, item_bias: the baseline ``μ + b_u + b_i``.
    entity_mean: each entity's mean training rating (the centre for ``centering="mean"``).
    similarity: entity × entity, positive similarities only (float32 CSR).
    residuals: feature × entity, ``r − centre`` for every training rating (rebuilt from the ratings on load).
    rating_range: lowest and highest training rating (for ``clip``).
    """

    global_mean: float
    user_bias: np.ndarray
    item_bias: np.ndarray
    entity_mean: np.ndarray
    similarity: sp.csr_matrix
    residuals: sp.csr_matrix
    rating_range: tuple[float, float]


class NeighbourhoodRecommender(Recommender):
    """Shared fit / score / predict of the item- and user-based models; ``user_based`` picks the orientation."""

    family = "collaborative_filtering"
    config_class: ClassVar[type[KNNConfig]] = KNNConfig
    config: KNNConfig
    predicts_ratings = True
    # The rating model is built on the first predict; its similarities are bounded, its ratings finite.
    probe_predictions = False
    #: True: entities are users (neighbours are similar users); False: entities are items.
    user_based: ClassVar[bool]

    @classmethod
    def _stored_config(cls, fields: dict[str, Any]) -> KNNConfig:
        # Files saved before ``pruning`` existed (2026-12-07) hold per-target similarities.
        return cls.config_class(**{"pruning": "target", **fields})

    # ---- orientation ------------------------------------------------------------------------------------
    def _entities_by_features(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """A users × items matrix turned entity × feature (CSR)."""
        return sp.csr_matrix(matrix) if self.user_based else sp.csr_matrix(matrix.T)

    def _entity_side(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(entity, feature) indices of (user, item) pairs."""
        return (users, items) if self.user_based else (items, users)

    # ---- training ---------------------------------------------------------------------------------------
    def _fit(self, data: Interactions, settings: RunSettings) -> None:
        cfg = self.config
        self.ratings_: sp.csr_matrix | None = None
        if data.rating is not None:
            self.ratings_ = sp.csr_matrix(data.ratings, dtype=np.float32)
            self.ratings_.sort_indices()
        if cfg.mode == "rating" and self.ratings_ is None:
            raise ValueError(
                f"{self.name}: mode='rating' needs ratings, but the training data has no rating column; "
                "use mode='implicit' for implicit feedback"
            )
        history = self.seen_ if cfg.mode == "implicit" else self.ratings_
        assert history is not None
        self.history_: sp.csr_matrix = history
        self.similarity_ = self._ranking_similarity(history, settings)
        self._refuse_empty_similarity(history)
        self.rating_model_: RatingNeighbourhood | None = None
        if cfg.mode == "rating":
            self.rating_model_ = self._fit_rating_model(settings)

    def _refuse_empty_similarity(self, history: sp.csr_matrix) -> None:
        """Fail when the data has co-occurrences but the settings dropped every similarity: every score would be 0
        and the lists the first items by index (``min_similarity=1.5``, ``exponent=1e6`` passed and published)."""
        if np.count_nonzero(self.similarity_.data):  # stored values can underflow to 0 (a huge exponent)
            return
        shared = (
            np.bincount(history.indices, minlength=history.shape[1]) if self.user_based else np.diff(history.indptr)
        )
        if shared.size and int(shared.max()) >= 2:
            cfg = self.config
            shared_what = "users share items" if self.user_based else "items share users"
            weighted = cfg.weighting != "none"
            raise ValueError(
                f"{self.name}: no similarity is left to rank by: {shared_what} in the data, but "
                + (f"weighting={cfg.weighting!r}, " if weighted else "")
                + f"min_similarity={cfg.min_similarity:g}, exponent={cfg.exponent:g} and shrinkage={cfg.shrinkage:g} "
                "dropped every one; "
                + (
                    # idf = log(n / (1 + df)) is 0 or less for what nearly every entity has: on a small catalogue,
                    # every weight.
                    f"{cfg.weighting} gives no weight to what nearly every entity has, all of it on small data: "
                    "use weighting='none', or "
                    if weighted
                    else ""
                )
                + "lower min_similarity (similarities are at most 1 unless BM25-weighted) or exponent"
            )

    def _ranking_similarity(self, history: sp.csr_matrix, settings: RunSettings) -> sp.csr_matrix:
        cfg = self.config
        vectors = weigh_rows(self._entities_by_features(history), cfg.weighting, cfg.bm25_k1, cfg.bm25_b)
        by_history = cfg.pruning == "history"
        # Pruned per history entity, the rows computed are neighbours and the columns targets, so the asymmetry
        # swaps sides (the neighbour's norm carries 1 − α); transposed back, rows are targets either way.
        similarity = cosine_topk(
            vectors,
            cfg.neighbors,
            cfg.shrinkage,
            cfg.min_similarity,
            settings,
            stage=f"{self.name} similarities",
            normalize=cfg.weighting != "bm25",
            alpha=1.0 - cfg.alpha if by_history else cfg.alpha,
            exponent=cfg.exponent,
        )
        if not by_history:
            return similarity
        by_target = similarity.T.tocsr()
        if not self.user_based:
            # The per-history rows are what item–item scoring wants (neighbour-major): kept, not transposed back.
            self._neighbour_rows = (by_target, similarity)
        return by_target

    def _fit_rating_model(self, settings: RunSettings | None = None) -> RatingNeighbourhood:
        if self.ratings_ is None:
            raise ValueError(
                f"{self.name} was fitted without ratings, so it cannot predict them; fit it on interactions "
                "with a rating column"
            )
        cfg = self.config
        ratings = self.ratings_
        mu, b_user, b_item = als_baselines(ratings, cfg.baseline_epochs, cfg.baseline_reg_users, cfg.baseline_reg_items)
        # pearson_baseline correlates baseline residuals; pearson and cosine work on the raw ratings.
        if cfg.similarity == "pearson_baseline":
            ratings = _with_data(ratings, _baseline_residuals(ratings, mu, b_user, b_item))
        values = self._entities_by_features(ratings)
        candidates = cfg.rating_candidates
        n = values.shape[0]
        if candidates is None and n * (n - 1) > RATING_ENTRY_BUDGET:
            candidates = max(cfg.rating_neighbors, RATING_ENTRY_BUDGET // n)
        similarity = rating_similarity(
            values,
            cfg.similarity,
            cfg.rating_shrinkage,
            cfg.min_support,
            candidates,
            settings,
            stage=f"{self.name} rating similarities",
        )
        return self._assemble_rating_model(mu, b_user, b_item, similarity)

    def _assemble_rating_model(
        self, mu: float, b_user: np.ndarray, b_item: np.ndarray, similarity: sp.csr_matrix
    ) -> RatingNeighbourhood:
        """The predictor from its learned parts; residuals and means are recomputed from ``ratings_``."""
        ratings = self.ratings_
        assert ratings is not None
        by_entity = self._entities_by_features(ratings)
        counts = np.diff(by_entity.indptr)
        sums = np.asarray(by_entity.sum(axis=1), dtype=np.float64).ravel()
        entity_mean = np.where(counts > 0, sums / np.maximum(counts, 1), mu)
        if self.config.centering == "baseline":
            centred = _with_data(ratings, _baseline_residuals(ratings, mu, b_user, b_item))
        else:
            coo = ratings.tocoo()
            entity = coo.row if self.user_based else coo.col
            centred = _with_data(ratings, coo.data - entity_mean[entity])
        # feature × entity: for each feature (user, for item–item), the entities that have it and their residuals.
        residuals = sp.csr_matrix(centred.T if self.user_based else centred)
        lo, hi = (float(ratings.data.min()), float(ratings.data.max())) if ratings.nnz else (mu, mu)
        return RatingNeighbourhood(mu, b_user, b_item, entity_mean, similarity, residuals, (lo, hi))

    # ---- scoring ----------------------------------------------------------------------------------------
    def _score_known(self, users: np.ndarray) -> np.ndarray:
        # similarity_ rows are targets: a user's neighbours (user–user) or an item's neighbours (item–item).
        if self.user_based:
            return np.asarray((self.similarity_[users] @ self.history_).toarray(), dtype=np.float32)
        light, hubs, hub_rows = self._neighbour_major()
        history = self.history_[users]
        if len(hubs):
            # A user has few of the hubs (~9 of 69 at 200k × 50k with per-target pruning), so the hub product takes
            # the user's hub entries as a sparse matrix times the dense hub rows (a CSR × dense product: one row
            # update per entry) rather than a dense GEMM that multiplies the zeros too.
            from recmodels.torch_utils import sparse_dense_product

            hub_history = history if len(hubs) == self.n_items_ else history[:, hubs]  # hubs are sorted
            scores = sparse_dense_product(hub_history, hub_rows)
        else:
            scores = np.zeros((len(users), self.n_items_), dtype=np.float32)
        if light.nnz:
            light.add_product(scores, history)
        return scores

    def _prepare_scoring(self) -> None:
        if not self.user_based:
            self._neighbour_major()

    def _neighbour_major(self) -> tuple[PackedRows, np.ndarray, np.ndarray]:
        """``similarity_.T`` (row ``n``: the targets that have ``n`` as a neighbour) split for fast scoring.

        Popular items are neighbours of almost every target (at 200k × 50k, 92 items with over 500 targets each
        carried 99 % of the scoring work), so their rows are kept dense and scored by one sparse × dense product
        (each user's hub entries times the dense rows), and only the rest is added entry by entry
        (:class:`~recmodels.knn.similarity.PackedRows`): 6× faster there than all of it sparse (with a dense GEMM
        for the hubs; the sparse × dense product halved that part again). With per-history pruning every row holds
        at most K targets and there are hubs only in small catalogues (ML-100K: all rows). Returns the sparse rest
        (hub rows empty) packed for :meth:`~recmodels.knn.similarity.PackedRows.add_product`, the hub items and
        their dense rows. A row is a hub when at least :data:`HUB_FILL` of it is filled, most filled first, up to
        :data:`~recmodels.knn.similarity.BLOCK_VALUES` dense values. Built once per fitted matrix.
        """
        source, parts = self.__dict__.get("_neighbour_major_parts", (None, None))
        if source is self.similarity_ and parts is not None:  # a refit or load replaces the matrix
            return parts
        by_target, by_neighbour = self.__dict__.pop("_neighbour_rows", (None, None))  # needed once only
        transposed = by_neighbour if by_target is self.similarity_ else self.similarity_.T.tocsr()
        n_targets = transposed.shape[1]
        filled = np.diff(transposed.indptr)
        by_fill = np.argsort(-filled, kind="stable")
        dense_enough = by_fill[filled[by_fill] >= HUB_FILL * max(n_targets, 1)]
        hubs = np.sort(dense_enough[: BLOCK_VALUES // max(n_targets, 1)])
        if len(hubs) == transposed.shape[0]:  # every row (small catalogues): no sparse rest to split off
            light = sp.csr_matrix(transposed.shape, dtype=np.float32)
            hub_rows = transposed.toarray().astype(np.float32, copy=False)
        else:
            keep = np.ones(transposed.shape[0], dtype=np.float32)
            keep[hubs] = 0.0
            light = sp.csr_matrix(sp.diags(keep) @ transposed)
            light.eliminate_zeros()
            hub_rows = transposed[hubs].toarray().astype(np.float32)
        parts = (PackedRows(light), hubs, hub_rows)
        self._neighbour_major_parts = (self.similarity_, parts)
        return parts

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Estimated ratings for (user, item) index pairs (float64); unknown sides fall back to the biases."""
        self._check_fitted()
        if self.rating_model_ is None:
            self.rating_model_ = self._fit_rating_model()
        model = self.rating_model_
        users = np.atleast_1d(np.asarray(users, dtype=np.int64))  # predict(0, 1) failed on item assignment
        items = np.atleast_1d(np.asarray(items, dtype=np.int64))
        if users.shape != items.shape:
            raise ValueError(f"users and items differ in length: {users.shape} vs {items.shape}")
        known_user = (users >= 0) & (users < self.n_users_)
        known_item = (items >= 0) & (items < self.n_items_)
        safe_users, safe_items = np.where(known_user, users, 0), np.where(known_item, items, 0)
        baseline = (
            model.global_mean
            + np.where(known_user, model.user_bias[safe_users], 0.0)
            + np.where(known_item, model.item_bias[safe_items], 0.0)
        )
        estimate = baseline.copy()
        both = known_user & known_item
        entity, feature = self._entity_side(users[both], items[both])
        terms, _ = neighbourhood_offsets(
            model.similarity, model.residuals, entity, feature, self.config.rating_neighbors, self.config.min_neighbors
        )
        centre = baseline[both] if self.config.centering == "baseline" else model.entity_mean[entity]
        estimate[both] = centre + terms
        if self.config.clip:
            np.clip(estimate, *model.rating_range, out=estimate)
        return estimate

    # ---- persistence ------------------------------------------------------------------------------------
    def _state(self) -> dict[str, np.ndarray]:
        state = csr_state("ranking", self.similarity_)
        if self.ratings_ is not None:
            state.update(csr_state("ratings", self.ratings_))
        if self.rating_model_ is not None:
            model = self.rating_model_
            state.update(csr_state("rating_similarity", model.similarity))
            state["global_mean"] = np.array(model.global_mean)
            state["user_bias"] = model.user_bias
            state["item_bias"] = model.item_bias
        return state

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        n_entities = self.n_users_ if self.user_based else self.n_items_
        self.similarity_ = csr_from_state(state, "ranking", (n_entities, n_entities))
        self.ratings_ = None
        if "ratings/data" in state:
            self.ratings_ = csr_from_state(state, "ratings", (self.n_users_, self.n_items_))
        self.history_ = self.seen_ if self.config.mode == "implicit" else self.ratings_
        self.rating_model_ = None
        if "global_mean" in state:
            self.rating_model_ = self._assemble_rating_model(
                float(state["global_mean"]),
                state["user_bias"],
                state["item_bias"],
                csr_from_state(state, "rating_similarity", (n_entities, n_entities)),
            )


def _baseline_residuals(ratings: sp.csr_matrix, mu: float, b_user: np.ndarray, b_item: np.ndarray) -> np.ndarray:
    """``r − (μ + b_u + b_i)`` for each stored rating, in the CSR's data order."""
    rows = np.repeat(np.arange(ratings.shape[0]), np.diff(ratings.indptr))
    return ratings.data - (mu + b_user[rows] + b_item[ratings.indices])


def _with_data(matrix: sp.csr_matrix, data: np.ndarray) -> sp.csr_matrix:
    """Same sparsity pattern as ``matrix`` (CSR), new values; explicit zeros are kept as entries."""
    return sp.csr_matrix((np.asarray(data, dtype=np.float64), matrix.indices, matrix.indptr), shape=matrix.shape)


@dataclass(frozen=True)
class ItemKNNConfig(KNNConfig):
    """Hyperparameters of :class:`ItemKNN`; every field is documented on :class:`KNNConfig`.

    Defaults were chosen on the validation slices (docs/benchmarks/knn.md): each item keeps the 200 targets it is
    most similar to (``pruning="history"``), α = 0.6, exponent 1.5, no weighting, no shrinkage; KNNBaseline-style
    prediction (baseline centring) with pearson_baseline similarity, shrinkage 1000 and k = 60 (RMSE is flat from
    shrinkage 100 upwards: 0.9253 → 0.9244).
    """


class ItemKNN(NeighbourhoodRecommender):
    """Item-based collaborative filtering: implicit cosine neighbourhoods, or classic kNN rating prediction."""

    name = "item_knn"
    training_cost = 1.8
    config_class = ItemKNNConfig
    config: ItemKNNConfig
    user_based = False
