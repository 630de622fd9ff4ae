"""Evaluation protocols: how the events are split into what a model learns from and what it is judged on.

The protocol is a run parameter, and :meth:`ProtocolSplits.record` is what the run stores about it.

- ``temporal_holdout`` (the standard top-N protocol, :func:`recforge.split.temporal_holdout`): per user, the
  newest 20 % of events are test. Every user is evaluated, on their own most recent behaviour.
- ``global_time``: one cut-off time for everybody, at a given date or at a quantile of all timestamps: events
  before it train, events from it on test. Nothing after the cut leaks into training, as in production, where
  the model is trained on the past and serves the future. Only test users with training events are evaluated.
- ``kfold_random``: rating prediction; rows are dealt at random into ``k`` folds (seeded) and each fold is test
  once, the other folds train. Gives RMSE/MAE per fold and their mean.

The top-N protocols produce a :class:`~recforge.split.TemporalSplit` (``ProtocolSplits.holdout``), which
:func:`recforge.evaluation.evaluate_topn` / :func:`~recforge.evaluation.evaluate_full` take; ``kfold_random``
produces :class:`RatingFold` objects for :func:`recforge.evaluation.evaluate_ratings_kfold`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from recforge.data.contract import ITEM, RATING, TIMESTAMP, USER, DataError
from recforge.split import TemporalSplit, temporal_holdout

PROTOCOLS = ("temporal_holdout", "global_time", "kfold_random")
TOPN_PROTOCOLS = frozenset({"temporal_holdout", "global_time"})


@dataclass(frozen=True)
class RatingFold:
    """One fold of :func:`kfold_random`: ``test`` is fold ``fold``'s rows, ``train`` all the other rows."""

    fold: int
    train: pd.DataFrame
    test: pd.DataFrame


@dataclass(frozen=True)
class ProtocolSplits:
    """The splits of one protocol and the resolved parameters that define them (recorded with the run).

    holdout: the train/test split of a top-N protocol (``None`` for ``kfold_random``).
    folds: the folds of ``kfold_random`` (empty otherwise).
    params: the protocol's parameters as used, e.g. the global cut-off time the quantile resolved to.
    """

    protocol: str
    params: dict[str, Any] = field(default_factory=dict)
    holdout: TemporalSplit | None = None
    folds: tuple[RatingFold, ...] = ()

    def record(self) -> dict[str, Any]:
        """A JSON-ready description: protocol, parameters and split sizes, for the run record."""
        out: dict[str, Any] = {"protocol": self.protocol, **self.params}
        if self.holdout is not None:
            split = self.holdout
            out.update(
                train_rows=len(split.train),
                test_rows=len(split.test),
                test_users=split.n_test_users,
                users_without_train=split.users_without_train,
                users_without_test=split.users_without_test,
                dropped_unseen_items=split.dropped_unseen_items,
                dropped_seen_pairs=split.dropped_seen_pairs,
            )
        if self.folds:
            out["fold_test_rows"] = [len(fold.test) for fold in self.folds]
        return out


def _require_columns(interactions: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in interactions.columns]
    if missing:
        raise DataError(
            f"{what}: the interactions table has no column(s) {missing} (columns present: "
            f"{list(interactions.columns)}); load it through a recforge source so it follows the data contract"
        )


def _holdout_from(train: pd.DataFrame, test: pd.DataFrame) -> TemporalSplit:
    """Keep the test events a model can be credited for, counting each kind dropped (as temporal_holdout does).

    Dropped: test users without training events (nothing to personalise from), test events whose item never
    occurs in train (it cannot be ranked), and test events for an item the user already has in train (seen
    items are excluded from ranking).
    """
    # isin against distinct values: pandas 3's string isin walks its argument element by element.
    no_train = ~test[USER].isin(train[USER].unique())
    users_without_train = int(test.loc[no_train, USER].nunique())
    test = test.loc[~no_train]
    unseen = ~test[ITEM].isin(train[ITEM].unique())
    dropped_unseen = int(unseen.sum())
    test = test.loc[~unseen]
    seen = pd.MultiIndex.from_frame(test[[USER, ITEM]]).isin(pd.MultiIndex.from_frame(train[[USER, ITEM]]))
    dropped_seen = int(seen.sum())
    test = test.loc[~seen]
    return TemporalSplit(
        train=train,
        test=test,
        dropped_unseen_items=dropped_unseen,
        users_without_train=users_without_train,
        users_without_test=int(train[USER].nunique()) - int(test[USER].nunique()),
        dropped_seen_pairs=dropped_seen,
    )


def global_time_split(
    interactions: pd.DataFrame, at: datetime | None = None, quantile: float = 0.8
) -> tuple[TemporalSplit, pd.Timestamp]:
    """Split every user at one time: train = events strictly before the cut, test = events at or after it.

    at: the cut (an aware datetime); when None the cut is the ``quantile`` of all event timestamps (0.8: about
    the last 20 % of events are test). Returns the split and the cut used. Test events of users without
    training events, of items never seen in training, or of items the user already has in training are
    dropped and counted (see :class:`~recforge.split.TemporalSplit`); users active only before the cut are in
    train but not evaluated (``users_without_test``).
    """
    _require_columns(interactions, (USER, ITEM, TIMESTAMP), "global_time_split")
    stamps = interactions[TIMESTAMP]
    if stamps.isna().any():
        rows = list(interactions.index[stamps.isna()][:5])
        raise DataError(
            f"global_time_split: column {TIMESTAMP!r} of the interactions table is missing in "
            f"{int(stamps.isna().sum())} row(s) (first row labels: {rows}); drop or impute them before splitting"
        )
    if len(interactions) == 0:
        raise DataError("global_time_split: the interactions table is empty")
    if at is None:
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"global_time_split: quantile must lie strictly between 0 and 1, got {quantile!r}")
        # "higher" picks an existing timestamp, so the cut is a real event time and reproducible as text.
        cut = pd.Timestamp(stamps.quantile(quantile, interpolation="higher"))
    else:
        cut = pd.Timestamp(at)
        if cut.tzinfo is None:
            raise ValueError(
                f"global_time_split: at={at!r} has no time zone; pass an aware datetime, "
                "e.g. datetime(1998, 3, 1, tzinfo=timezone.utc)"
            )
    before = (stamps < cut).to_numpy()
    if not before.any() or before.all():
        raise DataError(
            f"global_time_split: the cut {cut.isoformat()} leaves {'no' if not before.any() else 'every'} event "
            f"before it (events span {stamps.min().isoformat()} to {stamps.max().isoformat()}); choose a cut "
            "inside that range"
        )
    order = [TIMESTAMP, USER, ITEM]
    train = interactions.loc[before].sort_values(order, kind="stable")
    test = interactions.loc[~before].sort_values(order, kind="stable")
    split = _holdout_from(train, test)
    if len(split.test) == 0:
        raise DataError(
            f"global_time_split: no test event after the cut {cut.isoformat()} belongs to a user and an item "
            "seen before it; choose an earlier cut"
        )
    return split, cut


def kfold_random(interactions: pd.DataFrame, n_folds: int = 5, seed: int = 42) -> tuple[RatingFold, ...]:
    """Deal the rows at random into ``n_folds`` folds of equal size (± 1 row); fold f is test in the f-th pair.

    Row ``i`` goes to fold ``default_rng(seed).permutation(n)[i] % n_folds``: every row is test exactly once,
    and the same seed always deals the same folds. Rows keep their given order within each part.
    """
    if n_folds < 2:
        raise ValueError(f"kfold_random: n_folds must be at least 2, got {n_folds}")
    if len(interactions) < n_folds:
        raise DataError(
            f"kfold_random: {len(interactions)} interaction rows cannot fill {n_folds} folds; use fewer folds"
        )
    fold_of_row = np.random.default_rng(seed).permutation(len(interactions)) % n_folds
    return tuple(
        RatingFold(fold=f, train=interactions.loc[fold_of_row != f], test=interactions.loc[fold_of_row == f])
        for f in range(n_folds)
    )


def make_splits(
    interactions: pd.DataFrame,
    protocol: str = "temporal_holdout",
    *,
    test_fraction: float = 0.2,
    at: datetime | None = None,
    quantile: float = 0.8,
    n_folds: int = 5,
    seed: int = 42,
) -> ProtocolSplits:
    """Split ``interactions`` under ``protocol`` (one of :data:`PROTOCOLS`).

    test_fraction: per-user share of test events (``temporal_holdout``).
    at / quantile: the cut of ``global_time`` (a date, else a quantile of the timestamps).
    n_folds / seed: the folds of ``kfold_random`` (needs a complete ``rating`` column).
    """
    if protocol == "temporal_holdout":
        split = temporal_holdout(interactions, test_fraction=test_fraction)
        return ProtocolSplits(protocol, {"test_fraction": test_fraction}, holdout=split)
    if protocol == "global_time":
        split, cut = global_time_split(interactions, at=at, quantile=quantile)
        params = {"cut": cut.isoformat(), "quantile": None if at is not None else quantile}
        return ProtocolSplits(protocol, params, holdout=split)
    if protocol == "kfold_random":
        if RATING not in interactions.columns or interactions[RATING].isna().any():
            raise DataError(
                "kfold_random is a rating-prediction protocol: the interactions table needs a 'rating' column "
                "without missing values; use temporal_holdout or global_time for implicit feedback"
            )
        folds = kfold_random(interactions, n_folds=n_folds, seed=seed)
        return ProtocolSplits(protocol, {"n_folds": n_folds, "seed": seed}, folds=folds)
    raise ValueError(f"unknown evaluation protocol {protocol!r}; choose from: {', '.join(PROTOCOLS)}")
