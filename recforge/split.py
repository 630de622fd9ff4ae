"""Train/test splits for the standard evaluation protocol (see docs/BENCHMARKS.md).

- :func:`temporal_holdout` — top-N protocol: per user, the newest ``ceil(test_fraction × n)`` events (at least 1)
  are test, the rest train; test rows the model can never be credited for are dropped and counted.
- :func:`random_rating_split` — rating protocol: rows marked by ``default_rng(seed).random(n) < test_fraction``.
- :func:`events_before` — the training window of a scheduled run: events strictly before a cut-off.

All functions take and return frames in the data contract (:mod:`recforge.data.contract`); extra columns are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from recforge.data.contract import ITEM, TIMESTAMP, USER, DataError
from recforge.ids import id_sort_key

# ``0.28 * 25`` is 7.000000000000001 in floating point, which ``ceil`` would turn into 8 test events instead of
# 7; subtracting a tolerance far below 1/n for any realistic n keeps exact multiples exact.
_CEIL_TOLERANCE = 1e-9


def _require_columns(interactions: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in interactions.columns]
    if missing:
        raise DataError(
            f"{what}: the interactions table has no column(s) {missing} (columns present: "
            f"{list(interactions.columns)}); load it through a recforge source so it follows the data contract"
        )


def _check_fraction(test_fraction: float, what: str) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"{what}: test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")


def events_before(interactions: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """The interactions whose ``timestamp`` is strictly earlier than ``as_of`` (an aware datetime).

    An event stamped exactly at ``as_of`` belongs to the next window, so consecutive daily runs never count it
    twice. Naive datetimes are refused rather than guessed to be UTC.
    """
    return interactions.loc[stamped_before(interactions, as_of)]


def stamped_before(interactions: pd.DataFrame, as_of: datetime) -> np.ndarray:
    """Boolean mask of :func:`events_before`'s rows (False for a missing timestamp)."""
    _require_columns(interactions, (TIMESTAMP,), "events_before")
    stamp = pd.Timestamp(as_of)
    if stamp.tzinfo is None:
        raise ValueError(
            f"events_before: as_of={as_of!r} has no time zone; pass an aware datetime, "
            "e.g. datetime(2024, 1, 1, tzinfo=timezone.utc)"
        )
    return (interactions[TIMESTAMP] < stamp).to_numpy(dtype=bool, na_value=False)


@dataclass(frozen=True)
class TemporalSplit:
    """Result of :func:`temporal_holdout`.

    train: every event not held out, in (user, timestamp, item) order.
    test: held-out events that can be evaluated: their user has training events, their item occurs in train, and
        the user did not already interact with the item in train (seen items are never ranked).
    dropped_unseen_items: test events dropped because their item never occurs in train.
    users_without_train: users with a single event (all of it test): not evaluated, not in train or test.
    users_without_test: users in train whose test events were all dropped: in train, not evaluated.
    dropped_seen_pairs: test events dropped because the user already has that item in train (repeat events).
    """

    train: pd.DataFrame
    test: pd.DataFrame
    dropped_unseen_items: int
    users_without_train: int
    users_without_test: int = 0
    dropped_seen_pairs: int = 0

    @property
    def n_test_users(self) -> int:
        """Users that are evaluated (have at least one test event)."""
        return int(self.test[USER].nunique())


def temporal_holdout(interactions: pd.DataFrame, test_fraction: float = 0.2) -> TemporalSplit:
    """Per-user temporal holdout: each user's newest ``ceil(test_fraction × n_events)`` events become test.

    Events are ordered by timestamp, then by item id (:func:`recforge.ids.id_sort_key`: numeric order when
    every id is an integer, else string order), so that events sharing a timestamp split the same way on
    every run. For integer-coded MovieLens ids this matters: many events share a second, and string order
    ("10" before "2") would hold out different events (popularity NDCG@10 0.119 instead of 0.116).
    The cut is computed with ``groupby().cumcount()``, without a per-user loop.
    """
    _check_fraction(test_fraction, "temporal_holdout")
    _require_columns(interactions, (USER, ITEM, TIMESTAMP), "temporal_holdout")
    missing = interactions[TIMESTAMP].isna()
    if missing.any():
        rows = list(interactions.index[missing][:5])
        raise DataError(
            f"temporal_holdout: column {TIMESTAMP!r} of the interactions table is missing in {int(missing.sum())} "
            f"row(s) (first row labels: {rows}); drop or impute them before splitting"
        )

    # The order key is a temporary column so that extra columns of the caller's frame are never touched.
    key = "__recforge_item_order__"
    ordered = (
        interactions.assign(**{key: id_sort_key(interactions[ITEM])})
        .sort_values([USER, TIMESTAMP, key, ITEM], kind="stable")
        .drop(columns=key)
    )
    groups = ordered.groupby(USER, sort=False)
    position = groups.cumcount().to_numpy()
    n_events = groups[USER].transform("size").to_numpy()
    n_test = np.maximum(1, np.ceil(test_fraction * n_events - _CEIL_TOLERANCE)).astype(np.int64)
    is_test = position >= n_events - n_test

    train = ordered.loc[~is_test]
    test = ordered.loc[is_test]

    # isin with the distinct values only: pandas 3's string isin walks its argument in Python, element by element.
    no_train = ~test[USER].isin(train[USER].unique())
    users_without_train = int(test.loc[no_train, USER].nunique())
    test = test.loc[~no_train]

    unseen = ~test[ITEM].isin(train[ITEM].unique())
    dropped_unseen = int(unseen.sum())
    test = test.loc[~unseen]

    # A test event for an item the user already has in train can never be recommended (seen items are
    # excluded from ranking), so keeping it would only cap recall below 1 for every model alike.
    train_pairs = pd.MultiIndex.from_frame(train[[USER, ITEM]])
    seen = pd.MultiIndex.from_frame(test[[USER, ITEM]]).isin(train_pairs)
    dropped_seen = int(seen.sum())
    test = test.loc[~seen]

    users_without_test = int(train[USER].nunique()) - int(test[USER].nunique())
    return TemporalSplit(
        train=train,
        test=test,
        dropped_unseen_items=dropped_unseen,
        users_without_train=users_without_train,
        users_without_test=users_without_test,
        dropped_seen_pairs=dropped_seen,
    )


def random_rating_split(
    interactions: pd.DataFrame, test_fraction: float = 0.2, seed: int = 42
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rating protocol split: row ``i`` is test where ``default_rng(seed).random(n)[i] < test_fraction``.

    Rows keep the order they are given in (for MovieLens, ``u.data`` order), which is what makes the split
    reproducible outside recforge with the same two lines of numpy. Returns ``(train, test)``.
    """
    _check_fraction(test_fraction, "random_rating_split")
    mask = np.random.default_rng(seed).random(len(interactions)) < test_fraction
    return interactions.loc[~mask], interactions.loc[mask]
