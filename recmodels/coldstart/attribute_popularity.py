"""Attribute-aware popularity (``segment_popularity``): what users who share a new user's attributes liked.

A *segment* is the set of training users sharing the values of one or more attribute columns (``occupation =
student``; ``age = 25-30 & gender = F``). For a user, the chain backs off from the most specific segment with
enough support to coarser ones: combinations of ``max_order`` columns first, then fewer, and among equally many
columns the segment with the fewest users (the most specific one), ties by column order. A user whose attributes
are all missing, or whose every segment has fewer than ``min_support`` active training users, gets global
popularity. Segment scores are shrunk towards global popularity with ``smoothing`` pseudo-users, so that a
segment of 25 users does not rank an item one of them happened to watch above a universally popular one.

Attributes reach the model as integer codes aligned to user indices (:class:`UserAttributes`, ``-1`` = missing);
:func:`encode_user_attributes` builds them from a pandas frame at the edge (numeric columns bucketed by quantile).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from recmodels.base import ModelConfig, Recommender, RunSettings, csr_from_state, csr_state
from recmodels.data import Interactions

POPULARITY_LABEL = "popularity"
SEGMENT_PREFIX = "segment_popularity:"


@dataclass(frozen=True)
class UserAttributes:
    """Categorical user attributes as int codes, one array per column aligned to user rows; ``-1`` = missing.

    levels: per column, the label of each code (``levels["occupation"][3] == "student"``), used in strategy
        labels and to check that fit-time and query-time codes mean the same thing.
    """

    codes: dict[str, np.ndarray]
    levels: dict[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        lengths = {len(v) for v in self.codes.values()}
        if len(lengths) > 1:
            raise ValueError(f"attribute columns differ in length: {sorted(lengths)}")
        for column, values in self.codes.items():
            if column not in self.levels:
                raise ValueError(f"attribute column {column!r} has no levels")
            if len(values) and (values.min() < -1 or values.max() >= len(self.levels[column])):
                raise ValueError(f"codes of {column!r} must lie in [-1, {len(self.levels[column])})")

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.codes)

    def __len__(self) -> int:
        return len(next(iter(self.codes.values()))) if self.codes else 0

    def take(self, rows: np.ndarray) -> UserAttributes:
        """The attributes of ``rows`` (``-1`` rows get all-missing attributes)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = {
            c: np.where(rows >= 0, v[np.maximum(rows, 0)], -1) if len(v) else np.full(len(rows), -1)
            for c, v in self.codes.items()
        }
        return UserAttributes(out, self.levels)


def encode_user_attributes(
    frame: Any,
    ids: Sequence[object],
    id_column: str = "user_id",
    columns: Sequence[str] | None = None,
    n_buckets: int = 4,
    max_levels: int = 50,
    like: UserAttributes | None = None,
) -> UserAttributes:
    """Codes for the users ``ids`` (in that order) from the pandas ``frame`` of user attributes.

    columns: the attribute columns; by default every column but ``id_column`` except text columns with more than
        ``max_levels`` distinct values (a zip code identifies a handful of users: no segment would reach support).
    n_buckets: numeric columns are cut into this many quantile buckets (edges from ``frame``'s values).
    like: reuse the levels (and bucket edges, stored as the labels) of an earlier encoding, so that codes built
        at serving time mean what they meant at fit time; unseen values become ``-1``.
    """
    import pandas as pd  # only at this edge: models see the numpy codes

    table = frame.drop_duplicates(id_column).set_index(id_column)
    rows = table.reindex(pd.Index(ids))
    if columns is None:
        columns = (
            list(like.columns)
            if like is not None
            else [
                c
                for c in table.columns
                if pd.api.types.is_numeric_dtype(table[c]) or table[c].nunique(dropna=True) <= max_levels
            ]
        )
    codes: dict[str, np.ndarray] = {}
    levels: dict[str, tuple[str, ...]] = {}
    for column in columns:
        values = rows[column]
        known = like.levels[column] if like is not None else None
        if pd.api.types.is_numeric_dtype(table[column]) and not pd.api.types.is_bool_dtype(table[column]):
            edges = _bucket_edges(known) if known is not None else _quantile_edges(table[column], n_buckets)
            numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
            code = np.searchsorted(edges, numbers, side="right")
            codes[column] = np.where(np.isnan(numbers), -1, code).astype(np.int32)
            levels[column] = known if known is not None else _bucket_labels(edges)
        else:
            text = values.astype("string")
            names = known if known is not None else tuple(sorted(table[column].dropna().astype(str).unique()))
            lookup = {name: i for i, name in enumerate(names)}
            codes[column] = np.array([-1 if pd.isna(v) else lookup.get(str(v), -1) for v in text], dtype=np.int32)
            levels[column] = names
    return UserAttributes(codes, levels)


def _quantile_edges(values: Any, n_buckets: int) -> np.ndarray:
    numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
    numbers = numbers[~np.isnan(numbers)]
    if len(numbers) == 0 or n_buckets < 2:
        return np.empty(0)
    edges = np.quantile(numbers, np.linspace(0, 1, n_buckets + 1)[1:-1])
    # Six significant digits, which the labels (the saved form of the edges) hold exactly.
    return np.unique(np.array([float(f"{edge:.6g}") for edge in edges]))


def _bucket_labels(edges: np.ndarray) -> tuple[str, ...]:
    """``("<e0", "e0-e1", …, ">=eN")``, the labels published in strategy names and saved as the edges' form.

    The edges are rounded to 6 significant digits when fitted (:func:`_quantile_edges`), so ``:g`` writes them
    exactly and :func:`_bucket_edges` reads back what the fit used (full-precision labels overflowed the
    recommendations table's 100-character strategy column)."""
    if len(edges) == 0:
        return ("all",)
    inner = [f"{lo:g}-{hi:g}" for lo, hi in itertools.pairwise(edges)]
    return (f"<{edges[0]:g}", *inner, f">={edges[-1]:g}")


_LEADING_NUMBER = re.compile(r"^-?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?")


def _bucket_edges(labels: tuple[str, ...]) -> np.ndarray:
    """The edges :func:`_bucket_labels` wrote into ``labels``: the first label's, each later bucket's lower edge,
    and the last label's. A lower edge leads its label: "-5.25--3.5" was read as 3.5 by splitting at the last
    "-", so new users got another segment at serving time than at fit time."""
    if labels == ("all",):
        return np.empty(0)
    lows = []
    for label in labels[2:-1]:
        match = _LEADING_NUMBER.match(label)
        if match is None:
            raise ValueError(f"bucket label {label!r} does not start with a number")
        lows.append(float(match.group()))
    last = [float(labels[-1][2:])] if len(labels) > 2 else []  # "<e0", ">=e0": one edge for both labels
    return np.array([float(labels[0][1:]), *lows, *last])


@dataclass(frozen=True)
class SegmentPopularityConfig(ModelConfig):
    """Hyperparameters of :class:`SegmentPopularity`.

    min_support: a segment is used only when at least this many training users with events belong to it.
    max_order: the most attribute columns combined into one segment (1 = single attributes only).
    smoothing: pseudo-users of global popularity mixed into every segment's item shares (0 = raw segment counts).
    """

    min_support: int = 20
    max_order: int = 2
    smoothing: float = 10.0

    def __post_init__(self) -> None:
        if self.min_support < 1 or self.max_order < 1 or self.smoothing < 0:
            raise ValueError(f"need min_support ≥ 1, max_order ≥ 1, smoothing ≥ 0; got {self}")


class SegmentPopularity(Recommender):
    """Popularity within the most specific well-supported attribute segment, backing off to global popularity."""

    name = "segment_popularity"
    family = "baseline"
    config_class = SegmentPopularityConfig
    config: SegmentPopularityConfig

    def fit(
        self, data: Interactions, settings: RunSettings | None = None, *, attributes: UserAttributes | None = None
    ) -> Self:
        """Learn segment popularity; ``attributes`` rows align with ``data``'s users (None: global popularity)."""
        attributes = attributes if attributes is not None else UserAttributes({}, {})
        if attributes.codes and len(attributes) != data.n_users:
            raise ValueError(f"attributes cover {len(attributes)} users, the data has {data.n_users}")
        return self._fit_with(data, settings, attributes=attributes)

    def _fit(self, data: Interactions, settings: RunSettings) -> None:
        """The segments of :meth:`fit`'s attributes, beyond the base class's counts."""
        self._fit_segments(data, self._attributes)

    def _fit_segments(self, data: Interactions, attributes: UserAttributes) -> None:
        self.columns_ = attributes.columns
        self.levels_ = attributes.levels
        self.active_users_ = int((np.diff(self.seen_.indptr) > 0).sum())
        combos = [
            c
            for order in range(min(self.config.max_order, len(self.columns_)), 0, -1)
            for c in itertools.combinations(range(len(self.columns_)), order)
        ]
        active = np.diff(self.seen_.indptr) > 0
        # Per combination: kept keys, the usable users, each one's kept segment (-1 = too small), kept supports.
        parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for j, combo in enumerate(combos):
            key = self._keys(attributes, combo)
            usable = active & (key >= 0)
            keys, inverse, support = np.unique(key[usable], return_inverse=True, return_counts=True)
            kept = support >= self.config.min_support
            local = np.where(kept[inverse], np.cumsum(kept)[inverse] - 1, -1)
            parts.append((j, keys[kept], np.flatnonzero(usable), local, support[kept]))
        self.combos_ = np.full((len(combos), max(1, self.config.max_order)), -1, dtype=np.int64)
        for j, combo in enumerate(combos):
            self.combos_[j, : len(combo)] = combo
        # One row per kept segment: its combo, key, support, and distinct users per item (segments × items CSR).
        combo_of, key_of, support_of, members_u, members_s = [], [], [], [], []
        offset = 0
        for j, keys, users, local, support in parts:
            member = local >= 0
            members_u.append(users[member])
            members_s.append(local[member] + offset)
            combo_of.append(np.full(len(keys), j))
            key_of.append(keys)
            support_of.append(support)
            offset += len(keys)
        self.segment_combo_ = np.concatenate(combo_of or [np.empty(0)]).astype(np.int64)
        self.segment_key_ = np.concatenate(key_of or [np.empty(0)]).astype(np.int64)
        self.segment_support_ = np.concatenate(support_of or [np.empty(0)]).astype(np.int64)
        users, segments = np.concatenate(members_u or [[]]), np.concatenate(members_s or [[]])
        indicator = sp.csr_matrix(
            (np.ones(len(users), dtype=np.float32), (segments.astype(np.int64), users)), shape=(offset, data.n_users)
        )
        self.segment_counts_ = sp.csr_matrix(indicator @ self.seen_, dtype=np.float32)
        self.user_segment_ = self.segments(attributes) if attributes.codes else np.full(data.n_users, -1)

    def _keys(self, attributes: UserAttributes, combo: Sequence[int]) -> np.ndarray:
        """Mixed-radix key of each user's values on ``combo`` (``-1`` when any of them is missing)."""
        key = np.zeros(len(attributes), dtype=np.int64)
        missing = np.zeros(len(attributes), dtype=bool)
        for c in combo:
            column = self.columns_[c]
            codes = attributes.codes[column].astype(np.int64)
            key = key * len(self.levels_[column]) + np.maximum(codes, 0)
            missing |= codes < 0
        return np.where(missing, -1, key)

    # ---- scoring ----------------------------------------------------------------------------------------
    def segments(self, attributes: UserAttributes) -> np.ndarray:
        """The segment row chosen for each user of ``attributes`` by the back-off rule; ``-1`` = none (popularity)."""
        self._check_fitted()
        if attributes.columns and (attributes.columns != self.columns_ or attributes.levels != self.levels_):
            raise ValueError("attributes were encoded differently from those seen in fit: encode with like=")
        chosen = np.full(len(attributes), -1, dtype=np.int64)
        if not attributes.columns:
            return chosen
        never = np.iinfo(np.int64).max
        order = (self.combos_ >= 0).sum(axis=1)
        for level in sorted(set(order.tolist()), reverse=True):
            # Among combinations of equally many columns the smallest supported segment is the most specific.
            candidate, best = np.full(len(attributes), -1, dtype=np.int64), np.full(len(attributes), never)
            for j in np.flatnonzero(order == level):
                rows = np.flatnonzero(self.segment_combo_ == j)
                if len(rows) == 0:
                    continue
                combo = self.combos_[j]
                key = self._keys(attributes, combo[combo >= 0])
                at = np.minimum(np.searchsorted(self.segment_key_[rows], key), len(rows) - 1)
                found = (key >= 0) & (self.segment_key_[rows][at] == key)
                support = np.where(found, self.segment_support_[rows][at], never)
                better = support < best
                candidate, best = np.where(better, rows[at], candidate), np.where(better, support, best)
            # Back off: only users without a segment at a more specific order take one from this order.
            chosen = np.where(chosen >= 0, chosen, candidate)
        return chosen

    def segment_scores(self, segments: np.ndarray) -> np.ndarray:
        """Smoothed item shares ``(counts + β·p) / (support + β)`` per segment row; ``-1`` rows get ``p``."""
        self._check_fitted()
        segments = np.asarray(segments, dtype=np.int64)
        share = (self.popularity_ / max(self.active_users_, 1)).astype(np.float32)
        out = np.broadcast_to(share, (len(segments), self.n_items_)).copy()
        has = segments >= 0
        if has.any():
            beta = np.float32(self.config.smoothing)
            counts = self.segment_counts_[segments[has]].toarray()
            support = self.segment_support_[segments[has]].astype(np.float32)[:, None]
            out[has] = (counts + beta * share) / (support + beta)
        return out

    def labels(self, segments: np.ndarray) -> np.ndarray:
        """Strategy label per segment row: ``segment_popularity:col=value&col=value``, or ``popularity``."""
        names = [POPULARITY_LABEL]
        for combo, key in zip(self.segment_combo_, self.segment_key_, strict=True):
            columns = [self.columns_[c] for c in self.combos_[combo] if c >= 0]
            values = []
            for column in reversed(columns):
                key, code = divmod(int(key), len(self.levels_[column]))
                values.append(f"{column}={self.levels_[column][code]}")
            names.append(SEGMENT_PREFIX + "&".join(reversed(values)))
        return np.array(names)[np.asarray(segments, dtype=np.int64) + 1]

    def score_attributes(self, attributes: UserAttributes) -> np.ndarray:
        """Dense scores for users described only by their attributes (new users)."""
        return self.segment_scores(self.segments(attributes))

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return self.segment_scores(self.user_segment_[users])

    # ---- persistence ------------------------------------------------------------------------------------
    def _state(self) -> dict[str, np.ndarray]:
        state = csr_state("segment_counts", self.segment_counts_)
        flat = [label for c in self.columns_ for label in self.levels_[c]]
        state.update(
            columns=np.array(self.columns_, dtype=str),
            level_counts=np.array([len(self.levels_[c]) for c in self.columns_], dtype=np.int64),
            levels=np.array(flat, dtype=str),
            combos=self.combos_,
            segment_combo=self.segment_combo_,
            segment_key=self.segment_key_,
            segment_support=self.segment_support_,
            user_segment=self.user_segment_,
            active_users=np.array(self.active_users_),
        )
        return state

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.columns_ = tuple(str(c) for c in state["columns"])
        bounds = np.concatenate([[0], np.cumsum(state["level_counts"])])
        flat = [str(v) for v in state["levels"]]
        self.levels_ = {c: tuple(flat[bounds[i] : bounds[i + 1]]) for i, c in enumerate(self.columns_)}
        self.combos_ = state["combos"]
        self.segment_combo_, self.segment_key_ = state["segment_combo"], state["segment_key"]
        self.segment_support_, self.user_segment_ = state["segment_support"], state["user_segment"]
        self.active_users_ = int(state["active_users"])
        n_segments = len(self.segment_key_)
        self.segment_counts_ = csr_from_state(state, "segment_counts", (n_segments, self.n_items_))
