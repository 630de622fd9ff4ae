"""Training data as models see it: integer indices, optional ratings and times, CSR views."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True, eq=False)
class Interactions:
    """Observed (user, item) events over a fixed index space.

    ``user`` and ``item`` are int32 index arrays in ``[0, n_users)`` / ``[0, n_items)``; ``rating`` (float32) and
    ``timestamp`` (int64 seconds since the epoch) are optional and aligned with them. Pairs are expected to be
    unique (the pipeline collapses repeats before training); if not, the binary view counts a pair once and the
    ratings view keeps its latest rating (latest timestamp, else the last in array order), never their sum.
    """

    n_users: int
    n_items: int
    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray | None = None
    timestamp: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.user.shape != self.item.shape:
            raise ValueError(f"user and item arrays differ in length: {self.user.shape} vs {self.item.shape}")
        if len(self.user) and (self.user.min() < 0 or self.user.max() >= self.n_users):
            raise ValueError(f"user indices must lie in [0, {self.n_users})")
        if len(self.item) and (self.item.min() < 0 or self.item.max() >= self.n_items):
            raise ValueError(f"item indices must lie in [0, {self.n_items})")
        for name in ("rating", "timestamp"):
            values = getattr(self, name)
            if values is not None and values.shape != self.user.shape:
                raise ValueError(f"{name} has {values.size} values for {self.user.shape[0]} events (one per event)")
        if self.rating is not None and not np.isfinite(self.rating).all():
            bad = np.flatnonzero(~np.isfinite(self.rating))
            raise ValueError(
                f"rating holds {len(bad)} missing or infinite values (events {', '.join(map(str, bad[:5]))}"
                f"{', ...' if len(bad) > 5 else ''}): fill them in or drop those events before fitting"
            )

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @cached_property
    def binary(self) -> sp.csr_matrix:
        """users × items CSR with 1.0 where an event exists (float32)."""
        ones = np.ones(len(self), dtype=np.float32)
        matrix = sp.csr_matrix((ones, (self.user, self.item)), shape=(self.n_users, self.n_items))
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    @cached_property
    def ratings(self) -> sp.csr_matrix:
        """users × items CSR of ratings (float32); raises if this data has no ratings."""
        if self.rating is None:
            raise ValueError("these interactions carry no ratings; use a ranking (implicit) model instead")
        user, item, rating = self.user, self.item, self.rating.astype(np.float32)
        if self.binary.nnz < len(self):  # repeated pairs: keep each pair's latest rating, not their sum
            key = user.astype(np.int64) * self.n_items + item
            order = np.lexsort((np.arange(len(self)) if self.timestamp is None else self.timestamp, key))
            key = key[order]
            last = order[np.append(key[1:] != key[:-1], True)]
            user, item, rating = user[last], item[last], rating[last]
        matrix = sp.csr_matrix((rating, (user, item)), shape=(self.n_users, self.n_items))
        matrix.sum_duplicates()
        return matrix

    @cached_property
    def item_counts(self) -> np.ndarray:
        """Number of distinct users per item (float64)."""
        return np.asarray(self.binary.sum(axis=0)).ravel().astype(np.float64)

    def subset(self, mask: np.ndarray) -> Interactions:
        """The events where ``mask`` is true, over the same index space."""
        return Interactions(
            self.n_users,
            self.n_items,
            self.user[mask],
            self.item[mask],
            None if self.rating is None else self.rating[mask],
            None if self.timestamp is None else self.timestamp[mask],
        )

    @classmethod
    def from_arrays(
        cls,
        user: np.ndarray,
        item: np.ndarray,
        rating: np.ndarray | None = None,
        timestamp: np.ndarray | None = None,
        n_users: int | None = None,
        n_items: int | None = None,
    ) -> Interactions:
        """Events from index arrays (any integer dtype; cast to int32) and optional ratings and times."""
        user, item = _indices(user, "user"), _indices(item, "item")
        return cls(
            int(n_users if n_users is not None else (int(user.max()) + 1 if len(user) else 0)),
            int(n_items if n_items is not None else (int(item.max()) + 1 if len(item) else 0)),
            user,
            item,
            None if rating is None else np.asarray(rating, dtype=np.float32),
            None if timestamp is None else np.asarray(timestamp, dtype=np.int64),
        )


def _indices(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` as int32 indices; refuses what the cast would change (a plain ``astype`` wrapped 2**32 + 1 to 1,
    giving the event to another user, and truncated 1.9 to 1) and booleans (a mask passed for indices became
    users 0 and 1). Whole floats pass, unlike :func:`recmodels.base.user_indices` for ``recommend``: a pandas
    column of indices turns float when it once held a missing value."""
    array = np.asarray(values)
    if array.size == 0:
        return array.astype(np.int32)
    if array.dtype.kind == "b":
        raise ValueError(f"{name} indices must be integers, got booleans (a mask? index with np.flatnonzero)")
    if array.dtype.kind not in "iu":
        fractional = array != np.round(array) if array.dtype.kind == "f" else np.ones(array.shape, dtype=bool)
        if fractional.any():
            example = array.flat[int(np.flatnonzero(fractional.ravel())[0])]
            raise ValueError(f"{name} indices must be integers, got {array.dtype} values such as {example!r}")
    if array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{name} indices must fit int32 (below 2**31), got values up to {array.max()}")
    return array.astype(np.int32)
