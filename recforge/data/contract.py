"""The data contract every source produces and every later stage relies on.

Interactions: one row per event with
- ``user_id``, ``item_id``: identifiers as strings (pandas ``str``/object dtype). Sources read id columns as text
  so that 64-bit integers, zero-padded codes and mixed ids survive unchanged; a missing id stays missing (NA),
  it is never turned into the text "nan". Validation rejects missing ids.
- ``rating``: optional, float64. Absent for purely implicit data.
- ``timestamp``: timezone-aware UTC datetimes (``datetime64[..., UTC]``).
- any extra columns are kept and ignored by the core pipeline.

Users (optional): ``user_id`` plus attribute columns. Items (optional): ``item_id`` plus attribute columns; a
``genres`` column, if present, holds ``|``-separated category labels used for preference-share features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

USER = "user_id"
ITEM = "item_id"
RATING = "rating"
TIMESTAMP = "timestamp"
GENRES = "genres"
CATEGORY_SEPARATOR = "|"
#: Items-table columns that name an item, first found wins: MovieLens/synthetic "title", RecBole's ``movie_title``
#: (ML-100K/1M atomic files read as plain csv) and ``item_name`` (Yelp, Tmall), and "name".
TITLE_COLUMNS = ("title", "movie_title", "item_name", "name")


def title_column(items: pd.DataFrame | None) -> str | None:
    """The column of ``items`` that names each item (:data:`TITLE_COLUMNS`), if any."""
    return None if items is None else next((c for c in TITLE_COLUMNS if c in items.columns), None)


#: Interaction columns the cleaning stage adds for itself (``recforge.prepare``): a source column of one of these
#: names is renamed ``source_<name>`` at load, else it was read as that bookkeeping (``repeat_count`` as an event
#: weight multiplying the activity features, ``rating_missing`` as a flag).
REPEAT_COUNT = "repeat_count"
RATING_MISSING = "rating_missing"
FIRST_TIMESTAMP = "first_timestamp"
INTERNAL_COLUMNS = (REPEAT_COUNT, RATING_MISSING, FIRST_TIMESTAMP)


def holds_lists(column: pd.Series) -> bool:
    """Whether a column's values are lists or arrays (a Parquet list column), judged by its first value: such a
    column has no single value to compare or fill in."""
    if column.dtype != object:
        return False
    present = column.dropna()
    return bool(len(present)) and isinstance(present.iloc[0], (list, tuple, dict, set, np.ndarray))


#: Longest id, in characters, that the published tables hold (``VARCHAR(200)``: PostgreSQL refuses longer ones).
MAX_ID_CHARS = 200


class DataError(ValueError):
    """Input data that violates the contract; the message says which file/table, column, rows and the fix."""


@dataclass(frozen=True)
class Dataset:
    """Interactions plus optional user and item attribute tables, as loaded by a source."""

    name: str
    interactions: pd.DataFrame
    users: pd.DataFrame | None = None
    items: pd.DataFrame | None = None
    # Human-readable origin (a path or a masked URL), for messages and the run record.
    source: str = ""
    # Rating scale declared by the source, e.g. (1.0, 5.0) for MovieLens; None when unknown or implicit.
    rating_range: tuple[float, float] | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def has_ratings(self) -> bool:
        return RATING in self.interactions.columns and bool(self.interactions[RATING].notna().any())

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables that are present, keyed by table name (``interactions``, ``users``, ``items``)."""
        out = {"interactions": self.interactions}
        if self.users is not None:
            out["users"] = self.users
        if self.items is not None:
            out["items"] = self.items
        return out
