"""Biased matrix factorisation ("Funk SVD") for explicit ratings, fitted by alternating least squares.

The rating model is ``r̂_ui = μ + b_u + b_i + p_u · q_i`` fitted to the *observed* ratings only, minimising

    J = Σ_(u,i) observed (r_ui − r̂_ui)² + Σ_u n_u (λ‖p_u‖² + λ_b b_u²) + Σ_i n_i (λ‖q_i‖² + λ_b b_i²),

with ``n_u`` / ``n_i`` the rating counts (regularisation that grows with the data, as in ALS-WR, Zhou et al.
2008). Each half-step improves every user's (then every item's) ridge problem for ``[p_u, b_u]`` — solving it
or taking conjugate-gradient steps on it — so ``J`` never increases; ``loss_history_`` records it per epoch. Two
solvers (in :mod:`recmodels.mf.ridge`), both batched over all rows (no Python loop over users or ratings):

- ``solver="cg"`` (default): a few conjugate-gradient steps per row, started from the row's current solution
  (Takács, Pilászy & Tikk 2011; implicit's ALS does the same). Each step needs one product of every row's
  Gram matrix with a vector, ``Σ_i a_i (a_i · v)`` over the row's ratings (``a_i = [q_i, 1]``): a gather, a
  row-wise dot product and one sparse × dense product, about ``2 · n_ratings · (k+1)`` multiply-adds. CG never
  raises a row's ridge objective above its starting value, so ``J`` still never increases; the solution is
  not exact, which costs nothing measurable on ML-100K (validation RMSE 0.9186 either way, docs/benchmarks/mf.md).
- ``solver="exact"``: the per-row Gram matrices are one sparse × dense product of the rating pattern with the
  upper triangles of the items' outer products, then one batched Cholesky solve. About
  ``n_ratings · (k+1)² / 2`` multiply-adds per half-step plus ``n_rows · (k+1)³ / 3`` for the factorisations;
  memory: the other side's outer products, ``max(n_users, n_items) · (k+1)(k+2)/2`` float32.

Ranking. Ranking by predicted rating is poor for top-N (it favours obscure items that few but enthusiastic
users rated: NDCG@10 0.001 on ML-100K). With ``rank_by="missing_aware"`` (the default) a second factorisation
of the same form ranks items: it also sees every *unobserved* cell as a weak rating ``missing_rating`` with
weight ``missing_weight`` (Steck 2010, "Training and testing of recommender systems on data missing not at
random"), so that what users choose to rate shapes the scores. ``predict`` always uses the observed-only
rating model. With ``missing_weight`` = 1 (the default) every cell weighs the same, all rows share one Gram
matrix, and that fit is solved exactly by one eigendecomposition per half-step whatever ``solver`` says.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recmodels.base import ModelConfig, Recommender, RunSettings
from recmodels.data import Interactions
from recmodels.mf.ridge import ridge_rows, solve_cg, solve_exact, solve_shared_gram
from recmodels.torch_utils import dense_product

_RANK_BY = ("missing_aware", "rating")
_SOLVERS = ("cg", "exact")


@dataclass(frozen=True)
class BiasedMFConfig(ModelConfig):
    """Hyperparameters of :class:`BiasedMF` (defaults chosen on the ML-100K validation slices).

    factors: latent dimensions ``k``.
    regularization: λ on the factors, per rating of the user or item (ALS-WR scaling).
    bias_regularization: λ_b on the user and item biases, per rating.
    epochs: ALS sweeps (one user half-step and one item half-step each); ALS converges in a few.
    init_scale: standard deviation of the random normal initial factors (drawn from the run seed).
    rank_by: "missing_aware" ranks with a second fit that also weighs unobserved cells (see the module doc);
        "rating" ranks by the predicted rating itself (cheaper, poor for top-N).
    missing_weight: weight of each unobserved cell in the missing-aware fit (1 = as much as a rating).
    missing_rating: the value unobserved cells are pulled towards in the missing-aware fit.
    solver: "cg" (conjugate-gradient steps from the previous epoch's solution, the default) or "exact"
        (a Cholesky solve of every row's ridge system; about 2× slower at k = 50, more as k grows).
    cg_steps: conjugate-gradient steps per row and half-step (solver "cg" only).
    """

    factors: int = 50
    regularization: float = 0.14
    bias_regularization: float = 0.02
    epochs: int = 10
    init_scale: float = 0.1
    rank_by: str = "missing_aware"
    missing_weight: float = 1.0
    missing_rating: float = 0.0
    solver: str = "cg"
    cg_steps: int = 3

    def __post_init__(self) -> None:
        if self.factors < 1:
            raise ValueError(f"factors must be ≥ 1, got {self.factors}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be ≥ 1, got {self.epochs}")
        # Positive penalties keep every ridge system positive definite (solved by Cholesky).
        for field in ("regularization", "bias_regularization"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{field} must be > 0, got {getattr(self, field)}")
        if self.init_scale <= 0:  # zero factors are a fixed point of ALS: a biases-only model, silently
            raise ValueError(f"init_scale must be > 0, got {self.init_scale}")
        if self.rank_by not in _RANK_BY:
            raise ValueError(f"rank_by must be one of {_RANK_BY}, got {self.rank_by!r}")
        if self.solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {_SOLVERS}, got {self.solver!r}")
        if self.cg_steps < 1:
            raise ValueError(f"cg_steps must be ≥ 1, got {self.cg_steps}")
        if not 0 < self.missing_weight <= 1:
            raise ValueError(f"missing_weight must lie in (0, 1], got {self.missing_weight}")


@dataclass
class FactorModel:
    """``offset + user_bias[u] + item_bias[i] + user_factors[u] · item_factors[i]`` (float64 arrays)."""

    offset: float
    user_bias: np.ndarray
    item_bias: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray

    def pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Values for aligned index arrays, all in range."""
        dots = np.einsum("ij,ij->i", self.user_factors[users], self.item_factors[items])
        return self.offset + self.user_bias[users] + self.item_bias[items] + dots

    def rows(self, users: np.ndarray) -> np.ndarray:
        """Dense ``(len(users), n_items)`` values."""
        out = dense_product(self.user_factors[users], self.item_factors.T)
        out += self.item_bias[np.newaxis, :]
        out += (self.offset + self.user_bias[users])[:, np.newaxis]
        return out

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}offset": np.array(self.offset),
            f"{prefix}user_bias": self.user_bias,
            f"{prefix}item_bias": self.item_bias,
            f"{prefix}user_factors": self.user_factors,
            f"{prefix}item_factors": self.item_factors,
        }

    @classmethod
    def from_arrays(cls, state: dict[str, np.ndarray], prefix: str) -> FactorModel:
        return cls(
            float(state[f"{prefix}offset"]),
            state[f"{prefix}user_bias"],
            state[f"{prefix}item_bias"],
            state[f"{prefix}user_factors"],
            state[f"{prefix}item_factors"],
        )


class BiasedMF(Recommender):
    """Biased MF rating predictor (ALS); ranks with a missing-aware fit of the same form by default."""

    name = "biased_mf"
    training_cost = 2.9
    family = "matrix_factorization"
    threaded_scoring = True
    config_class = BiasedMFConfig
    config: BiasedMFConfig
    predicts_ratings = True
    requires_ratings = True

    def _fit(self, data: Interactions, settings: RunSettings) -> None:
        ratings = data.ratings.astype(np.float64)
        self.rating_range_ = np.array([ratings.data.min(), ratings.data.max()], dtype=np.float64)
        self.loss_history_: list[float] = []
        self.model_ = fit_biased_mf(
            ratings,
            self.config,
            settings,
            missing_weight=0.0,
            stage="biased_mf ratings",
            losses=self.loss_history_,
        )
        self.ranker_ = (
            fit_biased_mf(ratings, self.config, settings, self.config.missing_weight, stage="biased_mf ranking")
            if self.config.rank_by == "missing_aware"
            else None
        )

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return (self.ranker_ or self.model_).rows(users).astype(np.float32)

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings, clipped to the training rating range; unknown users/items drop their terms."""
        self._check_fitted()
        return predict_pairs(self.model_, users, items, self.rating_range_)

    def _state(self) -> dict[str, np.ndarray]:
        state = self.model_.arrays("rating/") | {"rating_range": self.rating_range_}
        if self.ranker_ is not None:
            state |= self.ranker_.arrays("ranking/")
        return state

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.model_ = FactorModel.from_arrays(state, "rating/")
        self.rating_range_ = state["rating_range"]
        self.ranker_ = FactorModel.from_arrays(state, "ranking/") if "ranking/offset" in state else None
        self.loss_history_ = []


def predict_pairs(model: FactorModel, users: np.ndarray, items: np.ndarray, rating_range: np.ndarray) -> np.ndarray:
    """``model`` at (user, item) pairs; an unknown index (−1 or out of range) drops its bias and the dot
    product.

    So a new user gets ``μ + b_i``, a new item ``μ + b_u``, both unknown ``μ``. Clipped to ``rating_range``.
    """
    users = np.atleast_1d(np.asarray(users, dtype=np.int64))  # one pair as scalars: an array of one, as elsewhere
    items = np.atleast_1d(np.asarray(items, dtype=np.int64))
    if users.shape != items.shape:
        raise ValueError(f"users and items differ in length: {users.shape} vs {items.shape}")
    known_u = (users >= 0) & (users < len(model.user_bias))
    known_i = (items >= 0) & (items < len(model.item_bias))
    out = np.full(users.shape, model.offset, dtype=np.float64)
    out[known_u] += model.user_bias[users[known_u]]
    out[known_i] += model.item_bias[items[known_i]]
    both = known_u & known_i
    out[both] += np.einsum("ij,ij->i", model.user_factors[users[both]], model.item_factors[items[both]])
    return np.clip(out, rating_range[0], rating_range[1])


def fit_biased_mf(
    ratings: sp.csr_matrix,
    config: BiasedMFConfig,
    settings: RunSettings,
    missing_weight: float,
    stage: str,
    losses: list[float] | None = None,
) -> FactorModel:
    """ALS for ``μ + b_u + b_i + p_u·q_i`` on the observed cells of ``ratings`` (float64 CSR, users × items).

    With ``missing_weight`` w > 0 every unobserved cell also counts, as rating ``config.missing_rating`` with
    weight w; the offset is then the weighted mean over all cells. ``losses`` (observed-only fits) receives
    the objective ``J`` after every epoch.
    """
    n_users, n_items = ratings.shape
    k = config.factors
    by_item = ratings.T.tocsr()
    n_observed = ratings.nnz
    offset = float(ratings.data.mean())
    if missing_weight > 0:
        n_missing = n_users * n_items - n_observed
        weighted = ratings.data.sum() + missing_weight * config.missing_rating * n_missing
        offset = float(weighted / (n_observed + missing_weight * n_missing))
    rng = np.random.default_rng(settings.seed)
    model = FactorModel(
        offset,
        np.zeros(n_users),
        np.zeros(n_items),
        rng.normal(0.0, config.init_scale, (n_users, k)),
        rng.normal(0.0, config.init_scale, (n_items, k)),
    )
    for epoch in range(config.epochs):
        model.user_factors, model.user_bias = _update_side(
            ratings, model.item_factors, model.item_bias, offset, config, missing_weight,
            model.user_factors, model.user_bias,
        )  # fmt: skip
        model.item_factors, model.item_bias = _update_side(
            by_item, model.user_factors, model.user_bias, offset, config, missing_weight,
            model.item_factors, model.item_bias,
        )  # fmt: skip
        if losses is not None:
            losses.append(objective(model, ratings, config))
        settings.report(stage, (epoch + 1) / config.epochs)
    return model


def _update_side(
    ratings: sp.csr_matrix,
    other_factors: np.ndarray,
    other_bias: np.ndarray,
    offset: float,
    config: BiasedMFConfig,
    missing_weight: float,
    factors: np.ndarray,
    bias: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One half-step: every row's new ``[factors, bias]`` given the other side's (current ones start CG)."""
    system = ridge_rows(
        ratings, other_factors, other_bias, offset, config.regularization, config.bias_regularization,
        config.missing_rating, missing_weight,
    )  # fmt: skip
    if missing_weight == 1.0:
        solution = solve_shared_gram(system)  # exact and cheaper than either solver
    elif config.solver == "cg":
        solution = solve_cg(system, ratings, np.hstack([factors, bias[:, np.newaxis]]), config.cg_steps)
    else:
        solution = solve_exact(system, ratings)
    k = other_factors.shape[1]
    return solution[:, :k].copy(), solution[:, k].copy()


def objective(model: FactorModel, ratings: sp.csr_matrix, config: BiasedMFConfig) -> float:
    """``J`` of the module docstring for an observed-only fit (squared error plus count-scaled penalties)."""
    coo = ratings.tocoo()
    error = coo.data - model.pairs(coo.row, coo.col)
    n_u = np.diff(ratings.indptr)
    n_i = np.bincount(ratings.indices, minlength=ratings.shape[1])
    penalty = sum(
        float(np.sum(n * (config.regularization * np.sum(f**2, axis=1) + config.bias_regularization * b**2)))
        for n, f, b in (
            (n_u, model.user_factors, model.user_bias),
            (n_i, model.item_factors, model.item_bias),
        )
    )
    return float(np.sum(error**2) + penalty)
