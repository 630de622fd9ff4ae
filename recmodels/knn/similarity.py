"""Shared maths of the neighbourhood models (``item_knn``, ``user_knn``).

Everything here is oriented by *entities* (the side whose similarities are computed: items for item–item, users
for user–user) and their *features* (the other side). All functions take scipy CSR matrices, work block by block
over entities so that memory stays bounded by a budget of dense values, and contain no Python loop over
(entity, entity) or (user, item) pairs.

- :func:`weigh_rows` — ``"none"`` / ``"tfidf"`` / ``"bm25"`` re-weighting of an entity × feature matrix, with the
  formulas of implicit's ``tfidf_weight`` / ``bm25_weight``.
- :func:`cosine_topk` — (asymmetric, shrunk, sharpened) cosine similarity pruned to each entity's top-K.
- :func:`rating_similarity` — surprise-style similarities over co-rated features: ``"cosine"``, ``"pearson"``
  and ``"pearson_baseline"`` (on baseline residuals, shrunk by ``(n − 1) / (n − 1 + λ)``), with a minimum support.
- :func:`als_baselines` — global mean plus user and item biases by alternating regularised means (surprise's
  ``baseline_als``).
- :func:`neighbourhood_offsets` — for many (entity, feature) pairs at once, the similarity-weighted mean residual
  over the ``k`` most similar entities that have the feature (the neighbourhood term of a kNN rating prediction).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal

import numpy as np
import scipy.sparse as sp

from recmodels.base import RunSettings, damped_mean, worker_threads

if TYPE_CHECKING:
    import torch

try:  # scipy's C++ sparse × sparse kernel and densifier (private; see _block_product, add_sparse)
    from scipy.sparse._sparsetools import csr_matmat as _csr_matmat
    from scipy.sparse._sparsetools import csr_todense as _csr_todense
except ImportError:  # pragma: no cover - another scipy layout: the public functions are used
    _csr_matmat = _csr_todense = None

Weighting = Literal["none", "bm25", "tfidf"]
RatingSimilarity = Literal["pearson", "cosine", "pearson_baseline"]

WEIGHTINGS: tuple[str, ...] = ("none", "bm25", "tfidf")
RATING_SIMILARITIES: tuple[str, ...] = ("pearson", "cosine", "pearson_baseline")

#: One block's pruned similarities as COO parts: (rows, cols, values).
_Part = tuple[np.ndarray, np.ndarray, np.ndarray]

# Dense work budget per block, in values: block_rows × n_entities × (dense arrays alive at once) stays under this
# (16 M float64 values ≈ 128 MB), whatever the catalogue size.
BLOCK_VALUES = 16_000_000
# A sparse block product (cosine_topk) sizes its output buffers by the block's dense bound, but only stored entries
# touch memory (~13 % of the bound at 200k × 50k), so its blocks get 4× the dense budget: 4× fewer blocks and
# per-block steps in the top-K (the fit 8–14 % faster there, the same peak memory).
SPARSE_BLOCK_VALUES = 4 * BLOCK_VALUES
# Neighbourhood aggregation handles at most this many (pair, candidate neighbour) elements at once.
_ELEMENT_BUDGET = 1_000_000
#: :class:`SimilarityLookup` densifies a matrix with at most this many cells per stored entry: a float32 cell takes
#: 4 bytes, an entry's search key and float64 value 16.
_DENSE_CELLS_PER_ENTRY = 4
# cosine_topk and rating_similarity compute a block's products densely (all entities' sparse rows × the block's
# dense feature columns) instead of sparse × sparse when Σ_f n_f² (the sparse product's multiply-adds, n_f =
# entities with feature f) exceeds this fraction of nnz × n (the dense product's). Where popular features are
# shared by most entities (user–user at 200k users × 20k items: Σ n_f² = 1.9·10¹¹, nnz·n = 1.8·10¹²) nearly every
# pair is stored, and the sparse kernel's scattered accumulation and per-entry output, normalisation and top-K
# cost ~2.3× the dense path's time; where features are narrow (item–item there: 9.2·10⁸ against 1.8·10¹¹) the
# sparse product is ~10× faster. Measured shapes on both sides of 0.05: docs/benchmarks/knn.md.
_DENSE_PRODUCT_RATIO = 0.05
# Fewest target rows per dense block: each block reads the whole sparse neighbour matrix once, so narrow blocks
# repeat that read too often.
_DENSE_MIN_BLOCK_ROWS = 64
# Values of the dense path's normalisation denominators computed at once.
_DENOMINATOR_VALUES = 1_000_000
# "auto" chooses by _DENSE_PRODUCT_RATIO; tests force either path.
_PRODUCT_PATH: Literal["auto", "sparse", "dense"] = "auto"
# The top-K selection first cuts rows of at least this many × (K + 2) stored entries down to their candidates
# (:func:`_top_candidates`), judged on that many × (K + 2) chunk maxima per row.
_WIDE_ROW_FACTOR = 4


def _block_rows(n_entities: int, arrays: int, budget: int | None = None) -> int:
    """Rows per block so that ``arrays`` ``rows × n_entities`` arrays fit in ``budget`` values
    (:data:`BLOCK_VALUES` by default)."""
    budget = BLOCK_VALUES if budget is None else budget
    return max(1, min(n_entities, budget // max(1, n_entities * arrays)))


def _block_product_parts(
    left: sp.csr_matrix, right: sp.csr_matrix, slack: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``left @ right`` for a block of rows as CSR arrays ``(indptr, indices, data)``, column indices unsorted
    within rows; ``data`` goes on for at least ``slack`` values after the last entry (unspecified values), so
    that a window of that length from any entry stays inside it.

    Sparse × sparse: at ML-100K's 5 % density this beats dense BLAS by 2–3× on the benchmark machine, and it
    needs no dense copy of the whole matrix. ``right`` must be CSR: scipy converts any other format to CSR on
    every call, which cost 70 % of each block at 200k × 50k. The block is small, so its product has at most
    ``rows × columns`` entries: the output buffers are sized by that bound (pages are only touched as entries
    are written) and scipy's multiplication kernel runs alone, without the counting pass ``@`` makes first (a
    third of the product's time at 200k × 50k). If that internal kernel ever changes, plain ``@`` takes over.
    """
    rows, cols = left.shape[0], right.shape[1]
    bound = rows * cols
    dtype = np.result_type(left.dtype, right.dtype)
    if _csr_matmat is not None and bound > 0:
        index = np.int32 if max(bound, left.nnz, right.nnz, cols) < np.iinfo(np.int32).max else np.int64
        indptr = np.empty(rows + 1, dtype=index)
        indices = np.empty(bound, dtype=index)
        data = np.empty(bound + slack, dtype=dtype)
        try:
            _csr_matmat(
                rows,
                cols,
                left.indptr.astype(index, copy=False),
                left.indices.astype(index, copy=False),
                left.data.astype(dtype, copy=False),
                right.indptr.astype(index, copy=False),
                right.indices.astype(index, copy=False),
                right.data.astype(dtype, copy=False),
                indptr,
                indices,
                data[:bound],
            )
        except (TypeError, ValueError):
            pass
        else:
            return indptr, indices, data
    product = sp.csr_matrix(left @ right)
    return product.indptr, product.indices, np.concatenate([product.data, np.zeros(slack, dtype=product.dtype)])


def _block_product(left: sp.csr_matrix, right: sp.csr_matrix) -> np.ndarray:
    """Dense ``left @ right`` for a block of rows (see :func:`_block_product_parts`)."""
    indptr, indices, data = _block_product_parts(left, right)
    nnz = int(indptr[-1])
    return sp.csr_matrix((data[:nnz], indices[:nnz], indptr), shape=(left.shape[0], right.shape[1])).toarray()


def add_sparse(dense: np.ndarray, matrix: sp.csr_matrix) -> None:
    """``dense += matrix`` in place, touching only ``matrix``'s stored entries (repeated ones add up).

    scipy's densifier adds into the array it is given (``toarray(out=…)`` zeroes it first, so it is called
    directly), which saves a zero-filled temporary as large as ``dense`` and a pass adding it.
    """
    if matrix.shape != dense.shape:
        raise ValueError(f"matrix has shape {matrix.shape}, dense has {dense.shape}")
    if _csr_todense is not None and dense.flags.c_contiguous and dense.dtype == matrix.dtype:
        try:
            _csr_todense(*matrix.shape, matrix.indptr, matrix.indices, matrix.data, dense)
        except (TypeError, ValueError):
            pass
        else:
            return
    dense += matrix.toarray()


#: Expanded entries :meth:`PackedRows.add_product` gathers at once (~28 bytes each while gathered: 14 MB). Was 4M:
#: item_knn K = 50 on ML-100K, two batches of ~2M entries on two threads, ranked in 17.8–19.5 ms (medians of 10,
#: with outliers to 80 ms: temporaries that large came fresh from the kernel), 14.0–15.1 ms with 1M and 10.5–11.5
#: ms with 500k (2026-12-07). Item_knn's batches at 200,000 × 50,000 hold ~180k entries: one group either way.
EXPAND_ENTRIES = 500_000


class PackedRows:
    """A sparse matrix ``right`` prepared for adding ``left @ right`` into dense arrays (:meth:`add_product`).

    Each stored entry is one int64, its column in the low 32 bits and its float32 value's bits above, so the rows
    a product needs come out of one gather (torch's ``index_select``); scipy's densifier then adds them into the
    dense array in order. For item_knn's top-10 at 200,000 × 50,000 (no hub rows, ~2,250 expanded entries per user)
    that took 0.15 s where scipy's sparse × sparse product written out dense took 0.30 s (125 batches of 80 users,
    one thread): the product makes two passes over the same entries and a sparse result to densify.
    """

    def __init__(self, right: sp.csr_matrix) -> None:
        right = sp.csr_matrix(right, dtype=np.float32)
        self.shape: tuple[int, int] = right.shape
        self.nnz = right.nnz
        self.indptr = right.indptr.astype(np.int64)
        columns = right.indices.astype(np.int64)
        self.packed = columns | (right.data.view(np.uint32).astype(np.int64) << 32)

    def add_product(self, dense: np.ndarray, left: sp.csr_matrix) -> None:
        """``dense += left @ right`` for a float32, C-contiguous ``dense`` of ``left.shape[0]`` rows.

        Rows are expanded a group at a time, at most :data:`EXPAND_ENTRIES` entries per group (or one row).
        Entries of ``left`` scale their row of ``right``; all-ones rows (binary histories) skip the product.
        """
        if dense.shape != (left.shape[0], self.shape[1]) or left.shape[1] != self.shape[0]:
            raise ValueError(f"left {left.shape} @ right {self.shape} does not fit dense {dense.shape}")
        left = sp.csr_matrix(left)
        lengths = self.indptr[left.indices + 1] - self.indptr[left.indices]
        ends = np.concatenate(([0], np.cumsum(lengths)))
        row_ends = ends[left.indptr]  # expanded entries before each row
        n_rows = left.shape[0]
        first = 0
        while first < n_rows:
            last = int(np.searchsorted(row_ends, row_ends[first] + EXPAND_ENTRIES, side="right")) - 1
            last = min(max(last, first + 1), n_rows)
            self._add_rows(dense[first:last], left, first, last, lengths, ends)
            first = last

    def _add_rows(
        self, dense: np.ndarray, left: sp.csr_matrix, first: int, last: int, lengths: np.ndarray, ends: np.ndarray
    ) -> None:
        import torch

        lo, hi = int(left.indptr[first]), int(left.indptr[last])
        total = int(ends[hi] - ends[lo])
        if total == 0:
            return
        # One index type for the positions and the CSR assembled below (scipy wants its indices and offsets alike):
        # int32 where every position, offset and column fits, the rule of torch_utils.csr_index_type.
        index_type = np.int32 if max(self.nnz, total, *dense.shape) < np.iinfo(np.int32).max else np.int64
        run_lengths = lengths[lo:hi]
        # positions in ``packed``: one run of consecutive positions per entry of ``left``
        run_offsets = self.indptr[left.indices[lo:hi]] - (ends[lo:hi] - ends[lo])
        positions = np.repeat(run_offsets.astype(index_type), run_lengths)
        positions += np.arange(total, dtype=index_type)
        gathered = torch.from_numpy(self.packed).index_select(0, torch.from_numpy(positions)).numpy()
        columns = (gathered & 0xFFFFFFFF).astype(index_type)
        values = (gathered >> 32).astype(np.uint32).view(np.float32)
        weights = left.data[lo:hi]
        if not (weights == 1).all():
            values *= np.repeat(weights.astype(np.float32), run_lengths)
        indptr = (ends[left.indptr[first : last + 1]] - ends[lo]).astype(index_type)
        add_sparse(dense, sp.csr_matrix((values, columns, indptr), shape=dense.shape, copy=False))


def _block_workers(settings: RunSettings | None) -> int:
    """Blocks computed at once (at most 8): scipy's sparse products release the GIL, so threads use every core
    (:func:`~recmodels.base.worker_threads` of ``RunSettings.threads``)."""
    return min(worker_threads(settings.threads if settings is not None else None), 8)


def _map_blocks(
    compute: Callable[[int, int], _Part],
    n: int,
    block: int,
    settings: RunSettings | None,
    stage: str,
) -> list[_Part]:
    """``compute(start, stop)`` for every block of ``n`` rows, in threads, returned in block order.

    Only the running calls hold dense blocks (at most one per worker); finished ones return their pruned parts,
    sorted by row and column there, so that :func:`_assemble` only concatenates them.
    """
    bounds = [(start, min(start + block, n)) for start in range(0, n, block)]
    workers = min(_block_workers(settings), len(bounds))
    parts = []
    # torch's topk inside ``compute`` follows torch's process-wide thread count: hold it to the run's setting.
    from recmodels.torch_utils import torch_threads

    with (
        torch_threads(settings.threads if settings is not None else None),
        ThreadPoolExecutor(max_workers=workers) if workers > 1 else contextlib.nullcontext() as pool,
    ):
        run = map if pool is None else pool.map  # one worker: no thread at all
        results = run(lambda bound: _row_major(compute(*bound)), bounds)
        for (_, stop), part in zip(bounds, results, strict=True):
            parts.append(part)
            if settings is not None:
                settings.report(stage, stop / n)
    return parts


def weigh_rows(matrix: sp.csr_matrix, weighting: str, bm25_k1: float = 1.2, bm25_b: float = 0.75) -> sp.csr_matrix:
    """Re-weight an entity × feature matrix (rows are the "documents", columns the "terms"); float32 CSR.

    ``"tfidf"``: ``sqrt(x) · idf_f`` with ``idf_f = log(n_rows) − log(1 + rows containing f)``, so a feature
    shared by many entities (a heavy user, for item–item) counts less. ``"bm25"``: ``x (k1 + 1) / (k1 · L_e + x)
    · idf_f`` with the length norm ``L_e = 1 − b + b · |e| / mean |e|``, which also damps long rows. ``"none"``
    returns the values unchanged. These are implicit's ``tfidf_weight`` and ``bm25_weight`` formulas.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting == "none" or matrix.nnz == 0:
        return sp.csr_matrix(matrix, dtype=np.float32)  # shares the arrays when already float32 CSR: never mutated
    out = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    n_rows = out.shape[0]
    idf = np.log(n_rows) - np.log1p(np.bincount(out.indices, minlength=out.shape[1]))
    rows = np.repeat(np.arange(n_rows), np.diff(out.indptr))
    if weighting == "tfidf":
        out.data = np.sqrt(out.data) * idf[out.indices]
    else:
        lengths = np.asarray(out.sum(axis=1)).ravel()
        length_norm = (1.0 - bm25_b) + bm25_b * lengths / max(lengths.mean(), 1e-12)
        out.data = out.data * (bm25_k1 + 1.0) / (bm25_k1 * length_norm[rows] + out.data) * idf[out.indices]
    return out.astype(np.float32)


#: torch's CPU ``topk`` keeps a heap per row while ``k · 64`` is at most the row's width and otherwise selects with
#: ``nth_element`` per row; there numpy's ``argpartition`` (a SIMD select on x86) is the faster of the two.
_HEAP_WIDTH_PER_K = 64


def _top_of_rows(block: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``n`` largest values and their columns (int64), in no order; ties at the n-th value broken any way.

    ``block`` is 2-D with at least ``n`` columns. Where ``n`` is a large share of the width (above torch's heap
    limit) numpy's ``argpartition`` picks them, on one thread: on item_knn's ML-100K block (1,611 × 1,611, n = 201,
    39 % zeros) 10.5 ms against torch's 16.8 ms on one thread (8.5 ms on two; :func:`_cosine_topk_dense` runs a
    block per worker instead). Below the limit torch's heap is faster (1.1–2.7× numpy at 160–800 rows × 10,000–
    50,000 columns, n = 21–201, in a sweep on a loaded machine), and it stays there.
    """
    width = block.shape[1]
    if n * _HEAP_WIDTH_PER_K > width:
        columns = np.argpartition(block, width - n, axis=1)[:, width - n :]
        return _row_gather(block, columns), columns
    import torch

    values_t, columns_t = torch.topk(torch.from_numpy(block), n, dim=1, largest=True, sorted=False)
    return values_t.numpy(), columns_t.numpy().astype(np.int64)


def _row_gather(block: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``np.take_along_axis(block, columns, axis=1)`` for a 2-D ``block``, by one ``take`` of flat positions: half
    the time at 1,611 × 201 of 1,611 × 1,611 (1.8 against 3.8 ms, on a loaded machine)."""
    block = np.ascontiguousarray(block)
    return np.take(block.reshape(-1), columns + (np.arange(block.shape[0]) * block.shape[1])[:, None])


def _keep_top(block: np.ndarray, start: int, keep: int, threshold: float) -> _Part:
    """COO parts (rows, cols, values) of each row's ``keep`` largest values above ``threshold``.

    Among values tied at a row's cut-off the lower columns are kept, so the result depends only on the values.
    :func:`_top_of_rows` picks the candidates (torch's ``topk`` is an order of magnitude faster than ``argpartition``
    on a 160 × 50,000 block); the few rows where a tie above ``threshold`` straddles the cut-off are redone exactly.
    """
    n_rows, n_cols = block.shape
    if keep < n_cols:
        block = np.ascontiguousarray(block)
        # One more than needed: the extra (the smallest of them) tells whether a tie straddles the cut-off
        # without another pass over the block.
        values, top = _top_of_rows(block, keep + 1)
        extra = values.argmin(axis=1)
        next_value = values[np.arange(n_rows), extra][:, None]
        kept = np.ones(values.shape, dtype=bool)
        kept[np.arange(n_rows), extra] = False
        values, top = values[kept].reshape(n_rows, keep), top[kept].reshape(n_rows, keep)
        kth = values.min(axis=1, keepdims=True)
        straddling = np.flatnonzero((kth[:, 0] > threshold) & (next_value[:, 0] == kth[:, 0]))
        if len(straddling):
            top[straddling], values[straddling] = _lowest_columns_first(
                block[straddling], kth[straddling], top[straddling], values[straddling]
            )
        top, values = _columns_ascending(top, values)
    else:
        top = np.broadcast_to(np.arange(n_cols), (n_rows, n_cols))
        values = block
    mask = values > threshold
    rows = np.repeat(np.arange(start, start + n_rows), mask.sum(axis=1))
    return rows, top[mask], values[mask]  # row-major, as :func:`_row_major` wants it


def _columns_ascending(columns: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``columns`` (int64, distinct within each row) and ``values`` of a ``rows × k`` top-k, reordered by column
    within each row. For float32 values one in-place sort of a packed key per row (column above, the value's bits
    below): 0.65 ms for 1,611 × 200 where a sort of all the part's entries by (row, column) took 4.5 ms (both on a
    loaded machine)."""
    if values.dtype == np.float32:
        key = columns << 32
        key |= np.ascontiguousarray(values).view(np.uint32)
        key.sort(axis=1)
        return key >> 32, (key & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
    order = np.argsort(columns, axis=1)
    return _row_gather(columns, order), _row_gather(values, order)


def _lowest_columns_first(
    rows: np.ndarray, kth: np.ndarray, top: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Repair a top-k whose cut-off value ``kth`` (``(n, 1)``) is shared by more columns than it kept.

    ``top`` / ``values`` hold some top-k of ``rows``: every column above ``kth`` plus an arbitrary choice among
    those equal to it. Keeps the former and refills with the lowest columns equal to ``kth``.
    """
    n, keep = top.shape
    above = values > kth
    needed = keep - above.sum(axis=1)
    tied_row, tied_col = np.nonzero(rows == kth)  # row-major: each row's tied columns in ascending order
    first_of_row = np.searchsorted(tied_row, np.arange(n))
    wanted = (np.arange(len(tied_row)) - first_of_row[tied_row]) < needed[tied_row]
    # Per row: the kept columns above kth, then the needed tied ones (all rows have exactly ``keep``).
    cols = np.concatenate([top[above], tied_col[wanted]])
    owner = np.concatenate([np.nonzero(above)[0], tied_row[wanted]])
    cols = cols[np.argsort(owner, kind="stable")].reshape(n, keep)
    return cols, _row_gather(rows, cols)


def _top_candidates(
    indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, need: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same CSR rows with only the entries that can matter to each row's ``need`` largest values: every entry
    of a row at or above its ``need``-th largest value stays, ties included, so any top-``need`` choice and any
    look-up of the values tied at its cut-off give the same answer on the result.

    A row of at least ``_WIDE_ROW_FACTOR × need`` entries is split into ``_WIDE_ROW_FACTOR × need`` chunks; the
    ``need``-th largest chunk maximum is a bound that at least ``need`` entries reach, so it is at most the row's
    ``need``-th largest value, and only entries at or above it stay (at 200k × 50k items, K = 50: 6 % of the
    entries, ~7 × ``need`` per row). That costs one maximum per chunk and one comparison per entry instead of
    copying whole rows (thousands of entries each there) for torch's top-k: the top-K of 40 blocks took 0.76 s
    instead of 1.23 s on one thread. Shorter rows are kept whole.
    """
    counts = np.diff(indptr).astype(np.int64)
    chunks = _WIDE_ROW_FACTOR * need
    wide = np.flatnonzero(counts >= chunks)
    if not len(wide):
        return indptr, indices, values
    nnz = int(indptr[-1])
    # Chunk k of a wide row spans [first + ⌊k·count / chunks⌋, first + ⌊(k + 1)·count / chunks⌋): never empty.
    # The row's end closes its last chunk (reduceat would otherwise run on into the next row); that extra
    # "chunk" is dropped, and the array is padded so that an end at ``nnz`` is a valid index.
    starts = indptr[wide].astype(np.int64)[:, None] + np.arange(chunks + 1) * counts[wide, None] // chunks
    padded = values if len(values) > nnz else np.concatenate([values[:nnz], np.zeros(1, dtype=values.dtype)])
    maxima = np.maximum.reduceat(padded, starts.ravel()).reshape(len(wide), chunks + 1)[:, :chunks]
    bound = np.full(len(counts), -np.inf, dtype=values.dtype)
    bound[wide] = np.partition(maxima, chunks - need, axis=1)[:, chunks - need]
    entries = np.flatnonzero(values[:nnz] >= np.repeat(bound, counts))
    row_of_entry = np.searchsorted(indptr, entries, side="right") - 1
    new_indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_of_entry, minlength=len(counts)), out=new_indptr[1:])
    return new_indptr, indices[entries], values[entries]


def _keep_top_csr(
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    start: int,
    keep: int,
    threshold: float,
    numbering: tuple[np.ndarray, np.ndarray] | None = None,
) -> _Part:
    """COO parts of each row's ``keep`` largest values above ``threshold`` in a block of CSR rows, leaving out
    column ``start + row`` (an entity is not its own neighbour); ``threshold`` ≥ 0, so entries not stored never
    qualify.

    The same choice as :func:`_keep_top` on the dense block, ties at the cut-off going to the lower columns, but
    it only reads the stored entries: at 200k × 50k the item–item products are ~13 % filled, and the dense pass
    (densify, top-k over every column, tie look-ups) had cost as much as the product itself. Rows are copied in
    one gather each into rectangles per size class (widths within 2× of each other, so the padding is at most the
    entries themselves), torch's ``topk`` takes ``keep + 2`` per row — room for the row's own entry and one more
    to tell whether a tie straddles the cut-off — and everything else (the diagonal, the threshold, ties) is
    decided on those few candidates. Only rows with a straddling tie go back to their tied entries.
    ``values`` may be longer than ``indptr[-1]``; what lies beyond is never used. When the product's columns are
    numbered in another order than the entities, ``numbering`` is ``(entity of each column index, column index
    of each entity)``: the diagonal, the tie order and the returned columns are then in entities.
    """
    n_rows = len(indptr) - 1
    indptr, indices, values = _top_candidates(indptr, indices, values, keep + 2)
    counts = np.diff(indptr).astype(np.int64)
    first = indptr[:-1].astype(np.int64)
    own = np.arange(start, start + n_rows)  # each row's own entity, as a column index
    column_entities: np.ndarray | None = None
    if numbering is not None:
        column_entities, own = numbering[0], numbering[1][own]

    def entity_of(columns: np.ndarray) -> np.ndarray:
        return columns if column_entities is None else column_entities[columns]

    chosen_rows: list[np.ndarray] = []
    chosen_entries: list[np.ndarray] = []
    small = np.flatnonzero((counts > 0) & (counts <= keep))  # keep everything (but the diagonal)
    if len(small):
        lengths = counts[small]
        entry = np.arange(int(lengths.sum())) + np.repeat(first[small] - (np.cumsum(lengths) - lengths), lengths)
        chosen_rows.append(np.repeat(small, lengths))
        chosen_entries.append(entry)
    big = np.flatnonzero(counts > keep)
    if len(big):
        need = keep + 2
        size_class = np.ceil(np.log2(counts[big])).astype(np.int64)
        longest = int(max(counts[big].max(), need))
        if len(values) < int(indptr[-1]) + longest:  # every row's window must lie inside the array
            values = np.concatenate([values[: int(indptr[-1])], np.zeros(longest, dtype=values.dtype)])
        windows = np.lib.stride_tricks.sliding_window_view(values, longest)
        for size in np.unique(size_class):
            members = big[size_class == size]
            m, width = len(members), int(max(counts[members].max(), need))
            slot = np.arange(width)
            padded = windows[first[members], :width]  # one copy: row r's entries, then its successors'
            outside = slot[None, :] >= counts[members, None]
            padded[outside] = -np.inf
            top_values, top_slots = _top_of_rows(padded, need)
            top_entries = first[members, None] + top_slots
            # Drop the row's own entry if it is among the candidates, else the smallest candidate: what remains
            # is a top-(keep + 1) of the row without the diagonal (ties at its end in any order).
            is_own = (indices[np.where(top_slots < counts[members, None], top_entries, 0)] == own[members, None]) & (
                top_slots < counts[members, None]
            )
            drop = np.where(is_own.any(axis=1), is_own.argmax(axis=1), top_values.argmin(axis=1))
            kept = np.ones(top_values.shape, dtype=bool)
            kept[np.arange(m), drop] = False
            top_values = top_values[kept].reshape(m, keep + 1)
            top_entries = top_entries[kept].reshape(m, keep + 1)
            extra = top_values.argmin(axis=1)  # the one just below the cut-off
            next_value = top_values[np.arange(m), extra]
            kept = np.ones(top_values.shape, dtype=bool)
            kept[np.arange(m), extra] = False
            top_values = top_values[kept].reshape(m, keep)
            top_entries = top_entries[kept].reshape(m, keep)
            kth = top_values.min(axis=1)
            straddling = (next_value == kth) & (kth > threshold)
            plain = ~straddling
            chosen_rows.append(np.repeat(members[plain], keep))
            chosen_entries.append(top_entries[plain].ravel())
            if straddling.any():
                # Entries above the cut-off all stay; the rest of each row is its lowest tied columns.
                s_members, s_kth = members[straddling], kth[straddling, None]
                above = top_values[straddling] > s_kth
                chosen_rows.append(np.repeat(s_members, above.sum(axis=1)))
                chosen_entries.append(top_entries[straddling][above])
                needed = keep - above.sum(axis=1)
                tied_row, tied_slot = np.nonzero((padded[straddling] == s_kth) & ~outside[straddling])
                tied_entry = first[s_members[tied_row]] + tied_slot
                not_own = indices[tied_entry] != own[s_members[tied_row]]
                tied_row, tied_entry = tied_row[not_own], tied_entry[not_own]
                order = np.lexsort((entity_of(indices[tied_entry]), tied_row))
                tied_row, tied_entry = tied_row[order], tied_entry[order]
                rank = np.arange(len(tied_row)) - np.searchsorted(tied_row, tied_row)
                wanted = rank < needed[tied_row]
                chosen_rows.append(s_members[tied_row[wanted]])
                chosen_entries.append(tied_entry[wanted])
    if not chosen_entries:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0, dtype=values.dtype)
    rows = np.concatenate(chosen_rows)
    entries = np.concatenate(chosen_entries)
    cols = entity_of(indices[entries]).astype(np.int64)
    vals = values[entries]
    good = (vals > threshold) & (cols != rows + start)
    return rows[good] + start, cols[good], vals[good]


def _row_major(part: _Part) -> _Part:
    """``part`` sorted by row, then column (each (row, column) at most once)."""
    rows, cols, vals = part
    key = (rows.astype(np.int64) << 32) | cols.astype(np.int64)
    if (key[1:] > key[:-1]).all():  # :func:`_keep_top`'s parts come sorted
        return part
    # One sort of the combined key: ~9× faster than ``lexsort`` over the two columns.
    order = np.argsort(key)
    return rows[order], cols[order], vals[order]


def _assemble(parts: list[_Part], n: int) -> sp.csr_matrix:
    """One float32 CSR ``n × n`` with sorted column indices (needed for look-ups) from :func:`_map_blocks`'
    parts: each sorted by row and column, and each block's rows after the previous block's."""
    rows = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, dtype=np.int64)
    cols = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, dtype=np.int64)
    vals = np.concatenate([p[2] for p in parts]) if parts else np.empty(0, dtype=np.float32)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    index = np.int32 if max(n, len(cols)) < np.iinfo(np.int32).max else np.int64
    out = sp.csr_matrix((vals.astype(np.float32), cols.astype(index), indptr.astype(index)), shape=(n, n))
    out.has_sorted_indices = True
    return out


def cosine_topk(
    vectors: sp.csr_matrix,
    neighbors: int,
    shrinkage: float = 0.0,
    min_similarity: float = 0.0,
    settings: RunSettings | None = None,
    stage: str = "similarities",
    normalize: bool = True,
    alpha: float = 0.5,
    exponent: float = 1.0,
) -> sp.csr_matrix:
    """Row ``t`` holds entity ``t``'s ``neighbors`` most similar other entities (float32 CSR, rows = targets).

    ``vectors`` is entity × feature. The similarity of target ``t`` to neighbour ``n`` is the asymmetric cosine
    ``(t·n / (‖t‖^(2α) ‖n‖^(2(1−α)) + shrinkage))^exponent`` — the plain cosine for ``α = 0.5``,
    ``exponent = 1`` — or ``(t·n)^exponent`` when ``normalize`` is false (for BM25 weights, which carry their own
    length normalisation). Values at or below ``min_similarity`` (≥ 0, tested before the exponent) are dropped and
    an entity is never its own neighbour. Computed one block of target rows of the sparse ``n × n`` product at a
    time and pruned right away, so memory is bounded by the block's stored entries (at most
    :data:`SPARSE_BLOCK_VALUES` / workers per block).
    """
    if min_similarity < 0:
        raise ValueError(
            f"min_similarity must be ≥ 0, got {min_similarity}: pairs without a shared feature are not stored, "
            "so a negative cut-off cannot be honoured"
        )
    vectors = sp.csr_matrix(vectors, dtype=np.float32)
    if not vectors.has_canonical_format:  # repeated entries are summed first (on a copy: inputs are shared)
        vectors = vectors.copy()
        vectors.sum_duplicates()
    n = vectors.shape[0]
    counts = np.diff(vectors.indptr)
    # Row sums of the squares as scipy's ``multiply(…).sum(axis=1)`` computes them (float32 ``reduceat``), without
    # its element-wise product, which matches index pairs and allocates a whole matrix.
    sq_norms = np.zeros(n, dtype=np.float64)
    filled = np.flatnonzero(counts)
    if len(filled):
        sq_norms[filled] = np.add.reduceat(vectors.data * vectors.data, vectors.indptr[filled])
    keep = min(neighbors, max(n - 1, 1))
    if _dense_product_cheaper(vectors, counts):  # before the sparse path's permuted, transposed, scaled copies
        return _cosine_topk_dense(
            vectors, keep, shrinkage if normalize else None, min_similarity, settings, stage, alpha, exponent, sq_norms
        )
    target_scale = (sq_norms**alpha).astype(np.float32)
    # The product's columns (neighbours) are numbered by falling feature count while it is computed: scipy's
    # kernel adds every partial product into a dense accumulator indexed by column, and with the most frequent
    # neighbours first, and each feature's neighbours in that order, its busy part stays in the L1 cache (the
    # products 20–25 % faster at 200k × 50k with popularity ∝ 1/rank^0.9; same sums in the same order, so the
    # same floats). ``order[c]`` is the entity of column ``c``, ``position`` the inverse.
    order = np.argsort(-counts, kind="stable")
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    neighbour_scale = (sq_norms[order] ** (1.0 - alpha)).astype(np.float32)
    # Features × neighbour positions, each row's positions ascending (a CSC → CSR conversion sorts them), and this
    # function's own copy: the scaling below works in place.
    right = sp.csr_matrix(vectors[order].T)
    left = vectors
    scaled = normalize and not shrinkage
    if scaled:
        # Without shrinkage the denominator factorises, so it is applied to the sparse inputs (targets' rows,
        # neighbours' columns) and the product comes out normalised: no pass over the dense blocks. Entities
        # without features have a zero scale and only zero products.
        inv_target = np.divide(1.0, target_scale, out=np.zeros_like(target_scale), where=target_scale > 0)
        inv_neighbour = np.divide(1.0, neighbour_scale, out=np.zeros_like(neighbour_scale), where=neighbour_scale > 0)
        left = sp.csr_matrix(
            (vectors.data * np.repeat(inv_target, counts), vectors.indices, vectors.indptr), shape=vectors.shape
        )
        right.data *= inv_neighbour[right.indices]  # right is this function's own copy
    workers = _block_workers(settings)

    def compute(start: int, stop: int) -> _Part:
        indptr, indices, sims = _block_product_parts(left[start:stop], right, slack=n + 2)
        if normalize and not scaled:  # columns are positions (see ``order``)
            nnz = int(indptr[-1])
            rows = np.repeat(np.arange(start, stop), np.diff(indptr))
            denom = target_scale[rows] * neighbour_scale[indices[:nnz]]
            denom += shrinkage
            normalised = np.zeros(nnz + n + 2, dtype=sims.dtype)
            np.divide(sims[:nnz], denom, out=normalised[:nnz], where=denom > 0)
            sims = normalised
        rows, cols, vals = _keep_top_csr(indptr, indices, sims, start, keep, min_similarity, (order, position))
        if exponent != 1.0:
            vals = np.sign(vals) * np.abs(vals) ** exponent
        return rows, cols, vals

    block = _block_rows(n, 2 * workers, SPARSE_BLOCK_VALUES)
    return _assemble(_map_blocks(compute, n, block, settings, stage), n)


def _dense_product_cheaper(vectors: sp.csr_matrix, counts: np.ndarray) -> bool:
    """Whether the products of ``vectors``' rows (entity × feature; ``counts`` its row lengths) should be
    computed densely (see :data:`_DENSE_PRODUCT_RATIO`)."""
    if _PRODUCT_PATH != "auto":
        return _PRODUCT_PATH == "dense"
    feature_counts = np.bincount(vectors.indices, minlength=vectors.shape[1]).astype(np.float64)
    sparse_work = float(feature_counts @ feature_counts)
    dense_work = float(counts.sum()) * vectors.shape[0]
    return sparse_work > _DENSE_PRODUCT_RATIO * dense_work


def _cosine_topk_dense(
    vectors: sp.csr_matrix,
    keep: int,
    shrinkage: float | None,
    min_similarity: float,
    settings: RunSettings | None,
    stage: str,
    alpha: float,
    exponent: float,
    sq_norms: np.ndarray,
) -> sp.csr_matrix:
    """:func:`cosine_topk` with each block's products computed as a dense ``targets × entities`` array: torch's
    sparse × dense product of all entities' rows with the block's features (a dense ``features × targets``
    array), then the normalisation and :func:`_keep_top` on dense rows. ``shrinkage`` ``None`` means no
    normalisation (BM25 weights).

    The raw products are summed first and divided afterwards, also without shrinkage (the sparse path scales its
    inputs there): with integer weights (binary or counted interactions) the sums are exact integers whatever
    order or fused multiply-add torch uses, so both paths give the same floats; with real weights they may differ
    in the last bit. Memory: per block in flight, two ``rows × n`` float32 arrays and the ``features × rows``
    columns, within :data:`SPARSE_BLOCK_VALUES` unless that leaves fewer than :data:`_DENSE_MIN_BLOCK_ROWS` rows.
    """
    from recmodels.torch_utils import torch_csr

    n = vectors.shape[0]
    neighbours = torch_csr(vectors)
    target_scale = (sq_norms**alpha).astype(np.float32)
    neighbour_scale = (sq_norms ** (1.0 - alpha)).astype(np.float32)

    def compute(start: int, stop: int) -> _Part:
        features = np.ascontiguousarray(vectors[start:stop].toarray().T)  # features × targets
        # targets × entities by torch's blocked transpose (numpy's strided copy took as long as the product at
        # 200k × 160)
        (sims,) = _transposed_products(neighbours, [features])
        if shrinkage is not None:
            # A few rows at a time: a whole-block denominator would be a third array as large as the block.
            step = max(1, _DENOMINATOR_VALUES // n)
            for first in range(0, stop - start, step):
                part = sims[first : first + step]
                denom = np.multiply.outer(target_scale[start + first : start + first + len(part)], neighbour_scale)
                denom += np.float32(shrinkage)
                np.divide(part, denom, out=part, where=denom > 0)  # a zero denominator: a zero vector's 0
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # never its own neighbour
        rows, cols, vals = _keep_top(sims, start, keep, min_similarity)
        if exponent != 1.0:
            vals = np.sign(vals) * np.abs(vals) ** exponent
        return rows, cols, vals

    # Per target row in flight: the product and its transpose (n values each) and the dense features.
    workers = _block_workers(settings)
    block = max(_DENSE_MIN_BLOCK_ROWS, SPARSE_BLOCK_VALUES // (workers * (2 * n + vectors.shape[1])))
    # At least one block per worker: each block's top-k runs on its own thread (numpy's select is single-threaded).
    block = max(_DENSE_MIN_BLOCK_ROWS, min(block, -(-n // workers)))
    return _assemble(_map_blocks(compute, n, min(block, n), settings, stage), n)


def rating_similarity(
    values: sp.csr_matrix,
    kind: str,
    shrinkage: float = 0.0,
    min_support: int = 1,
    max_neighbors: int | None = None,
    settings: RunSettings | None = None,
    stage: str = "rating similarities",
) -> sp.csr_matrix:
    """Positive similarities between the rows of ``values`` over their co-rated columns (float32 CSR, n × n).

    ``values`` is entity × feature with an entry wherever a rating exists (raw ratings for ``"cosine"`` and
    ``"pearson"``; baseline residuals ``r − b`` for ``"pearson_baseline"``). With ``C`` the ``n_ab`` features
    both ``a`` and ``b`` have, as in surprise's ``similarities`` module:

    - cosine: ``Σ_C x_a x_b / sqrt(Σ_C x_a² · Σ_C x_b²)``;
    - pearson: the correlation over ``C`` (each side centred on its own mean over ``C``);
    - pearson_baseline: the cosine of the residuals over ``C``.

    Each value is then multiplied by ``(n_ab − 1) / (n_ab − 1 + shrinkage)`` when ``shrinkage > 0`` (surprise does
    this for pearson_baseline; here it applies to every kind), and pairs with ``n_ab < min_support`` get 0. Only
    positive similarities are kept — the prediction rule averages over positively similar neighbours only — and,
    if ``max_neighbors`` is set, only each row's largest ``max_neighbors`` of them.
    """
    if kind not in RATING_SIMILARITIES:
        raise ValueError(f"similarity must be one of {RATING_SIMILARITIES}, got {kind!r}")
    vals = sp.csr_matrix(values, dtype=np.float64)
    n = vals.shape[0]
    pattern = vals.copy()
    pattern.data[:] = 1.0
    squares = vals.multiply(vals).tocsr()
    keep = n if max_neighbors is None else min(max_neighbors, n)
    pearson = kind == "pearson"
    dense = _dense_product_cheaper(pattern, np.diff(pattern.indptr))
    if dense:  # see cosine_topk: most pairs share a feature, so each block's products are dense anyway
        from recmodels.torch_utils import torch_csr

        by_pattern, by_vals, by_squares = (torch_csr(m) for m in (pattern, vals, squares))
    else:
        vals_t, pattern_t, squares_t = vals.T.tocsr(), pattern.T.tocsr(), squares.T.tocsr()

    def products(start: int, stop: int) -> list[np.ndarray]:
        """count, Σ_C x_a x_b, Σ_C x_a², Σ_C x_b² (and Σ_C x_a, Σ_C x_b for pearson), each rows × n."""
        rows = slice(start, stop)
        if dense:
            # b's side is the sparse matrix, a's the block's dense columns: three products of 1–3 column sets.
            p_a, v_a, q_a = (np.ascontiguousarray(m[rows].toarray().T) for m in (pattern, vals, squares))
            count, sq_a, *sum_a = _transposed_products(by_pattern, [p_a, q_a] + ([v_a] if pearson else []))
            prods, *sum_b = _transposed_products(by_vals, [v_a] + ([p_a] if pearson else []))
            (sq_b,) = _transposed_products(by_squares, [p_a])
            return [count, prods, sq_a, sq_b, *sum_a, *sum_b]
        found = [
            _block_product(pattern[rows], pattern_t),
            _block_product(vals[rows], vals_t),
            _block_product(squares[rows], pattern_t),  # Σ_C x_a², over the features b also has
            _block_product(pattern[rows], squares_t),  # Σ_C x_b²
        ]
        if pearson:
            found += [_block_product(vals[rows], pattern_t), _block_product(pattern[rows], vals_t)]
        return found

    def compute(start: int, stop: int) -> _Part:
        # In place where it can be: each block × n array (102 MB for 64 rows at 200,000 users) is above glibc's
        # largest mmap threshold, so every fresh one is mapped anew and zeroed by the kernel page by page.
        count, prods, sq_a, sq_b, *sums = products(start, stop)
        if pearson:
            sum_a, sum_b = sums
            prods *= count  # count · Σ x_a x_b − Σ x_a · Σ x_b, and likewise for the squares
            prods -= sum_a * sum_b  # the one temporary: both sums are still needed below
            sq_a *= count
            sq_a -= np.square(sum_a, out=sum_a)
            sq_b *= count
            sq_b -= np.square(sum_b, out=sum_b)
            del sum_a, sum_b
        denom = np.multiply(sq_a, sq_b, out=sq_a)
        np.sqrt(np.maximum(denom, 0.0, out=denom), out=denom)
        sims = sq_b
        sims.fill(0.0)
        np.divide(prods, denom, out=sims, where=denom > 1e-12)
        too_few = count < min_support
        if shrinkage > 0:
            support = np.maximum(np.subtract(count, 1.0, out=count), 0.0, out=count)  # n_ab − 1, at least 0
            sims *= np.divide(support, np.add(support, shrinkage, out=prods), out=support)
        sims[too_few] = 0.0
        sims[np.arange(stop - start), np.arange(start, stop)] = 0.0
        return _keep_top(sims, start, keep, 0.0)

    workers = _block_workers(settings)
    # Per row in flight: up to 6 transposed products, 3 before their transpose and the arithmetic's temporaries
    # (~12 arrays of n values), and the 3 dense feature columns.
    if dense:
        block = max(_DENSE_MIN_BLOCK_ROWS, BLOCK_VALUES // (workers * (12 * n + 3 * vals.shape[1])))
    else:
        block = _block_rows(n, 8 * workers)
    return _assemble(_map_blocks(compute, n, min(block, n), settings, stage), n)


def _transposed_products(left: torch.Tensor, columns: list[np.ndarray]) -> list[np.ndarray]:
    """``(left @ c).T`` for each dense ``features × rows`` array ``c``, as C-contiguous ``rows × n`` arrays: one
    sparse × dense product for all of them (the sparse matrix is read once), one blocked transpose (torch's)."""
    import torch

    width = columns[0].shape[1]
    stacked = columns[0] if len(columns) == 1 else np.hstack(columns)
    out = (left @ torch.from_numpy(stacked)).t().contiguous().numpy()
    return [out[i * width : (i + 1) * width] for i in range(len(columns))]


def als_baselines(
    ratings: sp.csr_matrix, epochs: int = 10, reg_users: float = 15.0, reg_items: float = 10.0
) -> tuple[float, np.ndarray, np.ndarray]:
    """``(μ, b_user, b_item)`` for ``r̂ = μ + b_u + b_i``, by alternating regularised means (float64).

    Each epoch sets ``b_i = Σ_u (r_ui − μ − b_u) / (reg_items + n_i)`` for every item, then
    ``b_u = Σ_i (r_ui − μ − b_i) / (reg_users + n_u)`` for every user — surprise's ``baseline_als``, vectorised.
    """
    coo = ratings.tocoo()
    rows, cols, data = coo.row, coo.col, coo.data.astype(np.float64)
    n_users, n_items = ratings.shape
    mu = float(data.mean()) if len(data) else 0.0
    per_user = np.bincount(rows, minlength=n_users)
    per_item = np.bincount(cols, minlength=n_items)
    b_user = np.zeros(n_users)
    b_item = np.zeros(n_items)
    for _ in range(epochs):
        b_item = damped_mean(np.bincount(cols, data - mu - b_user[rows], minlength=n_items), per_item + reg_items)
        b_user = damped_mean(np.bincount(rows, data - mu - b_item[cols], minlength=n_users), per_user + reg_users)
    return mu, b_user, b_item


def neighbourhood_offsets(
    similarity: sp.csr_matrix,
    residuals: sp.csr_matrix,
    entity: np.ndarray,
    feature: np.ndarray,
    k: int,
    min_neighbors: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Neighbourhood term of a kNN rating prediction for each (entity, feature) pair.

    ``similarity`` is entity × entity (zero = not a neighbour); ``residuals`` is feature × entity and holds
    ``r − centre`` wherever the entity rated the feature. For pair ``p = (e, f)`` the candidates are the entities
    that have ``f`` and a positive ``sim(e, ·)``; the (at most) ``k`` most similar form the neighbourhood ``N``,
    and the term is ``Σ_N sim · residual / Σ_N |sim|`` — 0 when ``|N| < min_neighbors``. Returns the terms
    (float64) and ``|N|`` (int64) per pair.

    Each pair finds its candidates from the cheaper side: the entities that have ``f``, each looked up in the
    similarities, or ``e``'s stored similarities, each looked up in the residuals (for a user who is one of
    100,000 raters of a popular item but keeps 1,000 neighbours, the second does 1 % of the look-ups). Vectorised
    over pairs: pairs are sorted by their number of candidates and handled in chunks padded to a rectangle of at
    most :data:`_ELEMENT_BUDGET` cells, in which one ``argpartition`` per chunk picks every pair's top ``k``.
    """
    entity = np.asarray(entity, dtype=np.int64)
    feature = np.asarray(feature, dtype=np.int64)
    n_pairs = len(entity)
    terms = np.zeros(n_pairs)
    sizes = np.zeros(n_pairs, dtype=np.int64)
    if n_pairs == 0:
        return terms, sizes
    similarity = sp.csr_matrix(similarity)
    lookup = SimilarityLookup(similarity)
    raters = np.diff(residuals.indptr)[feature].astype(np.int64)
    neighbours = np.diff(similarity.indptr)[entity].astype(np.int64)
    # Cost per candidate: a gather from the dense copy or a binary search of the similarity keys; from the
    # entity's side, a binary search of the residual keys.
    per_rater = 1.0 if lookup.dense is not None else np.log2(max(similarity.nnz, 2))
    per_neighbour = np.log2(max(residuals.nnz, 2))
    if _CANDIDATE_SIDE == "auto":
        from_neighbours = neighbours * per_neighbour < raters * per_rater
    else:
        from_neighbours = np.full(n_pairs, _CANDIDATE_SIDE == "neighbours")

    by_feature = np.flatnonzero(~from_neighbours)
    for chunk, width in _padded_chunks(by_feature, raters[by_feature]):
        cols = np.arange(width)
        valid = cols[None, :] < raters[chunk, None]
        position = np.where(valid, residuals.indptr[feature[chunk], None] + cols[None, :], 0)
        sims = lookup(entity[chunk], residuals.indices[position])
        sims[~valid | (sims <= 0)] = 0.0  # only positively similar neighbours vote
        votes = residuals.data[position].astype(np.float64)
        terms[chunk], sizes[chunk] = _neighbourhood_terms(sims, votes, k, min_neighbors)

    by_entity = np.flatnonzero(from_neighbours)
    if len(by_entity):
        residual_of = _EntryLookup(residuals)
    for chunk, width in _padded_chunks(by_entity, neighbours[by_entity]):
        cols = np.arange(width)
        valid = cols[None, :] < neighbours[chunk, None]
        position = np.where(valid, similarity.indptr[entity[chunk], None] + cols[None, :], 0)
        rated, votes = residual_of(feature[chunk], similarity.indices[position])
        sims = similarity.data[position].astype(np.float64)
        sims[~valid | ~rated | (sims <= 0)] = 0.0
        terms[chunk], sizes[chunk] = _neighbourhood_terms(sims, votes, k, min_neighbors)
    return terms, sizes


#: Where :func:`neighbourhood_offsets` takes each pair's candidates from; "auto" compares the look-ups' costs,
#: tests force either side.
_CANDIDATE_SIDE: Literal["auto", "features", "neighbours"] = "auto"


def _padded_chunks(pairs: np.ndarray, widths: np.ndarray) -> Iterator[tuple[np.ndarray, int]]:
    """Chunks of ``pairs`` (by ascending width) whose padded rectangle fits :data:`_ELEMENT_BUDGET`; non-empty."""
    order = np.argsort(widths, kind="stable")
    sorted_widths = widths[order]
    start = 0
    while start < len(pairs):
        # Largest chunk whose rectangle (pairs × widest) fits the budget; widths ascend, so the rectangle size
        # grows monotonically with the chunk end.
        rect = np.arange(1, len(pairs) - start + 1) * np.maximum(sorted_widths[start:], 1)
        stop = start + max(1, int(np.searchsorted(rect, _ELEMENT_BUDGET, side="right")))
        width = int(sorted_widths[stop - 1])
        if width > 0:
            yield pairs[order[start:stop]], width
        start = stop


def _neighbourhood_terms(
    sims: np.ndarray, votes: np.ndarray, k: int, min_neighbors: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, ``Σ sim · vote / Σ |sim|`` over the ``k`` largest positive ``sims`` (0: none), and their count."""
    if sims.shape[1] > k:
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        sims, votes = _row_gather(sims, top), _row_gather(votes, top)
    count = (sims > 0).sum(axis=1)
    weight = np.abs(sims).sum(axis=1)
    vote = (sims * votes).sum(axis=1)
    ok = (count >= max(min_neighbors, 1)) & (weight > 0)
    return np.where(ok, vote / np.where(ok, weight, 1.0), 0.0), count


class _EntryLookup:
    """Vectorised ``matrix[rows, cols]`` of a sparse matrix that tells stored entries (even zeros) from absent ones."""

    def __init__(self, matrix: sp.csr_matrix) -> None:
        csr = sp.csr_matrix(matrix)
        if not csr.has_canonical_format:  # sorted columns make the keys below ascend; a copy: inputs are shared
            csr = csr.copy()
            csr.sum_duplicates()
        self.n_cols = csr.shape[1]
        rows = np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr))
        self.keys = rows * self.n_cols + csr.indices
        self.values = csr.data.astype(np.float64)

    def __call__(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(stored, value) for ``matrix[rows[p], cols[p, c]]``, a ``(P,)`` row vector and a ``(P, C)`` array."""
        if len(self.keys) == 0:
            return np.zeros(cols.shape, dtype=bool), np.zeros(cols.shape)
        keys = rows[:, None] * self.n_cols + cols
        found = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        stored = self.keys[found] == keys
        return stored, np.where(stored, self.values[found], 0.0)


class SimilarityLookup:
    """Vectorised ``similarity[rows, cols]`` look-ups into a sparse entity × entity matrix (float64 result).

    Small matrices (at most :data:`BLOCK_VALUES` cells) are densified once, which makes a look-up a plain
    gather; so are full ones, where a float32 copy (4 bytes a cell) is no larger than the keys and values the
    search would need (16 bytes an entry). The rest are searched with ``searchsorted`` on the sorted (row,
    column) keys of their entries. user_knn's rating similarities at the 900k-event synthetic set (20,000 users,
    107M positive entries: 1.6 GB dense against 1.7 GB of keys and values): its first ``predict`` of 177,248
    ratings, which also fits those similarities, took 46.6 / 50.6 s instead of 73.2 / 85.2 s, the same values.
    """

    def __init__(self, similarity: sp.csr_matrix) -> None:
        n_rows, n_cols = similarity.shape
        self.n_cols = n_cols
        self.dense: np.ndarray | None = None
        if n_rows * n_cols <= max(BLOCK_VALUES, _DENSE_CELLS_PER_ENTRY * similarity.nnz):
            self.dense = similarity.toarray().astype(np.float32, copy=False)
            return
        self.entries = _EntryLookup(similarity)

    def __call__(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``similarity[rows[p], cols[p, c]]`` for a ``(P,)`` row vector and a ``(P, C)`` column array."""
        if self.dense is not None:
            return self.dense[rows[:, None], cols].astype(np.float64)
        return self.entries(rows, cols)[1]  # absent entries are 0
