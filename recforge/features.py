"""User and item features computed from the training interactions only (pure pandas/numpy).

Both functions take the TRAINING part of a time split and a reference time ``as_of`` (normally the split's cutoff);
training events after ``as_of`` are an error, because features must not see the future.

Events: a row stands for ``repeat_count`` events when that column is present (output of
``recforge.prepare.clean_interactions``), otherwise for one event. Counts (``activity_count``, ``popularity``,
category shares) count events; ratings are averaged over rows, each row holding the pair's latest rating.
Counts are int64; every other numeric output is float64. Rows come sorted by id with a fresh RangeIndex.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

import numpy as np
import pandas as pd

from recforge.data.contract import (
    CATEGORY_SEPARATOR,
    FIRST_TIMESTAMP,
    GENRES,
    ITEM,
    RATING,
    RATING_MISSING,
    TIMESTAMP,
    USER,
    DataError,
)
from recforge.prepare import REPEAT_COUNT

SHARE_PREFIX = "share_"
"""Prefix of the per-category preference-share columns of ``user_features``."""

# Prefix given to an item attribute whose name collides with a computed item feature.
_ATTRIBUTE_PREFIX = "attr_"
_SECONDS_PER_DAY = 86_400.0


def snake_case(label: str) -> str:
    """A category label as a column-name fragment: ``"Sci-Fi"`` → ``sci_fi``, ``"Children's"`` → ``childrens``."""
    text = re.sub(r"['’`]", "", str(label).strip())
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text)  # CamelCase -> Camel_Case
    text = re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()
    return text


def _require(table: pd.DataFrame, columns: list[str], name: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(
            f"{name} lacks column(s) {missing}; it has {list(table.columns)}. "
            "Pass interactions in the data contract's shape (recforge/data/contract.py)."
        )


def _as_of_like(as_of: datetime, timestamps: pd.Series) -> pd.Timestamp:
    """``as_of`` in the timestamps' zone; a naive ``as_of`` is read as UTC, the contract's zone."""
    reference = pd.Timestamp(as_of)
    zone = getattr(timestamps.dtype, "tz", None)
    if zone is not None:
        return reference.tz_localize("UTC") if reference.tz is None else reference.tz_convert(zone)
    # Naive timestamps (outside the contract) are compared as UTC wall time.
    return reference.tz_convert("UTC").tz_localize(None) if reference.tz is not None else reference


def _prepare(train: pd.DataFrame, as_of: datetime) -> tuple[pd.DataFrame, pd.Timestamp]:
    """The columns features need (ids, events, rating, timestamp) and ``as_of`` in the timestamps' zone."""
    _require(train, [USER, ITEM, TIMESTAMP], "training interactions")
    timestamps = train[TIMESTAMP]
    if not pd.api.types.is_datetime64_any_dtype(timestamps.dtype):
        raise DataError(
            f"training interactions column {TIMESTAMP!r} has dtype {timestamps.dtype}, not datetime; the contract "
            "wants timezone-aware UTC datetimes."
        )
    reference = _as_of_like(as_of, timestamps)
    late = timestamps > reference
    if late.any():
        raise DataError(
            f"{int(late.sum())} training interactions are later than as_of={reference} (latest "
            f"{timestamps.max()}); features must only see the past. Pass the split's cutoff as as_of, or "
            "the training part of the split only."
        )
    if REPEAT_COUNT in train.columns:
        events = pd.to_numeric(train[REPEAT_COUNT], errors="coerce").fillna(1).to_numpy(np.int64)
    else:
        events = np.ones(len(train), dtype=np.int64)
    ratings = (
        pd.to_numeric(train[RATING], errors="coerce").to_numpy(np.float64)
        if RATING in train.columns
        else np.full(len(train), np.nan)
    )
    if RATING_MISSING in train.columns:
        # A filled-in rating is a user's mean, not a measurement: an item nobody rated had a mean_rating (QA).
        ratings = np.where(train[RATING_MISSING].to_numpy(bool), np.nan, ratings)
    # Collapsed rows carry their pair's first event too: the row's timestamp is its latest.
    firsts = train[FIRST_TIMESTAMP] if FIRST_TIMESTAMP in train.columns else timestamps
    # ``.array`` keeps each column's dtype (str ids, tz-aware datetimes) and drops the input's index.
    frame = pd.DataFrame(
        {
            USER: train[USER].array,
            ITEM: train[ITEM].array,
            "_events": events,
            "_rating": ratings,
            "_ts": timestamps.array,
            "_first": firsts.array,
        }
    )
    return frame, reference


def _days(delta: pd.Series) -> pd.Series:
    return (delta.dt.total_seconds() / _SECONDS_PER_DAY).astype(np.float64)


def _activity(frame: pd.DataFrame, key: str, other: str, reference: pd.Timestamp) -> pd.DataFrame:
    """Per ``key``: event count, distinct ``other`` ids, rating mean/std, first/last event."""
    grouped = frame.groupby(key, sort=True, observed=True)
    stats = grouped.agg(
        events=("_events", "sum"),
        distinct=(other, "nunique"),
        mean_rating=("_rating", "mean"),
        first=("_first", "min"),
        last=("_ts", "max"),
    )
    stats["events"] = stats["events"].astype(np.int64)
    stats["distinct"] = stats["distinct"].astype(np.int64)
    stats["mean_rating"] = stats["mean_rating"].astype(np.float64)
    # Population std (ddof=0): a single rating has spread 0, not NaN.
    stats["rating_std"] = grouped["_rating"].std(ddof=0).astype(np.float64)
    stats["since_first"] = _days(reference - stats["first"])
    stats["since_last"] = _days(reference - stats["last"])
    stats["active"] = _days(stats["last"] - stats["first"])
    return stats


#: Longest label in a feature name: ``share_<label>`` must fit the features table's ``feature`` column
#: (VARCHAR(200)). A longer label failed the publish, after training and its retries.
_MAX_LABEL_CHARS = 200 - len(SHARE_PREFIX)


def _bounded(label: str) -> str:
    """``label``, or when too long for a feature name its head plus a hash of the whole (distinct labels stay
    distinct)."""
    if len(label) <= _MAX_LABEL_CHARS:
        return label
    digest = hashlib.sha256(label.encode("utf-8")).hexdigest()[:12]
    return f"{label[: _MAX_LABEL_CHARS - len(digest) - 1]}_{digest}"


def _item_labels(items: pd.DataFrame, category_column: str) -> pd.DataFrame:
    """Unique (item_id, label) pairs from a ``|``-separated category column, labels in snake_case."""
    _require(items, [ITEM, category_column], "items table")
    labels = items[[ITEM, category_column]].dropna()
    exploded = (
        labels.assign(_label=labels[category_column].astype(str).str.split(CATEGORY_SEPARATOR, regex=False))
        .explode("_label")
        .loc[:, [ITEM, "_label"]]
    )
    # Normalise each distinct label once (there are few), then map: far cheaper than per-row regexes.
    distinct = pd.unique(exploded["_label"].to_numpy(dtype=object))
    normalised = {label: _bounded(snake_case(label)) for label in distinct}
    exploded["_label"] = exploded["_label"].map(normalised)
    exploded = exploded.loc[exploded["_label"].astype(bool)]
    return exploded.drop_duplicates(ignore_index=True)


def user_features(
    train: pd.DataFrame,
    as_of: datetime,
    items: pd.DataFrame | None = None,
    category_column: str = GENRES,
) -> pd.DataFrame:
    """One row per training user.

    Columns: ``user_id``; ``activity_count`` (events, int64); ``distinct_items`` (int64); ``mean_rating`` (NaN
    without ratings); ``days_since_last_event`` (to ``as_of``); ``days_active`` (last − first event);
    ``repeat_share`` (share of the user's events that repeat an earlier (user, item) pair:
    1 − distinct_items / activity_count); and, when ``items`` has ``category_column``, one ``share_<label>``
    per category label: the fraction of the user's events on items carrying that label (labels in snake_case;
    an item may carry several labels, and items without labels count in the denominator only).
    """
    frame, reference = _prepare(train, as_of)
    stats = _activity(frame, USER, ITEM, reference)
    out = pd.DataFrame(
        {
            USER: stats.index.to_numpy(),
            "activity_count": stats["events"].to_numpy(np.int64),
            "distinct_items": stats["distinct"].to_numpy(np.int64),
            "mean_rating": stats["mean_rating"].to_numpy(np.float64),
            "days_since_last_event": stats["since_last"].to_numpy(np.float64),
            "days_active": stats["active"].to_numpy(np.float64),
        }
    )
    out[USER] = out[USER].astype(train[USER].dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["repeat_share"] = 1.0 - out["distinct_items"] / out["activity_count"]

    if items is not None and category_column in items.columns:
        labels = _item_labels(items, category_column)
        # Explode categories once: each event row meets each of its item's labels, then a weighted crosstab.
        tagged = frame[[USER, ITEM, "_events"]].merge(labels, on=ITEM, how="inner")
        counts = tagged.pivot_table(
            index=USER, columns="_label", values="_events", aggfunc="sum", fill_value=0, observed=True
        )
        counts = counts.reindex(index=stats.index, fill_value=0).reindex(columns=sorted(counts.columns))
        shares = counts.to_numpy(np.float64) / stats["events"].to_numpy(np.float64)[:, None]
        share_frame = pd.DataFrame(shares, columns=[f"{SHARE_PREFIX}{label}" for label in counts.columns])
        out = pd.concat([out, share_frame], axis=1)
    return out


def item_features(train: pd.DataFrame, as_of: datetime, items: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per training item.

    Columns: ``item_id``; ``popularity`` (events, int64); ``distinct_users`` (int64); ``popularity_rank_pct``
    (share of the other items strictly more popular: 0 = most popular, ties share the better rank, 1 = least
    popular when untied); ``mean_rating`` and ``rating_std`` (population std, ddof=0; NaN without ratings);
    ``days_since_first_event`` (item age in the data) and ``days_since_last_event`` (to ``as_of``); then the
    numeric columns of ``items`` passed through as float64 (a name clashing with a computed column gets the
    prefix ``attr_``). Items that only appear in ``items`` (no training events) get no row.
    """
    frame, reference = _prepare(train, as_of)
    stats = _activity(frame, ITEM, USER, reference)
    popularity = stats["events"].to_numpy(np.int64)
    n_items = len(popularity)
    # Items strictly more popular = rank among descending popularity with ties at their best ("min") rank.
    more_popular = pd.Series(popularity).rank(method="min", ascending=False).to_numpy(np.float64) - 1.0
    rank_pct = more_popular / (n_items - 1) if n_items > 1 else np.zeros(n_items, dtype=np.float64)
    out = pd.DataFrame(
        {
            ITEM: stats.index.to_numpy(),
            "popularity": popularity,
            "distinct_users": stats["distinct"].to_numpy(np.int64),
            "popularity_rank_pct": rank_pct.astype(np.float64),
            "mean_rating": stats["mean_rating"].to_numpy(np.float64),
            "rating_std": stats["rating_std"].to_numpy(np.float64),
            "days_since_first_event": stats["since_first"].to_numpy(np.float64),
            "days_since_last_event": stats["since_last"].to_numpy(np.float64),
        }
    )
    out[ITEM] = out[ITEM].astype(train[ITEM].dtype)

    if items is not None:
        _require(items, [ITEM], "items table")
        numeric = [
            column
            for column in items.columns
            if column != ITEM
            and pd.api.types.is_numeric_dtype(items[column].dtype)
            and not pd.api.types.is_bool_dtype(items[column].dtype)
        ]
        if numeric:
            # One attribute row per item: a duplicated item id would otherwise duplicate feature rows.
            attributes = items[[ITEM, *numeric]].drop_duplicates(subset=ITEM, keep="first")
            attributes = attributes.astype({column: np.float64 for column in numeric})
            attributes = attributes.rename(columns={c: f"{_ATTRIBUTE_PREFIX}{c}" for c in numeric if c in out.columns})
            attributes[ITEM] = attributes[ITEM].astype(out[ITEM].dtype)
            out = out.merge(attributes, on=ITEM, how="left", validate="one_to_one")
    return out
