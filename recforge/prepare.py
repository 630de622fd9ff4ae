"""Cleaning of interaction logs and imputation of attribute tables (pure pandas/numpy).

``clean_interactions`` turns validated interactions into one row per (user, item) pair: it drops the rows that
validation flagged, rows of unknown users/items and rows without a rating, exact duplicates, and collapses
repeated events of a pair into its latest event with a ``repeat_count``. Every dropped row is accounted for in
a ``CleaningReport``.

``Imputer`` fills missing values of user/item attribute tables with statistics learned only from the entities
of the training part, so test-only rows never leak into the fill values.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import pandas as pd

from recforge.data.contract import (
    FIRST_TIMESTAMP,
    GENRES,
    ITEM,
    RATING,
    RATING_MISSING,
    REPEAT_COUNT,
    TIMESTAMP,
    TITLE_COLUMNS,
    USER,
    DataError,
    holds_lists,
)

# Columns that clean_interactions adds (named with the data contract, whose loaders keep source columns off
# them): REPEAT_COUNT, the number of events collapsed into the row (>= 1); FIRST_TIMESTAMP, the time of the
# pair's first event (the row's own timestamp is its latest); RATING_MISSING, when some ratings are
# missing, True on the rows whose rating is (kept as events; fill_missing_ratings gives them a rating, the rating
# metrics leave them out).

REASON_UNKNOWN_USER = "unknown user"
REASON_UNKNOWN_ITEM = "unknown item"
REASON_EPOCH_TIMESTAMP = "timestamp at or before 1970-01-01 (epoch 0 or negative)"

#: Plausible ages, as the users suite checks them (expectations/users.json): values outside are treated as missing.
AGE_RANGE = (0, 120)


def blank_implausible_ages(users: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``users`` with ages that are not numbers or lie outside :data:`AGE_RANGE` made missing (the imputer then
    fills them), and how many.

    The suite's hint has always promised this; before 2026-12-07 ages such as -5 and 999 went on into the median
    imputation, the age features and the cold-start age buckets as they were (as text, when one was "unknown").
    """
    if "age" not in users.columns:
        return users, 0
    numeric = pd.api.types.is_numeric_dtype(users["age"])
    ages = users["age"] if numeric else pd.to_numeric(users["age"], errors="coerce")
    low, high = AGE_RANGE
    implausible = users["age"].notna() & ~ages.between(low, high)
    if numeric and not implausible.any():
        return users, 0
    return users.assign(age=ages.mask(implausible)), int(implausible.sum())


# How many offending values an error message shows.
_SHOW = 5


# --------------------------------------------------------------------------------------------------- cleaning


@dataclass(frozen=True)
class CleaningReport:
    """Row accounting of one ``clean_interactions`` call.

    ``input_rows - sum(invalid_rows_dropped.values()) - exact_duplicates_dropped - repeats_collapsed`` always
    equals ``output_rows``; the constructor checks it.
    """

    input_rows: int
    exact_duplicates_dropped: int
    # Events merged into an earlier row of the same (user, item) pair.
    repeats_collapsed: int
    # Reason -> rows dropped for it; each row is counted under the first reason that dropped it.
    invalid_rows_dropped: dict[str, int] = field(default_factory=dict)
    output_rows: int = 0
    # Output rows whose rating is missing: kept as events and marked ``rating_missing`` (not dropped).
    ratings_missing: int = 0

    def __post_init__(self) -> None:
        expected = self.input_rows - self.invalid_dropped - self.exact_duplicates_dropped - self.repeats_collapsed
        if expected != self.output_rows:
            raise ValueError(
                f"cleaning report does not add up: {self.input_rows} input rows"
                f" - {self.invalid_dropped} invalid - {self.exact_duplicates_dropped} duplicates"
                f" - {self.repeats_collapsed} collapsed repeats"
                f" = {expected}, but output_rows is {self.output_rows}"
            )

    @property
    def invalid_dropped(self) -> int:
        """Total rows dropped for any invalid-row reason."""
        return int(sum(self.invalid_rows_dropped.values()))

    def after_collapse(self, collapsed: pd.DataFrame) -> CleaningReport:
        """This report of a ``collapse=False`` cleaning, completed by its events' :func:`collapse_repeats`."""
        if self.repeats_collapsed:
            raise ValueError("after_collapse completes the report of a clean_interactions(collapse=False) call")
        return dataclasses.replace(
            self,
            repeats_collapsed=self.output_rows - len(collapsed),
            output_rows=len(collapsed),
            ratings_missing=_ratings_missing(collapsed),
        )

    def to_records(self) -> list[dict[str, object]]:
        """One ``{"step", "rows"}`` record per accounting line, in pipeline order (for a table artifact)."""
        records: list[dict[str, object]] = [{"step": "input rows", "rows": self.input_rows}]
        records += [
            {"step": f"dropped: {reason}", "rows": count} for reason, count in self.invalid_rows_dropped.items()
        ]
        records.append({"step": "exact duplicates dropped", "rows": self.exact_duplicates_dropped})
        records.append({"step": "repeats collapsed", "rows": self.repeats_collapsed})
        records.append({"step": "output rows", "rows": self.output_rows})
        if self.ratings_missing:
            records.append({"step": "of which rating missing (kept, rating filled in)", "rows": self.ratings_missing})
        return records

    def summary(self) -> str:
        """A one-line human-readable summary."""
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self.invalid_rows_dropped.items() if count)
        invalid = f"{self.invalid_dropped} invalid ({reasons})" if reasons else "0 invalid"
        return (
            f"{self.input_rows} rows in -> {self.output_rows} rows out; dropped {invalid}, "
            f"{self.exact_duplicates_dropped} exact duplicates; "
            f"collapsed {self.repeats_collapsed} repeated events"
            + (
                f"; {self.ratings_missing} rows without a rating kept, their rating filled in"
                if self.ratings_missing
                else ""
            )
        )


def _sample(values: pd.Series | np.ndarray | pd.Index) -> str:
    """A few distinct values for an error message."""
    unique = pd.unique(np.asarray(values, dtype=object))
    shown = ", ".join(repr(v) for v in unique[:_SHOW])
    return shown + (", ..." if len(unique) > _SHOW else "")


def _require_columns(table: pd.DataFrame, columns: Sequence[str], table_name: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(
            f"{table_name} lacks column(s) {missing}; it has {list(table.columns)}. "
            "Map the source's columns to the data contract (recforge/data/contract.py) when loading."
        )


def _timestamp_order_key(timestamps: pd.Series) -> np.ndarray:
    """int64 values that order like the datetimes (any unit, any zone)."""
    if not pd.api.types.is_datetime64_any_dtype(timestamps.dtype):
        raise DataError(
            f"interactions column {TIMESTAMP!r} has dtype {timestamps.dtype}, not datetime; the contract "
            "wants timezone-aware UTC datetimes (e.g. pd.to_datetime(values, unit='s', utc=True))."
        )
    return pd.DatetimeIndex(timestamps).asi8


def _duplicated_rows(frame: pd.DataFrame) -> np.ndarray:
    """``frame.duplicated(keep="first")``, also for extra columns holding lists or arrays (Parquet list columns),
    which pandas cannot hash: those are compared by their text form."""
    try:
        return frame.duplicated(keep="first").to_numpy()
    except TypeError:
        hashable = {
            column: frame[column].map(repr) if frame[column].dtype == object else frame[column]
            for column in frame.columns
        }
        return pd.DataFrame(hashable, index=frame.index).duplicated(keep="first").to_numpy()


def clean_interactions(
    interactions: pd.DataFrame,
    *,
    drop_rows: Mapping[str, np.ndarray] | None = None,
    known_users: pd.Index | None = None,
    known_items: pd.Index | None = None,
    collapse: bool = True,
) -> tuple[pd.DataFrame, CleaningReport]:
    """Clean interactions into one row per (user, item) pair, with full row accounting.

    Steps, in order (rows dropped by an earlier step are not counted again by a later one):

    1. ``drop_rows``: reason -> positional row indices (into ``interactions``) that failed non-critical
       validation checks; dropped and counted per reason.
    2. rows with a missing user id, item id or timestamp (reasons ``"missing user_id"`` etc.; validation
       should have rejected them, but a row is never lost silently), then rows stamped at or before
       1970-01-01T00:00:00Z (:data:`REASON_EPOCH_TIMESTAMP`): an epoch of 0 or less in an event log is a
       placeholder for "unknown" or a sign error, not an event time. If no other row is left, that is a
       DataError (a wrong time column or unit) rather than an empty result.
    3. rows whose user is not in ``known_users`` (``"unknown user"``) or item not in ``known_items``
       (``"unknown item"``), when those are given.
    4. rows with a missing rating are kept (the user had the item) and marked in a ``rating_missing`` column
       when a rating column exists and holds at least one rating (:func:`fill_missing_ratings` fills them in
       after the split); an all-missing rating column means implicit data and is left alone.
    5. exact duplicate rows (all columns equal), keeping the first.
    6. repeated (user, item) events collapse into the latest one (latest timestamp; ties: the later row
       in input order), whose rating, timestamp and extra columns are kept, except that a latest event without
       a rating takes the pair's latest measured one. ``repeat_count`` (int64) is the number of events of the
       pair and ``first_timestamp`` the time of its first; if the input already has them (cleaning twice),
       counts are summed and the earliest first time kept.

    The output is sorted by (timestamp, user_id, item_id) with a fresh RangeIndex; the input is not modified.
    ``collapse=False`` stops before step 6: one row per event, in input order with a fresh RangeIndex, for a
    caller that splits the events by time before collapsing each part (:func:`collapse_repeats`,
    :meth:`CleaningReport.after_collapse`).
    """
    _require_columns(interactions, [USER, ITEM, TIMESTAMP], "interactions")
    n_input = len(interactions)
    keep = np.ones(n_input, dtype=bool)
    dropped: dict[str, int] = {}

    def drop(reason: str, mask: np.ndarray) -> None:
        newly = mask & keep
        dropped[reason] = dropped.get(reason, 0) + int(newly.sum())
        keep[newly] = False

    for reason, rows in (drop_rows or {}).items():
        positions = np.asarray(rows)
        if positions.dtype == bool:
            raise DataError(
                f"drop_rows[{reason!r}] is a boolean mask; pass positional row indices (np.flatnonzero(mask))."
            )
        positions = positions.astype(np.int64, copy=False).ravel()
        bad = positions[(positions < 0) | (positions >= n_input)]
        if len(bad):
            raise DataError(
                f"drop_rows[{reason!r}] holds positions outside the {n_input} interactions rows: "
                f"{_sample(bad)}. Indices must be positions (0..n-1) into the same frame that was validated."
            )
        mask = np.zeros(n_input, dtype=bool)
        mask[positions] = True
        drop(reason, mask)

    for column in (USER, ITEM, TIMESTAMP):
        missing = interactions[column].isna().to_numpy()
        if missing.any():
            drop(f"missing {column}", missing)

    stamped = ~interactions[TIMESTAMP].isna().to_numpy()
    not_after_epoch = (_timestamp_order_key(interactions[TIMESTAMP]) <= 0) & stamped
    if not_after_epoch.any():
        if keep.any() and (not_after_epoch | ~keep).all():
            raise DataError(
                f"every interaction's {TIMESTAMP} is at or before 1970-01-01 (e.g. "
                f"{_sample(interactions.loc[keep, TIMESTAMP].astype(str))}): the time column holds "
                "placeholders or is in another unit; map the real event time column, or set the source's "
                "timestamp_unit"
            )
        drop(REASON_EPOCH_TIMESTAMP, not_after_epoch)

    for column, known, reason in (
        (USER, known_users, REASON_UNKNOWN_USER),
        (ITEM, known_items, REASON_UNKNOWN_ITEM),
    ):
        if known is None:
            continue
        unknown = ~interactions[column].isin(known).to_numpy()
        if keep.any() and (unknown | ~keep).all():
            # Every remaining row unknown is almost always an id type mismatch, not real data.
            raise DataError(
                f"none of the interactions' {column} values are in the known {column}s (e.g. interactions "
                f"have {_sample(interactions.loc[keep, column])} with dtype {interactions[column].dtype}; "
                f"known has {_sample(known)} with dtype {known.dtype}). Read ids as strings in every table."
            )
        drop(reason, unknown)

    frame = interactions.iloc[np.flatnonzero(keep)] if not keep.all() else interactions
    if RATING in frame.columns and RATING_MISSING not in frame.columns:
        missing_rating = frame[RATING].isna().to_numpy()
        if missing_rating.any() and not missing_rating.all():
            # Still an event (the user had the item: never recommend it back); marked for fill_missing_ratings.
            frame = frame.assign(**{RATING_MISSING: missing_rating})
    n_valid = len(frame)

    duplicated = _duplicated_rows(frame)
    n_duplicates = int(duplicated.sum())
    if n_duplicates:
        frame = frame.iloc[np.flatnonzero(~duplicated)]

    result = collapse_repeats(frame) if collapse else frame.reset_index(drop=True)
    report = CleaningReport(
        input_rows=n_input,
        exact_duplicates_dropped=n_duplicates,
        repeats_collapsed=n_valid - n_duplicates - len(result),
        invalid_rows_dropped=dropped,
        output_rows=len(result),
        ratings_missing=_ratings_missing(result),
    )
    return result, report


def measured(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without the rows marked ``rating_missing``: their rating is filled in, not measured."""
    if RATING_MISSING not in frame.columns:
        return frame
    return frame[~frame[RATING_MISSING].to_numpy(bool)]


def _ratings_missing(frame: pd.DataFrame) -> int:
    return int(frame[RATING_MISSING].sum()) if RATING_MISSING in frame.columns else 0


def fill_missing_ratings(train: pd.DataFrame, frames: Sequence[pd.DataFrame]) -> list[pd.DataFrame]:
    """``frames`` with each rating marked missing (``rating_missing``) set to its user's mean rating in ``train``.

    A user without a rating in ``train`` gets the mean of every rating there; when ``train`` has none, the ratings
    stay missing (still marked). Only ``train`` is read, so no held-out rating shapes a filled one: the fallback
    was the mean of every frame's ratings, the held-out ones included. Frames without the marker column come
    back as they are.
    """
    if RATING_MISSING not in train.columns:
        return list(frames)
    rated = measured(train)
    by_user = rated.groupby(USER, sort=False)[RATING].mean()
    fallback = rated[RATING].mean()
    filled = []
    for frame in frames:
        if RATING_MISSING not in frame.columns or not frame[RATING_MISSING].any():
            filled.append(frame)
            continue
        missing = frame[RATING_MISSING].to_numpy(bool)
        values = frame[RATING].to_numpy(np.float64, na_value=np.nan, copy=True)
        values[missing] = frame.loc[missing, USER].map(by_user).fillna(fallback).to_numpy(np.float64)
        filled.append(frame.assign(**{RATING: values}))
    return filled


def collapse_repeats(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, item): the latest event plus ``repeat_count`` (events summed when the frame has one) and
    ``first_timestamp`` (the earliest event's time); sorted by (timestamp, user, item) with a fresh RangeIndex."""
    # Codes from sorted uniques order like the strings themselves, so one set of integer codes serves both the
    # pair grouping and the final (timestamp, user, item) sort; integer lexsort is far faster than
    # string sorts.
    user_codes, _ = pd.factorize(frame[USER], sort=True)
    item_codes, _ = pd.factorize(frame[ITEM], sort=True)
    time_key = _timestamp_order_key(frame[TIMESTAMP])
    n = len(frame)
    position = np.arange(n, dtype=np.int64)

    # Sort by pair, then time, then input position: the last row of each pair's run is the event to keep.
    order = np.lexsort((position, time_key, item_codes, user_codes))
    pair_u, pair_i = user_codes[order], item_codes[order]
    is_last = np.ones(n, dtype=bool)
    if n:
        is_last[:-1] = (pair_u[1:] != pair_u[:-1]) | (pair_i[1:] != pair_i[:-1])
    last_positions = order[is_last]
    ends = np.flatnonzero(is_last)  # each pair's run in ``order``: starts[r] .. ends[r]
    starts = np.concatenate(([0], ends[:-1] + 1)) if len(ends) else ends
    rating_from = _latest_measured(frame, order, starts, ends)

    if REPEAT_COUNT in frame.columns:
        previous = pd.to_numeric(frame[REPEAT_COUNT], errors="coerce").fillna(1).to_numpy(np.int64)
        events = np.cumsum(previous[order])
    else:
        events = np.arange(1, n + 1, dtype=np.int64)
    # Events per pair = difference of the running event total at consecutive run ends.
    run_totals = events[is_last]
    counts = np.diff(run_totals, prepend=0).astype(np.int64)

    # Final order among the kept rows: timestamp, user, item.
    final = np.lexsort((item_codes[last_positions], user_codes[last_positions], time_key[last_positions]))
    out = frame.iloc[last_positions[final]].copy()
    out[REPEAT_COUNT] = counts[final]
    # The latest event's timestamp is the row's; the features' "first event" needs the earliest (QA: a pair
    # repeated later made days_active and an item's age in the data shorter than they were).
    firsts = frame[FIRST_TIMESTAMP] if FIRST_TIMESTAMP in frame.columns else frame[TIMESTAMP]
    if not pd.api.types.is_datetime64_any_dtype(firsts.dtype):  # a code-built frame's own column of that name
        raise DataError(
            f"interactions column {FIRST_TIMESTAMP!r} holds {firsts.dtype}, but the name is recforge's own (the first "
            "event of a collapsed pair, a datetime): rename that column (loaders keep it as source_first_timestamp)"
        )
    out[FIRST_TIMESTAMP] = firsts.iloc[_earliest_per_run(_timestamp_order_key(firsts), order, starts)[final]].array
    if rating_from is not None:
        # A pair whose latest event lacks a rating keeps its latest measured one: marked missing, the real
        # rating was replaced by the user's mean and left out of RMSE.
        source = rating_from[final]
        rated = source >= 0
        if rated.any():
            values = out[RATING].to_numpy(np.float64, na_value=np.nan, copy=True)
            values[rated] = frame[RATING].to_numpy(np.float64, na_value=np.nan)[source[rated]]
            out[RATING] = values
            out[RATING_MISSING] = out[RATING_MISSING].to_numpy(bool) & ~rated
    return out.reset_index(drop=True)


def _earliest_per_run(keys: np.ndarray, order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per run of ``order`` (beginning at ``starts``): the frame row with the smallest ``keys``."""
    sorted_keys = keys[order]
    smallest = np.minimum.reduceat(sorted_keys, starts) if len(starts) else sorted_keys[:0]
    run = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(order))))
    hits = np.flatnonzero(sorted_keys == smallest[run])
    _, first_hit = np.unique(run[hits], return_index=True)
    return order[hits[first_hit]]


def _latest_measured(frame: pd.DataFrame, order: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray | None:
    """Per run of ``order`` (``starts`` to ``ends``): the frame row of its latest event with a rating, when its
    latest event has none, else -1; None when no run's latest event lacks a rating."""
    if RATING_MISSING not in frame.columns or RATING not in frame.columns:
        return None
    missing = frame[RATING_MISSING].to_numpy(bool)[order]
    if not missing[ends].any():
        return None
    latest = np.maximum.accumulate(np.where(missing, -1, np.arange(len(order))))  # latest measured position so far
    usable = missing[ends] & (latest[ends] >= starts)
    return np.where(usable, order[np.maximum(latest[ends], 0)], -1)


# ------------------------------------------------------------------------------------------------- imputation

ImputeStrategy = Literal["mean", "median", "most_frequent", "constant"]
_STRATEGIES: tuple[str, ...] = get_args(ImputeStrategy)
_UNKNOWN = "unknown"


@dataclass(frozen=True)
class ImputeRule:
    """How to fill one column: a strategy and, for ``"constant"``, the value."""

    column: str
    strategy: ImputeStrategy
    fill_value: object = None

    def __post_init__(self) -> None:
        if self.strategy not in _STRATEGIES:
            raise ValueError(
                f"impute rule for column {self.column!r}: unknown strategy {self.strategy!r}; "
                f"use one of {list(_STRATEGIES)}"
            )
        if self.strategy == "constant" and self.fill_value is None:
            raise ValueError(
                f"impute rule for column {self.column!r}: strategy 'constant' needs a fill_value, "
                f"e.g. ImputeRule({self.column!r}, 'constant', fill_value='unknown')"
            )


def _is_numeric(series: pd.Series) -> bool:
    """Numbers that have a mean/median; booleans are categories here."""
    return pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)


def _python_scalar(value: object) -> object:
    """numpy scalars -> Python scalars, so statistics and reports serialise to JSON."""
    return value.item() if isinstance(value, np.generic) else value


def _most_frequent(values: pd.Series, numeric: bool) -> object:
    """The most frequent non-missing value (ties: the smallest); NaN/"unknown" when all are missing."""
    counts = values.value_counts(dropna=True)
    if counts.empty:
        # Multi-label text such as genres falls here too: "unknown" is a label downstream features understand.
        return np.nan if numeric else _UNKNOWN
    top = counts.index[counts.to_numpy() == counts.max()]
    try:
        return _python_scalar(sorted(top)[0])
    except TypeError:  # mixed, unorderable values: keep the first seen among the tied
        return _python_scalar(top[0])


def declared_rules(table: pd.DataFrame, id_column: str, declared: Mapping[str, str]) -> tuple[ImputeRule, ...]:
    """Rules for every attribute column: the default (numeric → median, other → most_frequent) unless declared.

    Category labels (``genres``) are left missing by default: the most frequent combination ("Drama|Sci-Fi")
    invented labels for each item without any, which fed the genre-share features and content scores, while an item
    without labels already counts in those features' denominators only. So are names (:data:`TITLE_COLUMNS`): the
    most frequent title is another item's name, which published reasons and reports then gave the item.

    ``declared`` maps a column to ``"mean"``, ``"median"``, ``"most_frequent"``, ``"constant:VALUE"`` or ``"none"``
    (leave its missing values alone). A declared column the table lacks is an error naming the table's columns.
    """
    unknown = sorted(set(declared) - set(table.columns))
    if unknown:
        raise DataError(
            f"imputation declared for column(s) {unknown} that the table does not have; its columns are "
            f"{list(table.columns)}"
        )
    rules = []
    for column in table.columns:
        if column == id_column:
            continue
        spec = declared.get(column)
        if spec is None and (column == GENRES or column in TITLE_COLUMNS or holds_lists(table[column])):
            continue  # a list-valued column (Parquet lists) has no single value to fill in either
        if spec is None:
            rules.append(ImputeRule(column, "median" if _is_numeric(table[column]) else "most_frequent"))
        elif spec == "none":
            continue
        elif spec.startswith("constant:"):
            raw = spec.removeprefix("constant:")
            try:
                value: object = float(raw) if _is_numeric(table[column]) else raw
            except ValueError:
                raise DataError(
                    f"column {column!r} is numeric; its constant fill value must be a number, got {raw!r}"
                ) from None
            rules.append(ImputeRule(column, "constant", value))
        else:
            rules.append(ImputeRule(column, spec))  # type: ignore[arg-type]  # ImputeRule validates the name
    return tuple(rules)


class Imputer:
    """Fills missing values of an attribute table with statistics of the training entities (sklearn-like).

    ``rules=None`` decides the rules at ``fit``: every column except the id column, numeric → median, other
    (text, multi-label text such as ``genres``, booleans, categories, datetimes) → most_frequent, with
    ``"unknown"`` for a text column that is entirely missing. A numeric column entirely missing among the fit
    rows has no median: its statistic is NaN and it stays missing.

    After ``fit``: ``rules_`` (the rules in force), ``statistics_`` (column → fill value), ``id_column_``.
    """

    def __init__(self, rules: Sequence[ImputeRule] | None = None) -> None:
        self.rules = rules

    def fit(self, table: pd.DataFrame, *, id_column: str, fit_ids: pd.Index | None = None) -> Imputer:
        """Learn fill values from the rows whose ``id_column`` is in ``fit_ids`` (all rows when None).

        Pass the ids of the entities present in the training interactions, so test-only rows never shape the
        fill values.
        """
        _require_columns(table, [id_column], "attribute table")
        rules = self._resolve_rules(table, id_column)
        rows = table
        if fit_ids is not None:
            rows = table.loc[table[id_column].isin(fit_ids).to_numpy()]
            if rows.empty and not table.empty:
                raise DataError(
                    f"none of the table's {id_column} values are in fit_ids (table has "
                    f"{_sample(table[id_column])} with dtype {table[id_column].dtype}; fit_ids has "
                    f"{_sample(fit_ids)} with dtype {fit_ids.dtype}). Pass the training entities' ids, "
                    "read as strings like the table's ids."
                )
        statistics: dict[str, object] = {}
        for rule in rules:
            values = rows[rule.column]
            numeric = _is_numeric(values)
            if rule.strategy in ("mean", "median") and not numeric:
                raise DataError(
                    f"impute rule {rule.strategy!r} for column {rule.column!r} needs numbers, but the "
                    f"column has dtype {table[rule.column].dtype}; use 'most_frequent' or 'constant' for it."
                )
            if rule.strategy == "mean":
                value: object = float(values.mean()) if values.notna().any() else np.nan
            elif rule.strategy == "median":
                value = float(values.median()) if values.notna().any() else np.nan
            elif rule.strategy == "most_frequent":
                value = _most_frequent(values, numeric)
            else:
                value = _check_constant(rule, table[rule.column])
            statistics[rule.column] = value
        self.rules_: tuple[ImputeRule, ...] = rules
        self.statistics_: dict[str, object] = statistics
        self.id_column_: str = id_column
        self._filled: dict[str, int] = {rule.column: 0 for rule in rules}
        return self

    def transform(self, table: pd.DataFrame) -> pd.DataFrame:
        """A copy of ``table`` with missing values filled; the id column and unruled columns are untouched."""
        self._check_fitted()
        missing = [rule.column for rule in self.rules_ if rule.column not in table.columns]
        if missing:
            raise DataError(
                f"the table to impute lacks column(s) {missing} that the imputer was fitted on; it has "
                f"{list(table.columns)}. Transform tables with the same columns as the fitted one."
            )
        out = table.copy()
        filled: dict[str, int] = {}
        for rule in self.rules_:
            value = self.statistics_[rule.column]
            column = out[rule.column]
            holes = column.isna()
            n_holes = int(holes.sum())
            if n_holes == 0 or pd.isna(value):
                filled[rule.column] = 0
                continue
            out[rule.column] = _fill(column, value)
            filled[rule.column] = n_holes
        self._filled = filled
        return out

    def fit_transform(self, table: pd.DataFrame, *, id_column: str, fit_ids: pd.Index | None = None) -> pd.DataFrame:
        """``fit`` then ``transform`` the same table."""
        return self.fit(table, id_column=id_column, fit_ids=fit_ids).transform(table)

    def report(self) -> list[dict[str, object]]:
        """Per column: strategy, fill value, and values filled by the last ``transform`` (0 before any)."""
        self._check_fitted()
        return [
            {
                "column": rule.column,
                "strategy": rule.strategy,
                "value": self.statistics_[rule.column],
                "filled": self._filled.get(rule.column, 0),
            }
            for rule in self.rules_
        ]

    def _check_fitted(self) -> None:
        if not hasattr(self, "statistics_"):
            raise RuntimeError("this Imputer is not fitted yet: call fit(table, id_column=..., fit_ids=...) first")

    def _resolve_rules(self, table: pd.DataFrame, id_column: str) -> tuple[ImputeRule, ...]:
        if self.rules is None:
            return tuple(
                ImputeRule(column, "median" if _is_numeric(table[column]) else "most_frequent")
                for column in table.columns
                if column != id_column
            )
        rules = tuple(self.rules)
        unknown = [rule.column for rule in rules if rule.column not in table.columns]
        if unknown:
            raise DataError(
                f"impute rule(s) name column(s) {unknown} that the table does not have; its columns are "
                f"{list(table.columns)}. Fix the rule's column name."
            )
        if any(rule.column == id_column for rule in rules):
            raise DataError(
                f"an impute rule names the id column {id_column!r}; ids are never imputed (rows without "
                "an id are rejected by validation). Remove that rule."
            )
        repeated = sorted(column for column, n in Counter(rule.column for rule in rules).items() if n > 1)
        if repeated:
            raise DataError(f"more than one impute rule for column(s) {repeated}; keep one rule per column.")
        return rules


def _check_constant(rule: ImputeRule, column: pd.Series) -> object:
    """The constant fill value, checked against the column's kind so a fill never changes its dtype."""
    value = rule.fill_value
    if pd.api.types.is_string_dtype(column.dtype) and not isinstance(column.dtype, pd.CategoricalDtype):
        if not isinstance(value, str):
            raise DataError(
                f"impute rule for text column {rule.column!r}: fill_value {value!r} is not text; "
                f"use a string such as {str(value)!r}."
            )
    elif _is_numeric(column) and (isinstance(value, bool) or not isinstance(value, int | float | np.number)):
        raise DataError(
            f"impute rule for numeric column {rule.column!r}: fill_value {value!r} is not a number; "
            "use a number, or make the column text first."
        )
    return _python_scalar(value)


def _fill(column: pd.Series, value: object) -> pd.Series:
    """``column.fillna(value)``, widening integer columns to float and categories to include the value."""
    if isinstance(column.dtype, pd.CategoricalDtype) and value not in column.cat.categories:
        column = column.cat.add_categories([value])
    elif pd.api.types.is_integer_dtype(column.dtype) and not float(value).is_integer():  # type: ignore[arg-type]
        # A nullable Int64 column cannot hold a fractional median: widen rather than round.
        column = column.astype("float64")
    return column.fillna(value)
