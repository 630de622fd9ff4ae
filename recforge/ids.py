"""The one place where external user/item ids become the integer indices models work with.

An :class:`IdIndex` is built once from the training frame; everything downstream (evaluation, scoring,
publishing) maps ids through it, so index ``i`` means the same user or item in every stage of a run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recforge.data.contract import ITEM, RATING, TIMESTAMP, USER, DataError
from recmodels.data import Interactions

_EPOCH = pd.Timestamp(0, tz="UTC")


def id_sort_key(ids: pd.Series) -> pd.Series:
    """Sort key for ids: their numeric value when every id is a decimal integer, else their text.

    Ids are strings by contract, but for integer-coded catalogues (MovieLens) "id order" should mean 2 < 10,
    not the string order "10" < "2". Used for the index order here and for timestamp ties in the split.
    """
    text = ids.astype("str")
    if len(text) and bool(text.str.fullmatch(r"[0-9]+").all()):
        # float64 is exact below 2**53; callers sort by the id text after this key, so longer ids (or
        # "7" vs "007") still come out in one deterministic order.
        return text.astype("float64")
    return text


def sorted_ids(ids: pd.Series) -> pd.Index:
    """The distinct ``ids`` in :func:`id_sort_key` order (ties of the key broken by the id text)."""
    unique = pd.Series(pd.unique(ids), dtype=ids.dtype)
    frame = pd.DataFrame({"key": id_sort_key(unique), "id": unique})
    return pd.Index(frame.sort_values(["key", "id"], kind="stable")["id"].to_numpy(), dtype=ids.dtype)


@dataclass(frozen=True)
class IdIndex:
    """Distinct user and item ids in :func:`sorted_ids` order; position in ``users``/``items`` is the index."""

    users: pd.Index
    items: pd.Index

    @classmethod
    def from_frame(cls, train: pd.DataFrame) -> IdIndex:
        """Index the users and items of a (training) interactions frame (integer-like ids in numeric order)."""
        missing = [c for c in (USER, ITEM) if c not in train.columns]
        if missing:
            raise DataError(f"IdIndex: the interactions table has no column(s) {missing}")
        for column in (USER, ITEM):
            if train[column].isna().any():
                rows = list(train.index[train[column].isna()][:5])
                raise DataError(
                    f"IdIndex: column {column!r} of the interactions table has missing ids (row labels {rows}); "
                    "validation should have rejected them: drop those rows"
                )
        return cls(users=sorted_ids(train[USER]), items=sorted_ids(train[ITEM]))

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def user_codes(self, ids: Iterable[object] | pd.Series | np.ndarray) -> np.ndarray:
        """Index of each user id (int64), ``-1`` for ids not in the index."""
        return self.users.get_indexer(pd.Index(ids)).astype(np.int64)

    def item_codes(self, ids: Iterable[object] | pd.Series | np.ndarray) -> np.ndarray:
        """Index of each item id (int64), ``-1`` for ids not in the index."""
        return self.items.get_indexer(pd.Index(ids)).astype(np.int64)

    def interactions(self, df: pd.DataFrame, ratings: bool) -> Interactions:
        """The rows of ``df`` whose user and item are both indexed, as model input.

        ratings: carry the ``rating`` column (it must then be present and complete in the kept rows).
        Timestamps, when present, are passed as int64 seconds since the Unix epoch. Rows with unknown ids are
        dropped silently: callers that care count them with :meth:`user_codes` / :meth:`item_codes` first.
        """
        user = self.user_codes(df[USER])
        item = self.item_codes(df[ITEM])
        keep = (user >= 0) & (item >= 0)
        rating = None
        if ratings:
            if RATING not in df.columns:
                raise DataError("the interactions table has no 'rating' column; this model needs explicit ratings")
            values = df[RATING].to_numpy(dtype=np.float64, na_value=np.nan)[keep]
            if np.isnan(values).any():
                raise DataError(
                    f"column 'rating' is missing in {int(np.isnan(values).sum())} row(s); impute or drop them "
                    "before training a rating model"
                )
            rating = values
        timestamp = None
        if TIMESTAMP in df.columns:
            # Exact integer seconds whatever the datetime unit (pandas 3 defaults to microseconds).
            stamps = df[TIMESTAMP][keep]
            if stamps.isna().any():
                raise DataError(
                    f"column 'timestamp' is missing in {int(stamps.isna().sum())} row(s) (row labels "
                    f"{list(stamps.index[stamps.isna()][:5])}); drop or impute them before training"
                )
            seconds = (stamps - _EPOCH) // pd.Timedelta(seconds=1)
            timestamp = seconds.to_numpy(dtype=np.int64)
        return Interactions.from_arrays(
            user[keep],
            item[keep],
            rating=rating,
            timestamp=timestamp,
            n_users=self.n_users,
            n_items=self.n_items,
        )
