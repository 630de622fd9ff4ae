"""PureSVD (Cremonesi, Koren & Turrin 2010): a truncated SVD of the interaction matrix, used for ranking.

With ``X ≈ U Σ Vᵀ`` the rank-``k`` SVD of the users × items matrix (missing entries are zeros — this is a
ranking model, not a rating predictor), a user's scores are the projection of their row onto the top item
factors: ``x_u V Vᵀ``. Only ``V`` (``n_items × k``) is stored; users are folded in from their history at
scoring time, so the scores of a user equal row ``u`` of the rank-``k`` reconstruction ``U Σ Vᵀ``.

Options: ``weighting="rating"`` factorises the rating values instead of 1s; ``popularity_exponent`` β scales
item column ``j`` by ``count_j^(−β)`` before the SVD (as in EigenRec, Nikolakopoulos et al. 2019), which
lets less popular items shape the factors; scores still project the unscaled history.

The sparse solver is ARPACK (``scipy.sparse.linalg.svds``) started from a vector drawn from the run seed, so
the factors are reproducible; on a matrix with ``min(users, items) ≤ k + 1`` a dense SVD is used, with
``min(users, items) − 1`` factors at most.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from recmodels.base import ModelConfig, Recommender, RunSettings, csr_from_state, csr_state
from recmodels.data import Interactions
from recmodels.torch_utils import dense_product

_WEIGHTINGS = ("binary", "rating")


@dataclass(frozen=True)
class PureSVDConfig(ModelConfig):
    """Hyperparameters of :class:`PureSVD`.

    factors: rank ``k`` of the truncated SVD (chosen on the ML-100K validation slice; see
        docs/benchmarks/mf.md). At most ``min(users, items) − 1`` are used: at the full rank of a
        random interaction matrix the SVD reproduces every history and leaves nothing to rank by.
    weighting: "binary" factorises 1 per interaction (the usual top-N setting); "rating" factorises the rating
        values (needs ratings).
    popularity_exponent: β ≥ 0; item columns are multiplied by ``count^(−β)`` before the SVD, so that popular
        items dominate the factors less. 0 is textbook PureSVD; 0.1 won the validation grid (by a hair).
    """

    factors: int = 20
    weighting: str = "binary"
    popularity_exponent: float = 0.1

    def __post_init__(self) -> None:
        if self.factors < 1:
            raise ValueError(f"factors must be ≥ 1, got {self.factors}")
        if self.weighting not in _WEIGHTINGS:
            raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {self.weighting!r}")
        if self.popularity_exponent < 0:
            raise ValueError(f"popularity_exponent must be ≥ 0, got {self.popularity_exponent}")


class PureSVD(Recommender):
    """Truncated-SVD ranking model: scores are the user's history projected on the top-``k`` item factors."""

    name = "pure_svd"
    training_cost = 0.5
    family = "matrix_factorization"
    threaded_scoring = True
    config_class = PureSVDConfig
    config: PureSVDConfig

    def _fit(self, data: Interactions, settings: RunSettings) -> None:
        if self.config.weighting == "rating" and data.rating is None:
            raise ValueError(
                "pure_svd: weighting='rating' needs ratings but these interactions have none; "
                "use weighting='binary' for implicit data"
            )
        settings.report("pure_svd factorisation", 0.0)
        self.history_ = data.ratings if self.config.weighting == "rating" else None
        matrix = (self.history_ if self.history_ is not None else data.binary).astype(np.float64)
        if self.config.popularity_exponent > 0:
            counts = np.maximum(data.item_counts, 1.0)
            matrix = matrix @ sp.diags(counts ** (-self.config.popularity_exponent))
        self.item_factors_ = truncated_item_factors(sp.csr_matrix(matrix), self.config.factors, settings.seed)
        settings.report("pure_svd factorisation", 1.0)

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        history = (self.history_ if self.history_ is not None else self.seen_)[users]
        return dense_product(np.asarray(history @ self.item_factors_), self.item_factors_.T).astype(
            np.float32, copy=False
        )

    def _state(self) -> dict[str, np.ndarray]:
        return {"item_factors": self.item_factors_} | csr_state("h", self.history_)

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.item_factors_ = state["item_factors"]
        self.history_ = csr_from_state(state, "h", (self.n_users_, self.n_items_))


def truncated_item_factors(matrix: sp.csr_matrix, k: int, seed: int) -> np.ndarray:
    """Right singular vectors ``V`` (``n_items × k'``, float32) of the top ``k'`` singular values.

    Columns are ordered by decreasing singular value. ``k'`` is below the number of non-empty rows and of non-empty
    columns (empty ones add nothing to the rank): a random interaction matrix has full rank, so at that many
    factors ``V Vᵀ`` projects onto the whole row space, reproduces every history, and each unseen item scores 0
    give or take rounding: the ranking was noise. Vectors of singular values that are float32 rounding
    (``matrix_rank``'s tolerance) are dropped too, as arbitrary. ARPACK runs while ``k < min(shape) − 1``; at
    ``min(shape) − 1`` the dense SVD is exact and cheap (the matrix is then tiny in one dimension).
    """
    n_rows, n_cols = matrix.shape
    active = min(int((np.diff(matrix.indptr) > 0).sum()), int(np.unique(matrix.indices).size))
    k = max(1, min(k, min(n_rows, n_cols) - 1, active - 1))
    if k < min(n_rows, n_cols) - 1:
        v0 = np.random.default_rng(seed).standard_normal(min(n_rows, n_cols))
        _, values, vt = svds(matrix, k=k, v0=v0, solver="arpack")
        order = np.argsort(-values, kind="stable")
        values, vt = values[order], vt[order]
    else:
        _, values, vt = np.linalg.svd(matrix.toarray(), full_matrices=False)
        values, vt = values[:k], vt[:k]
    # Ratings are float32: below this tolerance a singular value is that rounding (matrix_rank's rule).
    tolerance = (values[0] if len(values) else 0.0) * max(n_rows, n_cols) * np.finfo(np.float32).eps
    kept = max(1, int((values > tolerance).sum()))
    return np.ascontiguousarray(vt[:kept].T, dtype=np.float32)
