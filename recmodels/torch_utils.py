"""Small helpers shared by the torch models: device choice, seeded generators, thread count.

Kept deliberately tiny and stable, because every torch model imports it:

- :func:`resolve_device` turns ``RunSettings.device`` ("auto", "cpu", "cuda", "cuda:1", ...) into a
  ``torch.device``, refusing a device that is not there instead of failing later inside a kernel.
- :func:`seeded_generator` gives a local ``torch.Generator`` so a model's randomness never touches (or depends on)
  torch's global RNG.
- :func:`set_threads` applies ``RunSettings.threads`` to torch's intra-op thread pool.
- :func:`dense_product` multiplies two numpy matrices with torch (the score products of the factor models);
  :func:`sparse_dense_product` a scipy CSR matrix by a dense one (item_knn's hub scores), through :func:`torch_csr`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    import scipy.sparse as sp

__all__ = [
    "dense_product",
    "resolve_device",
    "seeded_generator",
    "set_threads",
    "sparse_dense_product",
    "torch_csr",
]


def resolve_device(setting: str) -> torch.device:
    """The device named by ``setting``: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:N", "mps".

    Raises ``ValueError`` for an unknown name or an accelerator this machine does not have, naming the fix.
    """
    name = setting.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(
            f"unknown device {setting!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N' (RunSettings.device)"
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {setting!r} was requested but torch sees no CUDA GPU (torch {torch.__version__}); "
                "use device='cpu' or 'auto', or install a CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {setting!r} does not exist: this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {setting!r} was requested but MPS is not available; use 'cpu' or 'auto'")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {setting!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed`` (torch's global RNG is left alone).

    The same seed gives the same stream on the same device type; CPU and CUDA streams differ from each other.
    """
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(int(seed))
    return generator


def set_threads(n: int | None) -> int:
    """Set torch's intra-op CPU threads to ``n`` (``None`` leaves it unchanged); returns the previous count.

    The setting is process-wide, so a caller that wants to restore it passes the returned value back.
    """
    previous = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise ValueError(f"threads must be ≥ 1 (or None for torch's default), got {n}")
        if n != previous:
            torch.set_num_threads(int(n))
    return previous


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op CPU threads set to ``n`` (``None``: unchanged), then put the count back."""
    previous = set_threads(n)
    try:
        yield
    finally:
        set_threads(previous)


def dense_product(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``left @ right`` for two dense 2-D float numpy arrays, computed by torch; a new numpy array.

    The models' score products (a batch of users' factors × every item's) run here instead of through numpy's
    OpenBLAS, which was slower at these shapes and whose worker threads, spinning on the cores for a while after
    each product, slowed the torch top-k that ranks the scores next. ALS's top-10 for 10,000 users at 200,000 ×
    50,000 (64 factors, batches of 80 users) took 1.21–1.31 s against 1.48–1.71 s with numpy's product, the same
    items (4 alternations in one process, 2026-12-06). (item_knn's hub product, where most of the left side is zero,
    is a sparse × dense product instead: :meth:`recmodels.knn.item.ItemKNN._score_known`.)
    Transposed views (``factors.T``) are used as they are, without a copy; a read-only array is copied first (torch
    cannot wrap it), and float32 meets float64 in float64.
    """
    dtype = np.result_type(left, right)  # numpy's promotion: torch refuses mixed float32/float64 operands
    return torch.from_numpy(as_torch_input(left, dtype)).matmul(torch.from_numpy(as_torch_input(right, dtype))).numpy()


def sparse_dense_product(left: sp.csr_matrix, right: np.ndarray) -> np.ndarray:
    """``left @ right`` in float32 for a scipy CSR ``left`` and a dense 2-D ``right``: torch's CSR × dense product
    on torch's intra-op threads, a new numpy array. scipy's own product runs on one thread: item_knn's hub scores on
    ML-100K (943 users' 79,614 entries × 1,606 × 1,611 dense rows) took 11.1 ms there and 5.4 ms here on 2 threads,
    10.6 ms on one (2026-12-07). Each output row sums its entries in their stored order either way."""
    import scipy.sparse as sp

    left = sp.csr_matrix(left, dtype=np.float32)
    product = torch_csr(left).matmul(torch.from_numpy(as_torch_input(right, np.dtype(np.float32))))
    return product.numpy()


def torch_csr(matrix: sp.csr_matrix) -> torch.Tensor:
    """A torch sparse CSR tensor sharing ``matrix``'s values and, where they are int32, its indices (no int64 copy
    of ``indices``: 36 MB at the 9M-event set's 8.9M entries)."""
    index_type = csr_index_type(matrix)
    indptr, indices = (torch.from_numpy(a.astype(index_type, copy=False)) for a in (matrix.indptr, matrix.indices))
    return sparse_csr(indptr, indices, torch.from_numpy(matrix.data), matrix.shape)


def as_torch_input(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``array`` as ``dtype``, shared with ``torch.from_numpy`` where it can be (a read-only array is copied)."""
    array = array.astype(dtype, copy=False)
    return array if array.flags.writeable else array.copy()


def csr_index_type(matrix: sp.csr_matrix) -> type[np.signedinteger]:
    """The index type for ``matrix``'s torch CSR arrays: int32 where every index and offset fits (half the memory of
    int64, and scipy's own type then, so no copy is needed), else int64. torch wants both arrays of one type."""
    return np.int32 if max(matrix.nnz, *matrix.shape) < np.iinfo(np.int32).max else np.int64


def sparse_csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A torch CSR tensor over the given arrays (no copy, no invariant checks: callers pass valid CSR arrays)."""
    return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


# torch warns, once per process, that CSR tensors are beta; the CSR × dense and sampled products used with them are
# long supported. That one warning is drawn here, at import, under a filter, so that sparse_csr needs none: it runs
# in model and block threads, and warnings.catch_warnings is not thread-safe (two threads inside it at once can
# leave one's filter installed for the whole process).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    sparse_csr(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1.0]), (1, 1))
