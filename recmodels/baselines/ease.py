"""EASE: the closed-form item–item linear autoencoder of Steck (2019), "Embarrassingly Shallow Autoencoders".

With ``X`` the binary users × items matrix and ``λ`` the L2 weight, the item–item weights minimising
``‖X − X B‖² + λ‖B‖²`` subject to ``diag(B) = 0`` are

    P = (XᵀX + λI)⁻¹,    B = I − P · diag(1 / diag(P))    (i.e. B_ij = −P_ij / P_jj, B_jj = 0),

and a user's scores are ``x_u B``. There is no iteration and no randomness, so the fit is exact and
deterministic.

Memory: the Gram matrix, its inverse and ``B`` are dense ``n_items × n_items``. Fitting holds one float64
array (Gram matrix, Cholesky inverse and ``B`` computed in it, in place) plus the float32 ``B``: roughly
``12 · n_items²`` bytes, i.e. 34 MB for MovieLens 100K's 1,682 items, 1.2 GB for 10,000 items, 30 GB for 50,000.
``max_items`` refuses larger catalogues up front with a message pointing to sparse alternatives.

Recency weighting (optional, ``recency_half_life``): in a user's *scoring* history each event is weighted by
``0.5 ** (n_newer / half_life)``, where ``n_newer`` counts that user's events with a strictly later timestamp
(events sharing a timestamp get the same weight, so no tie order leaks in). ``B`` itself is learned from the
unweighted binary matrix. On MovieLens 100K's temporal holdout the most recent few events predict the next
ones much better than the whole history does (see docs/benchmarks/mf.md for the validation grid).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack, solve_triangular

from recmodels.base import ModelConfig, Recommender, RunSettings, csr_from_state, csr_state
from recmodels.data import Interactions

_BYTES_PER_ITEM_PAIR = 12  # one float64 n×n working matrix while fitting plus the float32 result
# Sparse entries per block of the Gram matrix's rows (12 bytes each): ~200 MB of product at a time.
_GRAM_BLOCK_VALUES = 1 << 24
# Rows per step of the blocked Cholesky factorisation (upper_cholesky): blocks of 2048 × n floats.
_CHOLESKY_BLOCK = 2048


@dataclass(frozen=True)
class EASEConfig(ModelConfig):
    """Hyperparameters of :class:`EASE`.

    regularization: λ, added to the diagonal of ``XᵀX``; larger values shrink ``B`` towards zero (Steck
        reports a few hundred for MovieLens-sized data; 1200 won the validation grid with recency weighting).
    recency_half_life: if set, weight each event of a user's scoring history by ``0.5 ** (n_newer / h)`` where
        ``n_newer`` is how many of that user's events are strictly newer; ``None`` scores with the plain
        binary history (textbook EASE). Needs timestamps; data without them is scored unweighted.
    max_items: refuse catalogues with more items than this, because ``B`` is dense (about
        ``12 · n_items²`` bytes while fitting; the default 20,000 items is about 4.8 GB).
    """

    regularization: float = 1200.0
    recency_half_life: float | None = 4.0
    max_items: int = 20_000

    def __post_init__(self) -> None:
        if not self.regularization > 0:
            raise ValueError(f"regularization must be > 0 (it keeps XᵀX + λI invertible), got {self.regularization}")
        if self.recency_half_life is not None and not self.recency_half_life > 0:
            raise ValueError(f"recency_half_life must be > 0 or None, got {self.recency_half_life}")
        if self.max_items < 1:
            raise ValueError(f"max_items must be ≥ 1, got {self.max_items}")


class EASE(Recommender):
    """Closed-form item–item linear model (EASE^R), optionally scoring with a recency-weighted history."""

    name = "ease"
    training_cost = 1.0
    family = "baseline"
    config_class = EASEConfig
    config: EASEConfig

    def _fit(self, data: Interactions, settings: RunSettings) -> None:
        n_items = data.n_items
        if n_items > self.config.max_items:
            gigabytes = _BYTES_PER_ITEM_PAIR * n_items**2 / 1e9
            raise ValueError(
                f"ease: the catalogue has {n_items:,} items, above max_items={self.config.max_items:,}; EASE "
                f"builds dense {n_items:,} × {n_items:,} matrices (about {gigabytes:,.1f} GB while fitting). "
                "Use 'item_knn' (sparse top-K neighbourhoods) or a factor model such as 'als' or 'pure_svd' "
                "instead, filter rare items first, or raise max_items if this machine has the memory."
            )
        # Reported block by block: at 20,000 items the solve takes minutes, and a report is also where an
        # interrupted run stops its fit (a progress callback that raises ends it there).
        try:
            self.weights_ = ease_weights(
                data.binary,
                self.config.regularization,
                progress=lambda stage, done: settings.report(f"ease {stage}", done),
            )
        except np.linalg.LinAlgError as exc:
            # XᵀX is only semi-definite (items bought by the same users are collinear): λ makes it invertible,
            # and one too small to survive rounding leaves it singular.
            raise ValueError(
                f"ease: regularization={self.config.regularization:g} is too small to make XᵀX + λI invertible on "
                f"this data ({exc}); use a larger one (the default is {EASEConfig().regularization:g})"
            ) from exc
        self.history_ = (
            recency_weighted(data, self.config.recency_half_life) if self.config.recency_half_life is not None else None
        )

    def _history(self, users: np.ndarray) -> sp.csr_matrix:
        return (self.history_ if self.history_ is not None else self.seen_)[users]

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return np.asarray(self._history(users) @ self.weights_, dtype=np.float32)

    def _state(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights_} | csr_state("h", self.history_)

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.weights_ = state["weights"]
        self.history_ = csr_from_state(state, "h", (self.n_users_, self.n_items_))


def ease_weights(
    matrix: sp.csr_matrix, regularization: float, progress: Callable[[str, float], None] | None = None
) -> np.ndarray:
    """The EASE item–item matrix ``B`` (float32, zero diagonal) for a users × items matrix and λ.

    One dense float64 ``n × n`` array does all the work in place (Gram matrix, Cholesky inverse, ``B``), and the
    float32 result is its only copy: about 12 bytes per item pair at the peak (:data:`_BYTES_PER_ITEM_PAIR`).
    ``progress(stage, fraction)`` hears "gram matrix" and then "inverse", each from 0 to 1 block by block.
    """
    report = progress or (lambda stage, done: None)
    report("gram matrix", 0.0)
    gram = upper_gram(matrix, progress=lambda done: report("gram matrix", done))
    gram[np.diag_indices_from(gram)] += regularization
    report("inverse", 0.0)
    precision = spd_inverse(gram, progress=lambda done: report("inverse", done))
    # B_ij = −P_ij / P_jj: divide every column j by its diagonal entry, then zero the diagonal (the
    # constraint).
    precision /= -np.diag(precision).copy()[np.newaxis, :]
    np.fill_diagonal(precision, 0.0)
    return precision.astype(np.float32)


def upper_gram(
    matrix: sp.csr_matrix, block_values: int | None = None, progress: Callable[[float], None] | None = None
) -> np.ndarray:
    """``XᵀX`` as a dense float64 array, only its upper triangle (diagonal included) filled in; the rest is garbage.

    Computed in blocks of item rows, each written straight into the result: a sparse ``XᵀX`` at once would
    hold up to ``n²`` entries at 12 bytes each (4.8 GB at 20,000 items) before its dense copy, and the lower
    triangle would be computed for nothing (Cholesky reads one triangle). Binary and count data give integer
    sums, exact in float64, so the result does not depend on the blocking. ``progress`` hears the share of the
    triangle done after each block.
    """
    x = sp.csr_matrix(matrix, dtype=np.float64)
    n_items = x.shape[1]
    item_rows = x.T.tocsr()  # items × users
    gram = np.empty((n_items, n_items), dtype=np.float64)
    block = max(1, (block_values or _GRAM_BLOCK_VALUES) // max(n_items, 1))
    for start in range(0, n_items, block):
        stop = min(start + block, n_items)
        # Rows start..stop of XᵀX, from column ``start`` on: the block's share of the upper triangle.
        gram[start:stop, start:] = (item_rows[start:stop] @ x[:, start:]).toarray()
        if progress is not None:
            progress(_triangle_share(n_items - stop, n_items, power=2))
    return gram


def _triangle_share(left: int, n: int, power: int) -> float:
    """The share of an ``n``-row triangular sweep done once ``left`` rows remain, its cost per row growing with the
    rows after it to ``power − 1``: the Gram matrix's upper triangle (power 2), a Cholesky factorisation (3)."""
    return 1.0 - (left / n) ** power if n else 1.0


def spd_inverse(
    matrix: np.ndarray, block: int | None = None, progress: Callable[[float], None] | None = None
) -> np.ndarray:
    """Inverse of a symmetric positive-definite float64 matrix via Cholesky, in place; returns ``matrix``.

    Only the upper triangle of ``matrix`` is read. It is overwritten by the Cholesky factor
    (:func:`upper_cholesky`), then by the inverse's upper triangle (LAPACK ``potri``), which is mirrored onto
    the lower one block by block: the peak is the matrix itself plus a few hundred MB of blocks. LAPACK works on
    Fortran-ordered arrays and f2py copies anything else first (an extra n×n); a C-ordered array is handed over
    transposed instead — the same memory, Fortran-ordered, its upper triangle now the lower one. Other layouts
    are copied to C order first. ``block``: rows per step of the factorisation (default
    :data:`_CHOLESKY_BLOCK`). ``progress`` hears the share of the arithmetic done: the factorisation is a third of
    it (n³/3 of n³ flops), LAPACK's inversion the rest.
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.dtype != np.float64:
        raise ValueError(f"spd_inverse needs a square float64 array, got {matrix.dtype} {matrix.shape}")
    work = matrix if matrix.flags.c_contiguous else np.ascontiguousarray(matrix)
    upper_cholesky(work, block, progress=None if progress is None else lambda done: progress(done / 3))
    # Uᵀ is the lower Cholesky factor of the Fortran-ordered transpose: potri inverts from it in place.
    inverse, info = lapack.dpotri(work.T, lower=True, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"inverse failed (LAPACK dpotri info={info})")
    if not np.shares_memory(inverse, work):  # f2py could not work in place (it always can on work.T)
        work[...] = inverse.T
    if work is not matrix:
        matrix[...] = work
    mirror_upper(matrix)
    if progress is not None:
        progress(1.0)
    return matrix


def upper_cholesky(
    matrix: np.ndarray, block: int | None = None, progress: Callable[[float], None] | None = None
) -> None:
    """Overwrite the upper triangle of a C-ordered SPD float64 array with ``U`` (``A = UᵀU``), ``block`` rows at a time.

    A right-looking blocked factorisation: LAPACK ``potrf`` on each diagonal block, a triangular solve for the
    block's row panel, and the trailing upper triangle updated by matrix products, column block by column
    block. The same arithmetic as LAPACK's own blocked ``potrf``, but every call works on at most ``block``
    rows: OpenBLAS 0.3.30's multi-threaded ``dpotrf`` crashes the process (SIGSEGV) from about 16,000 rows
    on (measured here: 15,000 worked, 16,000 and 20,000 crashed with 2 threads; one thread worked) — EASE's
    Gram matrix at a 20,000-item catalogue. The lower triangle is left as it was. ``progress`` hears the share of
    the factorisation's arithmetic done after each block.
    """
    n = matrix.shape[0]
    block = block or _CHOLESKY_BLOCK  # read at call time, so that tests can make blocks small
    for start in range(0, n, block):
        stop = min(start + block, n)
        factor, info = lapack.dpotrf(matrix[start:stop, start:stop].T, lower=True, clean=False)
        if info != 0:
            raise np.linalg.LinAlgError(
                f"matrix is not positive definite (LAPACK dpotrf info={info} at row {start + info - 1})"
            )
        diagonal = factor.T  # U_kk, upper; lower part of the copy is garbage, ignored below
        matrix[start:stop, start:stop] = diagonal
        if stop == n:
            break
        # Row panel: U_k,rest = U_kkᵀ⁻¹ A_k,rest.
        panel = solve_triangular(diagonal, matrix[start:stop, stop:], trans="T", lower=False, check_finite=False)
        matrix[start:stop, stop:] = panel
        # Trailing update of the upper triangle, A_rest,rest −= U_k,restᵀ U_k,rest, one column block at a time.
        for column in range(stop, n, block):
            end = min(column + block, n)
            matrix[stop:end, column:end] -= panel[:, : end - stop].T @ panel[:, column - stop : end - stop]
        if progress is not None:
            progress(_triangle_share(n - stop, n, power=3))


def mirror_upper(matrix: np.ndarray, block: int = 1024) -> None:
    """Copy the upper triangle of a square array onto its lower one, in place, ``block`` rows at a time."""
    n = matrix.shape[0]
    for start in range(0, n, block):
        stop = min(start + block, n)
        matrix[start:stop, :start] = matrix[:start, start:stop].T
        for row in range(start + 1, stop):  # the diagonal block, row by row: no index arrays
            matrix[row, start:row] = matrix[start:row, row]


def newer_event_counts(data: Interactions) -> np.ndarray:
    """Per event (aligned with ``data``): how many events of its user have a strictly later timestamp."""
    if data.timestamp is None:
        raise ValueError("newer_event_counts needs timestamps; these interactions carry none")
    # Dense ranks of the timestamps make a (user, time) key that fits int64 for any realistic data size.
    _, time_rank = np.unique(data.timestamp, return_inverse=True)
    key = data.user.astype(np.int64) * (len(data) + 1) + time_rank.astype(np.int64)
    order = np.argsort(key, kind="stable")
    key = key[order]
    user = data.user[order].astype(np.int64)
    # The first position holding a strictly larger key is the user's first strictly newer event.
    first_newer = np.searchsorted(key, key, side="right")
    user_end = np.cumsum(np.bincount(user, minlength=data.n_users))[user]
    counts = np.empty(len(order), dtype=np.int64)
    counts[order] = user_end - first_newer
    return counts


def recency_weighted(data: Interactions, half_life: float) -> sp.csr_matrix:
    """users × items CSR of ``0.5 ** (n_newer / half_life)`` per event; the binary matrix without timestamps.

    A repeated (user, item) pair keeps its largest (most recent) weight.
    """
    if data.timestamp is None:
        return data.binary.astype(np.float32)
    weights = 0.5 ** (newer_event_counts(data) / half_life)
    coo = sp.coo_matrix((weights.astype(np.float32), (data.user, data.item)), shape=(data.n_users, data.n_items))
    # max over duplicates: CSR conversion sums them, so take the maximum explicitly through a lexsort.
    order = np.lexsort((-coo.data, coo.col, coo.row))
    row, col, val = coo.row[order], coo.col[order], coo.data[order]
    first = np.ones(len(row), dtype=bool)
    first[1:] = (row[1:] != row[:-1]) | (col[1:] != col[:-1])
    return sp.csr_matrix((val[first], (row[first], col[first])), shape=(data.n_users, data.n_items))
