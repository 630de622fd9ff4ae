"""Every row's ridge problem in one ALS half-step of a biased factorisation of explicit ratings, and three
ways to solve them all at once (``biased_mf``; see its module doc for the model).

Row ``u`` (a user, or an item on the other half-step) solves ``(G_u + P_u) z = h_u`` for ``z = [p_u, b_u]``:
design rows ``a_i = [q_i, 1]`` from the other side, ``G_u = Σ_i w_ui a_i a_iᵀ``, penalties
``P_u = n_u · diag(λ, …, λ, λ_b)``. :func:`ridge_rows` builds the right-hand sides and penalties;
:func:`solve_exact` forms every ``G_u`` and solves by batched Cholesky, :func:`solve_cg` takes a few
conjugate-gradient steps without forming ``G_u``, and :func:`solve_shared_gram` handles the case where every
cell weighs the same and all rows share one Gram matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recmodels.mf.cells import CellPattern

_GRAM_VALUES = 8_000_000  # Gram-matrix values built at once (rows per chunk = this / (k+1)²)


@dataclass
class RidgeRows:
    """Every row's ridge system ``(G_u + P_u) z = h_u`` for one half-step (see :func:`ridge_rows`)."""

    design: np.ndarray  # (n_other, k+1) rows a_i = [q_i, 1]
    penalty: np.ndarray  # (n_rows, k+1) diagonal P_u = diag(reg) · max(n_u, 1)
    rhs: np.ndarray  # (n_rows, k+1) h_u
    observed_weight: float  # weight of an observed cell in G_u beyond the w every cell has: 1 − w
    dense_gram: np.ndarray | None  # w Σ_all a_i a_iᵀ, shared by every row (missing-aware fits only)


def ridge_rows(
    ratings: sp.csr_matrix,
    other_factors: np.ndarray,
    other_bias: np.ndarray,
    offset: float,
    regularization: float,
    bias_regularization: float,
    missing_rating: float,
    missing_weight: float,
) -> RidgeRows:
    """The ridge problem of every row's ``[factors, bias]`` given the other side's factors and biases.

    Row ``u`` solves ``(G_u + diag(reg) · n_u) z = h_u`` with design rows ``a_i = [q_i, 1]`` and targets
    ``y_ui = r_ui − offset − b_i``; unobserved cells (weight w, target ``missing_rating − offset − b_i``) add
    ``w Σ_all a_i a_iᵀ`` to ``G_u`` and are removed again for the observed cells, which carry weight 1
    instead.
    """
    k = other_factors.shape[1]
    design = np.hstack([other_factors, np.ones((len(other_factors), 1))])
    reg = np.append(np.full(k, regularization), bias_regularization)
    # max(n, 1) keeps a row without ratings (possible in a wider index space) well posed: it solves to 0.
    penalty = np.maximum(np.diff(ratings.indptr), 1)[:, np.newaxis] * reg[np.newaxis, :]
    # Observed targets, then (for missing-aware fits) the part the missing-cell term already counts removed.
    target = ratings.copy()
    target.data = ratings.data - offset - other_bias[ratings.indices]
    w = missing_weight
    dense_gram = None
    dense_rhs = np.zeros(k + 1)
    if w > 0:
        missing_target = missing_rating - offset - other_bias
        target.data -= w * missing_target[ratings.indices]
        dense_gram = w * (design.T @ design)
        dense_rhs = w * (design.T @ missing_target)
    return RidgeRows(design, penalty, np.asarray(target @ design) + dense_rhs, 1.0 - w, dense_gram)


def solve_exact(system: RidgeRows, ratings: sp.csr_matrix) -> np.ndarray:
    """Every row's exact ``z`` ``(n_rows, k+1)``: Gram matrices from ``ratings``' pattern, batched Cholesky."""
    design = system.design
    n_rows = ratings.shape[0]
    k = design.shape[1] - 1
    # Only the upper triangle of each outer product (Gram matrices are symmetric), in float32: the sparse
    # product below is the dominant cost, and float32 sums of at most a few thousand terms lose nothing that
    # matters to a ridge solve that is done in float64.
    upper_r, upper_c = np.triu_indices(k + 1)
    outer = (design[:, upper_r] * design[:, upper_c]).astype(np.float32)
    # Position of every (r, c) of a full (k+1)×(k+1) matrix in the upper-triangle list.
    full_from_upper = np.empty((k + 1, k + 1), dtype=np.int64)
    full_from_upper[upper_r, upper_c] = np.arange(len(upper_r))
    full_from_upper[upper_c, upper_r] = np.arange(len(upper_r))
    full_from_upper = full_from_upper.ravel()
    pattern = ratings.copy()
    pattern.data = np.ones(pattern.nnz, dtype=np.float32)
    solution = np.empty((n_rows, k + 1))
    chunk = max(1, _GRAM_VALUES // (k + 1) ** 2)
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        triangle = np.asarray(pattern[start:stop] @ outer, dtype=np.float64)
        gram = np.take(triangle, full_from_upper, axis=1)  # (rows, (k+1)²), both triangles filled
        gram *= system.observed_weight
        if system.dense_gram is not None:
            gram += system.dense_gram.ravel()
        gram[:, :: k + 2] += system.penalty[start:stop]
        gram = gram.reshape(stop - start, k + 1, k + 1)
        solution[start:stop] = batched_spd_solve(gram, system.rhs[start:stop])
    return solution


def solve_cg(system: RidgeRows, ratings: sp.csr_matrix, start: np.ndarray, steps: int) -> np.ndarray:
    """``steps`` conjugate-gradient steps on every row's problem from ``start`` ``(n_rows, k+1)``.

    All rows step together; ``α`` and ``β`` are per row. The Gram products ``G_u v_u`` never form ``G_u``:
    each observed cell of ``ratings`` contributes ``a_i (a_i · v_u)``, summed per row by one sparse × dense
    product. CG never raises a row's objective above its value at ``start``.
    """
    cells = CellPattern(ratings)
    # float32 for the per-cell dot products, the bulk of the memory traffic; sums and CG state stay float64.
    design32 = system.design.astype(np.float32)

    def gram_times(v: np.ndarray) -> np.ndarray:
        along = cells.dots(v.astype(np.float32), design32)
        out = cells.product(along.astype(np.float64) * system.observed_weight, system.design)
        if system.dense_gram is not None:
            out += v @ system.dense_gram
        out += system.penalty * v
        return out

    x = np.array(start, dtype=np.float64)
    residual = system.rhs - gram_times(x)
    direction = residual.copy()
    norm = np.einsum("bk,bk->b", residual, residual)
    tiny = np.finfo(np.float64).tiny  # a row already solved has a zero residual: α = β = 0, not 0 / 0
    for _ in range(steps):
        product = gram_times(direction)
        alpha = norm / np.maximum(np.einsum("bk,bk->b", direction, product), tiny)
        x += alpha[:, np.newaxis] * direction
        residual -= alpha[:, np.newaxis] * product
        new_norm = np.einsum("bk,bk->b", residual, residual)
        direction *= (new_norm / np.maximum(norm, tiny))[:, np.newaxis]
        direction += residual
        norm = new_norm
    return x


def solve_shared_gram(system: RidgeRows) -> np.ndarray:
    """Every row's exact ``z`` when every cell weighs the same (``missing_weight`` = 1, biased_mf's default
    ranking fit), so that ``system.dense_gram`` is every row's whole Gram matrix.

    Then all rows share ``G = Σ_all a_i a_iᵀ`` and differ only in their penalties
    ``n_u · diag(λ, …, λ, λ_b)`` = ``c_u I + d_u e eᵀ`` (``e`` the bias coordinate). One eigendecomposition
    ``G = V Λ Vᵀ`` gives ``(G + c_u I)⁻¹ = V (Λ + c_u)⁻¹ Vᵀ`` for every row, and Sherman–Morrison adds the
    rank-one bias term: ``O(k²)`` per row instead of a Cholesky factorisation.
    """
    if system.dense_gram is None or system.observed_weight != 0.0:
        raise ValueError("solve_shared_gram needs every cell weighted alike (missing_weight = 1)")
    k = system.design.shape[1] - 1
    eigenvalues, vectors = np.linalg.eigh(system.dense_gram)
    shift = system.penalty[:, :1]  # c_u = n_u λ
    bias_excess = system.penalty[:, k] - system.penalty[:, 0]  # d_u = n_u (λ_b − λ)
    # (G + c_u I)⁻¹ applied to h_u and to e, row by row, in the eigenbasis.
    inverse_diag = 1.0 / (eigenvalues[np.newaxis, :] + shift)
    solved = ((system.rhs @ vectors) * inverse_diag) @ vectors.T
    solved_e = (vectors[k][np.newaxis, :] * inverse_diag) @ vectors.T
    # Sherman–Morrison; its denominator 1 + d_u s_b ≥ min(1, λ_b / λ) > 0, as s_b ≤ 1 / c_u.
    scale = bias_excess * solved[:, k] / (1.0 + bias_excess * solved_e[:, k])
    return solved - scale[:, np.newaxis] * solved_e


def batched_spd_solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve ``gram[b] x[b] = rhs[b]`` for a stack of symmetric positive-definite matrices ``(B, n, n)``.

    A batched Cholesky factorisation, then forward and back substitution vectorised over the batch (``n``
    numpy steps each). ``numpy.linalg.solve`` does the same job but its per-matrix LU goes through threaded
    OpenBLAS calls that were 4–30× slower for n ≈ 100 on a busy 2-core machine; this also needs only
    SciPy-independent numpy (batched ``scipy.linalg.cho_solve`` needs SciPy ≥ 1.15).
    """
    lower = np.linalg.cholesky(gram)
    n = gram.shape[-1]
    y = np.empty_like(rhs)
    for j in range(n):  # L y = rhs
        y[:, j] = (rhs[:, j] - np.einsum("bk,bk->b", lower[:, j, :j], y[:, :j])) / lower[:, j, j]
    x = np.empty_like(rhs)
    for j in range(n - 1, -1, -1):  # Lᵀ x = y
        x[:, j] = (y[:, j] - np.einsum("bk,bk->b", lower[:, j + 1 :, j], x[:, j + 1 :])) / lower[:, j, j]
    return x
