"""Products restricted to the stored cells of a sparse pattern: per-cell dot products of two factor matrices
(nmf's predictions on the observed ratings, biased_mf's conjugate-gradient Gram products) and sparse × dense
products with values on those cells."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from recmodels.torch_utils import as_torch_input, csr_index_type, sparse_csr


class CellPattern:
    """The stored cells of a CSR matrix, for repeated products restricted to them.

    ``dots(a, b)`` is ``a[i] · b[j]`` for every stored cell ``(i, j)``, in the matrix's storage order (a sampled
    dense × dense product); ``product(values, dense)`` is the sparse matrix with
    ``values`` on those cells times ``dense``. Both run in torch's CSR kernels (MKL's on x86 builds) with the
    caller's torch thread count. On ML-100K's 80,000 training ratings and 50 factors, one thread (2026-12-06,
    ad-hoc): ``dots`` 0.77–0.80 ms against 3.5–4.1 ms for the chunked numpy gather and ``einsum`` it replaced,
    ``product`` 0.53–0.64 ms against 1.49–1.52 ms for scipy's. Results agree with those to float rounding.
    """

    def __init__(self, matrix: sp.csr_matrix) -> None:
        matrix = sp.csr_matrix(matrix)
        self.shape: tuple[int, int] = (int(matrix.shape[0]), int(matrix.shape[1]))
        index_type = csr_index_type(matrix)
        self._crow = torch.from_numpy(matrix.indptr.astype(index_type))
        self._col = torch.from_numpy(matrix.indices.astype(index_type))

    @property
    def nnz(self) -> int:
        return int(self._col.shape[0])

    def _csr(self, values: torch.Tensor) -> torch.Tensor:
        return sparse_csr(self._crow, self._col, values, self.shape)

    def dots(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``a[i] · b[j]`` for each stored cell ``(i, j)``: ``a`` is ``(rows, k)``, ``b`` ``(columns, k)``."""
        dtype = np.result_type(a.dtype, b.dtype)
        left, right = torch.from_numpy(as_torch_input(a, dtype)), torch.from_numpy(as_torch_input(b, dtype))
        zeros = torch.zeros(self.nnz, dtype=left.dtype)
        return torch.sparse.sampled_addmm(self._csr(zeros), left, right.T, beta=0.0).values().numpy()

    def product(self, values: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """The pattern with ``values`` (one per stored cell, storage order) times ``dense`` ``(columns, k)``."""
        dtype = np.result_type(values.dtype, dense.dtype)
        cells = torch.from_numpy(as_torch_input(values, dtype))
        return (self._csr(cells) @ torch.from_numpy(as_torch_input(dense, dtype))).numpy()
