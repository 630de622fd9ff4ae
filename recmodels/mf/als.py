"""Implicit-feedback alternating least squares (Hu, Koren & Volinsky 2008), conjugate-gradient solver, in torch.

The model minimises, over user factors ``X`` and item factors ``Y``,

    Σ_{u,i} c_ui (p_ui − x_u·y_i)² + λ (Σ_u ‖x_u‖² + Σ_i ‖y_i‖²)

over *every* user–item pair: ``p_ui`` is 1 for observed pairs and 0 otherwise, ``c_ui`` is the confidence
(``1 + α·r_ui`` for observed pairs, 1 otherwise). Holding ``Y`` fixed, each user's factor solves
``(YᵀY + λI + Σ_{i∈I_u} (c_ui − 1) y_i y_iᵀ) x_u = Σ_{i∈I_u} c_ui y_i``. ``YᵀY`` is shared by all users, so a
matrix–vector product with the left-hand side costs ``O(f² + |I_u|·f)``; a few conjugate-gradient steps per
iteration, warm-started from the previous factors (Takács, Pilászy & Tikk 2011, as in implicit's CG ALS), replace
the ``O(|I_u|·f² + f³)`` exact solve. One iteration costs ``O(nnz·f + (n_users + n_items)·f²)``.

The CG steps run batched over users (then items) in torch, so the same code runs on CPU and CUDA. Rows are
processed in chunks of users with similar history lengths, padded to the chunk's longest history (padding is
masked out by zero weights): the gathered item factors of a chunk (``rows × length × f``) stay small enough for
the CPU cache, padding wastes little work, and each gathered block is reused by all CG steps of that chunk.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from recmodels.base import ModelConfig, Recommender, RunSettings
from recmodels.data import Interactions
from recmodels.torch_utils import dense_product, resolve_device, sparse_csr, torch_threads

__all__ = ["ALS", "ALSConfig", "RowPlan", "als_loss", "confidence_matrix", "conjugate_gradient_update"]

# Gathered-factor block per chunk, in float32 values (rows × padded length × factors). On CPU a block that stays
# in cache is re-read by every CG step at cache speed; on a GPU larger blocks mean fewer kernel launches.
_CPU_BLOCK_VALUES = 1 << 20
_CUDA_BLOCK_VALUES = 1 << 26
# A chunk's padded length is at most this factor (plus _PAD_SLACK) times its shortest history, which bounds the
# work wasted on padding.
_PAD_RATIO = 1.25
_PAD_SLACK = 4
# Below this padded length, batched matrix products lose to plain multiply-and-sum on CPU.
_BMM_MIN_LENGTH = 8
# Below this many observed pairs a CPU fit runs on one thread, whatever RunSettings.threads says: its products
# and CG chunks are too small for a second thread to pay for waking it. Fits on synthetic sets, 2 cores, one
# thread vs two (2026-12-07, `/tmp` script, three each, defaults / alpha 1): 56k pairs (ML-100K's shape) 17–19 vs
# 28–29 ms / 194–208 vs 279–297 ms; 105k pairs 26–28 vs 34 / 296–304 vs 329–335; 211k pairs 46–48 vs 43–45 /
# 483–486 vs 449–464; 689k pairs 135 vs 95–102 / 1,306–1,366 vs 1,121–1,166.
_THREADED_PAIRS = 150_000


@dataclass(frozen=True)
class ALSConfig(ModelConfig):
    """Hyperparameters of :class:`ALS`; defaults chosen on the validation slice (docs/benchmarks/als_bpr.md).

    factors: latent dimensions per user and item.
    iterations: alternating passes (users then items).
    regularization: λ, the L2 penalty on every factor vector (not scaled by history length, as in implicit).
    alpha: confidence slope: an observed pair gets ``c = 1 + alpha·r`` ("linear") or
        ``c = 1 + alpha·log(1 + r/epsilon)`` ("log"); unobserved pairs have ``c = 1``. ``alpha = 0`` weights
        observed and unobserved pairs alike (plain regularised least squares on the 0/1 matrix).
    confidence: "linear" or "log" scaling of ``r`` (Hu et al. §4).
    epsilon: the log scaling's ``ε``.
    use_ratings: take ``r`` from the ratings when the data has them (else ``r = 1`` for every observed pair).
    cg_steps: conjugate-gradient steps per row per half-iteration (implicit uses 3); unused when every confidence
        is 1 (alpha 0 on binary data), where each half-iteration is solved exactly.
    init_scale: initial factors are uniform on ``[0, init_scale)`` (implicit uses 0.01).
    """

    factors: int = 64
    iterations: int = 15
    regularization: float = 11.0
    alpha: float = 0.0
    confidence: str = "linear"
    epsilon: float = 1.0
    use_ratings: bool = False
    cg_steps: int = 3
    init_scale: float = 0.01

    def __post_init__(self) -> None:
        if self.factors < 1:
            raise ValueError(f"factors must be ≥ 1, got {self.factors}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be ≥ 1, got {self.iterations}")
        if self.regularization <= 0:
            # λ = 0 leaves YᵀY singular whenever a side has fewer rows with history than factors.
            raise ValueError(f"regularization must be > 0, got {self.regularization}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be ≥ 0 (confidence never below 1), got {self.alpha}")
        if self.confidence not in ("linear", "log"):
            raise ValueError(f"confidence must be 'linear' or 'log', got {self.confidence!r}")
        if self.epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {self.epsilon}")
        if self.cg_steps < 1:
            raise ValueError(f"cg_steps must be ≥ 1, got {self.cg_steps}")
        if self.init_scale <= 0:
            raise ValueError(f"init_scale must be > 0, got {self.init_scale}")


class ALS(Recommender):
    """Implicit ALS: ``score(u, i) = x_u · y_i`` with factors from weighted alternating least squares."""

    name = "als"
    training_cost = 0.6
    family = "matrix_factorization"
    threaded_scoring = True
    config_class = ALSConfig
    config: ALSConfig

    def _fit(self, data: Interactions, settings: RunSettings) -> None:
        device = resolve_device(settings.device)
        # The fit's count, put back afterwards as every model does (torch's setting is process-wide).
        with (
            torch_threads(settings.threads),
            torch_threads(1 if device.type == "cpu" and data.binary.nnz < _THREADED_PAIRS else None),
        ):
            self._train(data, settings, device)

    def _train(self, data: Interactions, settings: RunSettings, device: torch.device) -> None:
        cfg = self.config
        # Shares the sparsity arrays of data.binary (or data.ratings): only the confidences are new memory.
        conf = confidence_matrix(data, cfg.alpha, cfg.confidence, cfg.epsilon, cfg.use_ratings)
        block = _CUDA_BLOCK_VALUES if device.type == "cuda" else _CPU_BLOCK_VALUES
        user_plan = RowPlan.build(conf, cfg.factors, device, block)
        item_plan = RowPlan.build(conf.T.tocsr(), cfg.factors, device, block)
        del conf

        # numpy's generator makes the start identical on every device (torch's CPU and CUDA streams differ).
        rng = np.random.default_rng(settings.seed)
        start_x = rng.random((data.n_users, cfg.factors), dtype=np.float32)
        start_y = rng.random((data.n_items, cfg.factors), dtype=np.float32)
        start_x *= cfg.init_scale  # in place: no second copy of the largest arrays
        start_y *= cfg.init_scale
        x, y = torch.from_numpy(start_x).to(device), torch.from_numpy(start_y).to(device)
        # On CPU the CG chunks run on a pool of threads (one per torch thread), kept for the whole fit so that
        # the allocator's per-thread arenas are reused rather than multiplied.
        workers = (
            torch.get_num_threads() if device.type == "cpu" and not (user_plan.uniform and item_plan.uniform) else 1
        )
        with ThreadPoolExecutor(max_workers=workers) if workers > 1 else contextlib.nullcontext() as pool:
            for iteration in range(cfg.iterations):
                user_plan.update(x, y, cfg.regularization, cfg.cg_steps, pool)
                item_plan.update(y, x, cfg.regularization, cfg.cg_steps, pool)
                settings.report("als", (iteration + 1) / cfg.iterations)
        self.user_factors_ = x.cpu().numpy()
        self.item_factors_ = y.cpu().numpy()

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return dense_product(self.user_factors_[users], self.item_factors_.T)

    def _state(self) -> dict[str, np.ndarray]:
        return {"user_factors": self.user_factors_, "item_factors": self.item_factors_}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.user_factors_ = state["user_factors"].astype(np.float32, copy=False)
        self.item_factors_ = state["item_factors"].astype(np.float32, copy=False)


def confidence_matrix(
    data: Interactions,
    alpha: float,
    scaling: str = "linear",
    epsilon: float = 1.0,
    use_ratings: bool = False,
) -> sp.csr_matrix:
    """users × items CSR (float32) of the confidence ``c_ui`` of every observed pair (unobserved pairs: 1).

    ``r`` is the rating when ``use_ratings`` and the data has ratings, else 1; ``c = 1 + alpha·r`` ("linear") or
    ``1 + alpha·log(1 + r/epsilon)`` ("log"). The result shares its index arrays with ``data.binary`` (or
    ``data.ratings``); with ``alpha = 0`` on binary data it *is* ``data.binary``, which already holds 1 everywhere.
    """
    if scaling not in ("linear", "log"):
        raise ValueError(f"confidence scaling must be 'linear' or 'log', got {scaling!r}")
    base = data.ratings if use_ratings and data.rating is not None else data.binary
    if alpha == 0.0 and base is data.binary:
        return base  # every c is 1 and data.binary stores exactly that: no new memory at all
    values = base.data.astype(np.float32)  # a new array: the sparsity structure below is shared, not copied
    if use_ratings and data.rating is not None and (values < 0).any():
        raise ValueError(
            "als: use_ratings needs non-negative ratings to build confidences (found "
            f"{int((values < 0).sum())} negative values); shift the ratings or set use_ratings=False"
        )
    if scaling == "log":
        values /= epsilon
        np.log1p(values, out=values)
    values *= alpha  # in place: this array is as long as the data
    values += 1.0
    return sp.csr_matrix((values, base.indices, base.indptr), shape=base.shape, copy=False)


class RowPlan:
    """One side of the ALS problem (users, or items) laid out for batched updates.

    Rows are ordered by history length and cut into chunks of similar length; each chunk is solved as a padded
    ``(rows, length)`` block, padding masked out by zero weights. The plan keeps the CSR arrays it was built
    from (no copy on CPU). When every confidence is 1 it solves exactly instead (see :meth:`update`).
    """

    def __init__(
        self,
        order: torch.Tensor,
        indptr: torch.Tensor,
        indices: torch.Tensor,
        confidence: torch.Tensor,
        chunks: list[tuple[int, int, int]],
        n_cols: int,
        block_values: int = _CPU_BLOCK_VALUES,
    ) -> None:
        self.order = order  # row ids, shortest history first (int64)
        self.indptr = indptr  # CSR row pointers (int32 or int64, as scipy chose)
        self.indices = indices  # CSR column ids (same dtype as indptr)
        self.confidence = confidence  # c of each stored pair (float32)
        self.chunks = chunks  # (first, stop, padded length) in positions of ``order``
        self.n_cols = n_cols
        self.block_values = block_values  # float32 values per working block (chunks, sparse-product rows)
        self.uniform = bool((confidence == 1.0).all())

    @classmethod
    def build(cls, matrix: sp.csr_matrix, factors: int, device: torch.device, block_values: int) -> RowPlan:
        """Plan for updating the rows of ``matrix`` (rows × cols CSR of confidences) with ``factors`` dims."""
        if matrix.nnz == 0:
            raise ValueError("als: the confidence matrix has no stored pairs; there is nothing to fit")
        matrix = matrix.tocsr()
        counts = np.diff(matrix.indptr)
        order = np.argsort(counts, kind="stable")
        return cls(
            torch.from_numpy(order.astype(np.int64)).to(device),
            torch.from_numpy(matrix.indptr).to(device),
            torch.from_numpy(matrix.indices).to(device),
            torch.from_numpy(matrix.data.astype(np.float32, copy=False)).to(device),
            _chunk_bounds(counts[order], max(1, block_values // factors)),
            matrix.shape[1],
            block_values,
        )

    def update(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        regularization: float,
        steps: int,
        pool: ThreadPoolExecutor | None = None,
    ) -> None:
        """Overwrite each row factor in ``x`` by solving its least-squares system against fixed ``y``.

        In general: ``steps`` CG steps, warm-started from the current ``x``. When every confidence is 1 (alpha 0
        on binary data) all rows share the matrix ``YᵀY + λI``, so the exact solution costs less than CG: one
        sparse product ``Σ_{i∈I_u} y_i`` for all rows and one ``f × f`` factorization (``steps`` is unused).
        With a ``pool`` (CPU), the CG chunks run on its threads.
        """
        gram = y.T @ y
        gram.diagonal().add_(regularization)
        f = y.shape[1]
        if self.uniform:
            # x = (Σ y_i)·G⁻¹ for every row; G is SPD and λ > 0 keeps it well conditioned, so the explicit f × f
            # inverse is accurate, and multiplying into ``x`` in place needs no second rows × f buffer.
            try:
                inverse = torch.cholesky_inverse(torch.linalg.cholesky(gram))
            except torch.linalg.LinAlgError:
                # More factors than the other side has rows makes YᵀY singular, and a tiny λ is lost in float32.
                raise ValueError(
                    f"als: YᵀY + λI is not positive definite in float32 with regularization {regularization:g} and "
                    f"{f} factors over {y.shape[0]} rows; raise regularization or lower factors"
                ) from None
            step = max(1, self.block_values // f)  # row blocks keep the Σ y_i buffer small
            for first in range(0, x.shape[0], step):
                stop = min(first + step, x.shape[0])
                torch.mm(self._row_block(first, stop) @ y, inverse, out=x[first:stop])
            return
        if pool is None or len(self.chunks) < 2:
            for chunk in self.chunks:
                self._solve_chunk(chunk, x, y, gram, steps)
            return
        # Chunks are independent (each writes only its own rows of x), so they run on the pool's threads, each
        # a sequence of single-threaded torch ops (torch releases the GIL inside ops): parallelism over rows, as
        # in implicit, instead of over the inside of small ops, whose synchronisation cost more than it saved
        # (2 threads: 1.35× faster than 1 this way, 1.5× slower than 1 with intra-op threads on the scale set).
        # The result does not depend on the schedule.
        with torch_threads(1):
            for _ in pool.map(lambda chunk: self._solve_chunk(chunk, x, y, gram, steps), self.chunks):
                pass

    def _solve_chunk(
        self, chunk: tuple[int, int, int], x: torch.Tensor, y: torch.Tensor, gram: torch.Tensor, steps: int
    ) -> None:
        """CG-update the rows of one chunk in place."""
        first, stop, length = chunk
        f = y.shape[1]
        rows = self.order[first:stop]
        starts = self.indptr[rows]
        counts = self.indptr[rows + 1] - starts
        offsets = torch.arange(length, device=starts.device, dtype=starts.dtype)
        real = offsets[None, :] < counts[:, None]  # False on padding
        # Padding reads pair 0 (any valid pair): its weights are zeroed below, so it adds nothing.
        flat = torch.where(real, starts[:, None] + offsets[None, :], 0).reshape(-1)
        # index_select copies whole rows; plain ``y[idx]`` was ~4× slower for this gather on CPU.
        cols = torch.index_select(self.indices, 0, flat)
        gathered = torch.index_select(y, 0, cols).view(stop - first, length, f)  # (rows, length, f)
        conf = torch.index_select(self.confidence, 0, flat).view(stop - first, length) * real
        x[rows] = _cg_block(x[rows], gathered, conf, real, gram, steps)

    def _row_block(self, first: int, stop: int) -> torch.Tensor:
        """Rows ``[first, stop)`` as a sparse CSR tensor over views of the plan's arrays (no copy of the pairs)."""
        lo, hi = int(self.indptr[first]), int(self.indptr[stop])
        return sparse_csr(
            self.indptr[first : stop + 1] - lo,
            self.indices[lo:hi],
            self.confidence[lo:hi],
            size=(stop - first, self.n_cols),
        )


def _chunk_bounds(sorted_counts: np.ndarray, max_cells: int) -> list[tuple[int, int, int]]:
    """Cut rows sorted by history length into (first, stop, padded length) chunks of ≤ ``max_cells`` cells."""
    chunks = []
    n = len(sorted_counts)
    first = 0
    while first < n:
        shortest = int(sorted_counts[first])
        longest_allowed = int(shortest * _PAD_RATIO) + _PAD_SLACK
        stop_by_length = int(np.searchsorted(sorted_counts, longest_allowed, side="right"))
        # rows × padded length ≤ max_cells; the padded length is at most longest_allowed.
        length_bound = max(int(sorted_counts[min(stop_by_length, n) - 1]), 1)
        stop = min(stop_by_length, first + max(1, max_cells // length_bound))
        stop = max(stop, first + 1)
        chunks.append((first, stop, max(int(sorted_counts[stop - 1]), 1)))
        first = stop
    return chunks


def _dots(gathered: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(rows, length)``: each gathered factor dotted with its row's vector ``v[row]``."""
    if gathered.shape[1] < _BMM_MIN_LENGTH:
        return (gathered * v.unsqueeze(1)).sum(2)
    # (1 × f)·(f × length) per row; this orientation is ~8× faster on CPU than (length × f)·(f × 1).
    return torch.bmm(v.unsqueeze(1), gathered.transpose(1, 2)).squeeze(1)


def _weighted_sums(gathered: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(rows, f)``: Σ_j weights[row, j] · gathered[row, j]."""
    if gathered.shape[1] < _BMM_MIN_LENGTH:
        return (gathered * weights.unsqueeze(2)).sum(1)
    return torch.bmm(weights.unsqueeze(1), gathered).squeeze(1)


def _cg_block(
    x: torch.Tensor, gathered: torch.Tensor, conf: torch.Tensor, real: torch.Tensor, gram: torch.Tensor, steps: int
) -> torch.Tensor:
    """``steps`` CG steps on ``(G + Σ (c−1) y yᵀ) x = Σ c y`` for a padded block of rows; returns new ``x``.

    ``gathered`` is ``(rows, length, f)``: each row's item factors; ``conf`` ``(rows, length)`` their confidences
    (0 on padding); ``real`` marks the non-padding cells; ``gram`` is ``YᵀY + λI``.
    """
    extra = (conf - 1.0) * real  # c − 1: the weight of each observed pair beyond the shared YᵀY term

    # r = b − A x with b = Σ c y and A x = G x + Σ (c − 1)(y·x) y, in one pass: Σ (c − (c−1)(y·x)) y − G x.
    residual = _weighted_sums(gathered, conf - extra * _dots(gathered, x)) - x @ gram
    direction = residual.clone()
    rs_old = (residual * residual).sum(1)
    for _ in range(steps):
        # A p without forming the per-row f × f matrices.
        a_dir = direction @ gram + _weighted_sums(gathered, extra * _dots(gathered, direction))
        denom = (direction * a_dir).sum(1)
        # Rows that have converged (rs ≈ 0) take no step instead of dividing 0 by 0.
        active = rs_old > 1e-20
        step = torch.where(active, rs_old / denom.clamp_min(1e-30), torch.zeros_like(rs_old))
        x = x + step[:, None] * direction
        residual = residual - step[:, None] * a_dir
        rs_new = (residual * residual).sum(1)
        beta = torch.where(active, rs_new / rs_old.clamp_min(1e-30), torch.zeros_like(rs_old))
        direction = residual + beta[:, None] * direction
        rs_old = rs_new
    return x


def conjugate_gradient_update(
    confidence: sp.csr_matrix,
    x: torch.Tensor,
    y: torch.Tensor,
    regularization: float,
    steps: int,
    block_values: int = _CPU_BLOCK_VALUES,
) -> torch.Tensor:
    """One half-iteration: ``steps`` CG steps for every row of ``x`` against fixed ``y``; updates ``x`` in place.

    ``confidence`` is the rows × cols CSR of ``c`` for observed pairs. Returns ``x`` for convenience.
    """
    plan = RowPlan.build(confidence, y.shape[1], x.device, block_values)
    plan.update(x, y, regularization, steps)
    return x


def als_loss(
    confidence: sp.csr_matrix, user_factors: np.ndarray, item_factors: np.ndarray, regularization: float
) -> float:
    """The full objective ``Σ_{u,i} c_ui (p_ui − x_u·y_i)² + λ(‖X‖² + ‖Y‖²)`` over all pairs (float64).

    Unobserved pairs (c = 1, p = 0) contribute ``Σ (x·y)² = trace(XᵀX·YᵀY)``, corrected on the observed pairs,
    so this costs ``O(nnz·f + (n_users + n_items)·f²)`` rather than ``O(n_users·n_items·f)``.
    """
    x = np.asarray(user_factors, dtype=np.float64)
    y = np.asarray(item_factors, dtype=np.float64)
    coo = confidence.tocoo()
    pred = np.einsum("ij,ij->i", x[coo.row], y[coo.col])
    c = coo.data.astype(np.float64)
    observed = np.sum(c * (1.0 - pred) ** 2 - pred**2)
    everything = float(np.sum((x.T @ x) * (y.T @ y)))
    return float(observed + everything + regularization * (np.sum(x * x) + np.sum(y * y)))
