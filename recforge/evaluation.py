"""Evaluate a model under the project's standard protocol (docs/BENCHMARKS.md, docs/evaluation.md).

Glue between contract frames (pandas, string ids), the id index and the model interface: fit a fresh model on
the training part of a split, rank or predict for the test part, and score the result with
:mod:`recforge.metrics`. Timings are wall-clock seconds of ``fit`` and of scoring, for relative comparisons.

- :func:`evaluate_topn` — the headline top-N metrics at one cut-off (means only).
- :func:`evaluate_full` — every top-N and beyond-accuracy metric at several cut-offs, with bootstrap intervals,
  per activity group, plus the per-user values (for paired comparisons and champion selection).
- :func:`evaluate_ratings` / :func:`evaluate_ratings_kfold` — RMSE and MAE on one random split or on k folds.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from recforge.data.contract import CATEGORY_SEPARATOR, GENRES, ITEM, RATING, USER, DataError
from recforge.ids import IdIndex
from recforge.metrics import (
    ACTIVITY_GROUPS,
    TOPN_KEYS,
    activity_groups,
    catalogue_coverage,
    check_ks,
    exposure_gini,
    intra_list_diversity_per_user,
    mae,
    novelty_per_user,
    popularity_bias_per_user,
    rmse,
    topn_metrics,
    topn_per_user_at,
)
from recforge.prepare import measured
from recforge.protocols import RatingFold
from recforge.split import TemporalSplit, random_rating_split
from recforge.uncertainty import DEFAULT_BOOTSTRAP, DEFAULT_CONFIDENCE, bootstrap_cis
from recmodels.base import Recommender, RunSettings
from recmodels.data import Interactions

__all__ = [
    "FullEvaluation",
    "IdIndex",
    "KFoldRatings",
    "evaluate_full",
    "evaluate_ratings",
    "evaluate_ratings_kfold",
    "evaluate_topn",
    "item_attribute_matrix",
    "metric_key",
    "relevance_matrix",
]

ModelFactory = Callable[[], Recommender]


def _has_complete_ratings(df: pd.DataFrame) -> bool:
    return RATING in df.columns and bool(df[RATING].notna().all())


def relevance_matrix(index: IdIndex, test: pd.DataFrame) -> tuple[np.ndarray, sp.csr_matrix]:
    """Evaluated users (sorted indices) and their binary test-item CSR, one row per user in that order.

    Test rows whose user or item is not in ``index`` are ignored: they cannot be ranked.
    """
    user = index.user_codes(test[USER])
    item = index.item_codes(test[ITEM])
    keep = (user >= 0) & (item >= 0)
    users, row = np.unique(user[keep], return_inverse=True)
    relevant = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (row, item[keep])), shape=(len(users), index.n_items)
    )
    relevant.sum_duplicates()
    relevant.data[:] = 1.0  # repeated test events of one item count once (binary relevance)
    return users, relevant


@dataclass(frozen=True)
class _Ranked:
    """A model fitted on a split's train part and its top-k lists for the evaluated users."""

    model: Recommender
    index: IdIndex
    train: Interactions
    users: np.ndarray  # evaluated users' indices, sorted
    relevant: sp.csr_matrix  # their test items, one row per user
    items: np.ndarray  # (n_users, k) recommended item indices, -1 = padding
    fit_seconds: float
    score_seconds: float


def _fit_and_rank(
    model_factory: ModelFactory, split: TemporalSplit, k: int, settings: RunSettings, caller: str
) -> _Ranked:
    """Fit ``model_factory()`` on ``split.train`` and rank the top ``k`` unseen items for every test user."""
    if len(split.test) == 0:
        raise DataError(f"{caller}: the split's test set is empty; no user has an evaluable held-out event")
    index = IdIndex.from_frame(split.train)
    train = index.interactions(split.train, ratings=_has_complete_ratings(split.train))
    users, relevant = relevance_matrix(index, split.test)

    model = model_factory()
    start = time.perf_counter()
    model.fit(train, settings)
    fit_seconds = time.perf_counter() - start

    start = time.perf_counter()
    items, _ = model.recommend(users, k, exclude_seen=True, batch_size=settings.batch_size)
    score_seconds = time.perf_counter() - start
    if items.shape[1] < k:  # the catalogue is smaller than k: pad as "no recommendation"
        items = np.pad(items, ((0, 0), (0, k - items.shape[1])), constant_values=-1)
    return _Ranked(model, index, train, users, relevant, items, fit_seconds, score_seconds)


def evaluate_topn(
    model_factory: ModelFactory,
    split: TemporalSplit,
    k: int = 10,
    settings: RunSettings | None = None,
) -> dict[str, float]:
    """Fit ``model_factory()`` on ``split.train``, rank the top ``k`` unseen items for every test user, score.

    The model gets ratings when the training frame has a complete ``rating`` column (it may ignore them).
    Returns the :func:`~recforge.metrics.topn_metrics` keys plus ``fit_seconds``, ``score_seconds`` and the
    split's ``users_without_train`` / ``users_without_test`` / ``dropped_unseen_items`` / ``dropped_seen_pairs``
    counts.
    """
    settings = settings or RunSettings()
    ranked = _fit_and_rank(model_factory, split, k, settings, "evaluate_topn")
    items, relevant, index = ranked.items, ranked.relevant, ranked.index
    fit_seconds, score_seconds = ranked.fit_seconds, ranked.score_seconds

    out = topn_metrics(items, relevant, k=k, n_items=index.n_items)
    out.update(
        fit_seconds=fit_seconds,
        score_seconds=score_seconds,
        users_without_train=float(split.users_without_train),
        users_without_test=float(split.users_without_test),
        dropped_unseen_items=float(split.dropped_unseen_items),
        dropped_seen_pairs=float(split.dropped_seen_pairs),
    )
    return out


def evaluate_ratings(
    model_factory: ModelFactory,
    interactions: pd.DataFrame,
    seed: int = 42,
    settings: RunSettings | None = None,
) -> dict[str, float]:
    """Rating protocol: random 80/20 row split (:func:`~recforge.split.random_rating_split`), RMSE and MAE.

    Rows marked ``rating_missing`` (events whose rating the source lacked, filled in by the pipeline) are left
    out of both parts: their rating is not a measurement.

    Test pairs whose user or item is absent from train are still scored: they reach the model as index ``-1``
    and the model's own fallback answers (counted in ``unknown_pairs``). Returns ``rmse``, ``mae``,
    ``fit_seconds``, ``predict_seconds``, ``test_rows`` and ``unknown_pairs``.
    """
    settings = settings or RunSettings()
    model = model_factory()
    if not type(model).predicts_ratings:
        raise ValueError(f"{model.name} does not predict ratings; evaluate it with evaluate_topn instead")
    interactions = measured(interactions)
    if not _has_complete_ratings(interactions):
        raise DataError(
            "evaluate_ratings: the interactions table needs a 'rating' column with no missing values; "
            "rating metrics do not apply to implicit-feedback data"
        )
    train_df, test_df = random_rating_split(interactions, 0.2, seed)
    return _fit_predict_ratings(model, train_df, test_df, settings)


def _fit_predict_ratings(
    model: Recommender, train_df: pd.DataFrame, test_df: pd.DataFrame, settings: RunSettings
) -> dict[str, float]:
    """Fit ``model`` on ``train_df`` and score its rating predictions for ``test_df`` (RMSE, MAE, timings)."""
    if len(test_df) == 0:
        raise DataError("evaluate_ratings: the random split left no test rows; the data set is too small")
    index = IdIndex.from_frame(train_df)
    train = index.interactions(train_df, ratings=True)

    start = time.perf_counter()
    model.fit(train, settings)
    fit_seconds = time.perf_counter() - start

    users = index.user_codes(test_df[USER])
    items = index.item_codes(test_df[ITEM])
    start = time.perf_counter()
    pred = np.asarray(model.predict(users, items), dtype=np.float64)
    predict_seconds = time.perf_counter() - start
    truth = test_df[RATING].to_numpy(dtype=np.float64)
    return {
        "rmse": rmse(pred, truth),
        "mae": mae(pred, truth),
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        "test_rows": float(len(test_df)),
        "unknown_pairs": float(((users < 0) | (items < 0)).sum()),
    }


# ---- full evaluation: several cut-offs, beyond accuracy, intervals, activity groups -----------------------------

SUMMARY_COLUMNS = ("metric", "k", "group", "value", "ci_low", "ci_high", "users")
_KEY_PATTERN = re.compile(r"^(?P<metric>[a-z_]+)(?:@(?P<k>[1-9][0-9]*))?$")


def metric_key(metric: str, k: int | None = None) -> str:
    """The column / display name of a metric at a cut-off: ``"ndcg@10"``; just ``"rmse"`` without one."""
    return metric if k is None else f"{metric}@{int(k)}"


def parse_metric_key(key: str) -> tuple[str, int | None]:
    """Split ``"ndcg@10"`` into ``("ndcg", 10)`` and ``"rmse"`` into ``("rmse", None)``."""
    match = _KEY_PATTERN.match(key.strip().lower())
    if match is None:
        raise ValueError(f"metric name {key!r} is not of the form 'name@k' (e.g. 'ndcg@10') or 'name' (e.g. 'rmse')")
    k = match.group("k")
    return match.group("metric"), None if k is None else int(k)


def item_attribute_matrix(
    items: pd.DataFrame, index: IdIndex, column: str = GENRES, separator: str = CATEGORY_SEPARATOR
) -> sp.csr_matrix:
    """Binary ``(n_items, n_labels)`` CSR of each indexed item's labels in ``items[column]`` (``"A|B"`` text).

    Row ``i`` is ``index.items[i]``; labels are columns in sorted order. Items absent from the table or with a
    missing value have an empty row; items of the table that are not in the index are ignored.
    """
    missing = [c for c in (ITEM, column) if c not in items.columns]
    if missing:
        raise DataError(
            f"items table: no column(s) {missing} (columns present: {list(items.columns)}); pass the items "
            f"table with '{ITEM}' and a '{separator}'-separated label column, or item_attributes=None to skip "
            "intra-list diversity"
        )
    duplicated = items[ITEM].duplicated(keep=False)
    if duplicated.any():
        raise DataError(
            f"items table: column '{ITEM}' repeats ids {items.loc[duplicated, ITEM].unique()[:5].tolist()}; "
            "each item needs exactly one row of attributes: drop the duplicates"
        )
    items = items.reset_index(drop=True)  # positional labels, whatever index the caller's frame has
    rows = index.item_codes(items[ITEM])
    labels = items[column].loc[items[column].notna() & (rows >= 0)].astype("str")
    exploded = labels.str.split(separator).explode().astype("str").str.strip()
    exploded = exploded[exploded.notna() & (exploded != "")]
    codes, names = pd.factorize(exploded, sort=True)
    # ``exploded`` keeps the (positional) row label of the item each label came from.
    positions = exploded.index.to_numpy(dtype=np.int64)
    matrix = sp.csr_matrix((np.ones(len(codes)), (rows[positions], codes)), shape=(index.n_items, max(len(names), 1)))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


@dataclass(frozen=True)
class FullEvaluation:
    """Everything :func:`evaluate_full` measured for one model on one split.

    summary: tidy frame, one row per (metric, k, group): columns ``metric`` (str), ``k`` (Int64, NA for metrics
        without a cut-off), ``group`` (``all`` / ``cold`` / ``regular`` / ``heavy``), ``value`` (float64: the
        mean over the group's users, or the set-level value of coverage / gini), ``ci_low`` / ``ci_high``
        (bootstrap interval; NaN for coverage and gini, which have no per-user value), ``users`` (Int64: users
        with a value).
    per_user: one row per evaluated user (index ``user_id``): ``group``, ``train_events`` and one float64
        column per per-user metric named ``"<metric>@<k>"`` (e.g. ``ndcg@10``, ``novelty@10``).
    info: timings (``fit_seconds``, ``score_seconds``), ``refit_config`` (the fitted model's
        :meth:`~recmodels.base.Recommender.refit_config` as a dict, for a refit on all events), the split's drop
        counts, the activity thresholds
        (``cold_max``, ``heavy_min``), ``ks``, ``bootstrap``, ``seed``, ``confidence``, ``n_items``, ``users``,
        and ``ild`` (``"computed"`` or why it was skipped).
    """

    model: str
    summary: pd.DataFrame
    per_user: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)

    def _row(self, key: str, group: str) -> pd.Series:
        metric, k = parse_metric_key(key)
        table = self.summary
        k_match = table["k"].isna() if k is None else table["k"].eq(k).fillna(False)
        found = table.loc[table["metric"].eq(metric) & k_match & table["group"].eq(group)]
        if found.empty:
            available = sorted(
                {
                    metric_key(m, None if pd.isna(c) else int(c))
                    for m, c in zip(table["metric"], table["k"], strict=True)
                }
            )
            raise KeyError(f"{self.model}: no metric {key!r} for group {group!r}; available: {available}")
        return found.iloc[0]

    def value(self, key: str, group: str = "all") -> float:
        """The value of ``key`` (e.g. ``"ndcg@10"``) for ``group``."""
        return float(self._row(key, group)["value"])

    def interval(self, key: str, group: str = "all") -> tuple[float, float]:
        """The bootstrap interval ``(low, high)`` of ``key`` for ``group`` (NaN bounds when none)."""
        row = self._row(key, group)
        return float(row["ci_low"]), float(row["ci_high"])

    def user_values(self, key: str) -> np.ndarray:
        """The per-user values of ``key`` (e.g. ``"ndcg@10"``), in :attr:`per_user` row order."""
        if key not in self.per_user.columns:
            raise KeyError(f"{self.model}: no per-user values of {key!r}; available: {list(self.per_user.columns)}")
        return self.per_user[key].to_numpy(dtype=np.float64)

    def flat(self) -> dict[str, float]:
        """``{"ndcg@10": value, ...}`` over all users, plus ``fit_seconds`` and ``score_seconds``."""
        overall = self.summary.loc[self.summary["group"].eq("all")]
        out = {
            metric_key(m, None if pd.isna(k) else int(k)): float(v)
            for m, k, v in zip(overall["metric"], overall["k"], overall["value"], strict=True)
        }
        out.update(fit_seconds=float(self.info["fit_seconds"]), score_seconds=float(self.info["score_seconds"]))
        return out


def evaluate_full(
    model_factory: ModelFactory,
    split: TemporalSplit,
    ks: Sequence[int] = (5, 10, 20),
    item_attributes: pd.DataFrame | None = None,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 42,
    *,
    settings: RunSettings | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    attribute_column: str = GENRES,
    cold_max: float | None = None,
    heavy_min: float | None = None,
) -> FullEvaluation:
    """Fit once, rank the top ``max(ks)`` for every test user, and measure everything at every ``k``.

    Metrics at each k: precision, recall, ndcg, map, mrr, hit_rate (:func:`~recforge.metrics.topn_per_user_at`),
    novelty and popularity_bias (training popularity), ild (only with ``item_attributes``: the items table
    with a ``attribute_column`` of ``|``-separated labels), coverage and gini (of exposure). Each is reported
    for all users and per activity group (:func:`~recforge.metrics.activity_groups`, thresholds ``cold_max`` /
    ``heavy_min`` or quantile-based), with a ``confidence`` bootstrap interval from ``bootstrap`` resamples of
    the group's users (``bootstrap=0`` skips intervals). The same ``seed`` gives every model the same resamples.
    """
    ks = check_ks(ks)
    settings = settings or RunSettings(seed=seed)
    ranked = _fit_and_rank(model_factory, split, ks[-1], settings, "evaluate_full")
    index, train, items = ranked.index, ranked.train, ranked.items
    per_k = topn_per_user_at(items, ranked.relevant, ks)

    attributes: sp.csr_matrix | None = None
    ild_note = "skipped: no item attributes given"
    if item_attributes is not None and attribute_column not in item_attributes.columns:
        # Item attributes are optional, and so is their label column (a shop's catalogue has a category, not
        # genres): diversity is left out then, not every model failed.
        ild_note = f"skipped: the items table has no column {attribute_column!r}"
    elif item_attributes is not None:
        attributes = item_attribute_matrix(item_attributes, index, attribute_column)
        ild_note = "computed"
        if attributes.nnz == 0:
            attributes = None
            ild_note = f"skipped: no training item has a value in items column {attribute_column!r}"

    # Every user of the index has training events, so the index size is the number of training users.
    popularity = train.item_counts
    per_user: dict[str, np.ndarray] = {}
    for k in ks:
        for name in TOPN_KEYS:
            per_user[metric_key(name, k)] = per_k[k][name]
        per_user[metric_key("novelty", k)] = novelty_per_user(items, popularity, index.n_users, k)
        per_user[metric_key("popularity_bias", k)] = popularity_bias_per_user(items, popularity, k)
        if attributes is not None:
            per_user[metric_key("ild", k)] = intra_list_diversity_per_user(items, attributes, k)

    train_events = np.bincount(train.user, minlength=index.n_users)[ranked.users]
    groups = activity_groups(train_events, cold_max=cold_max, heavy_min=heavy_min)

    rows: list[tuple[Any, ...]] = []
    everyone = np.ones(len(ranked.users), dtype=bool)
    for group in ("all", *ACTIVITY_GROUPS):
        mask = everyone if group == "all" else groups.mask(group)
        n_group = int(mask.sum())
        cis = (
            bootstrap_cis({key: values[mask] for key, values in per_user.items()}, bootstrap, confidence, seed)
            if n_group
            else {}
        )
        for k in ks:
            for key in per_user:
                metric, key_k = parse_metric_key(key)
                if key_k != k:
                    continue
                ci = cis.get(key)
                if ci is None:
                    rows.append((metric, k, group, math.nan, math.nan, math.nan, 0))
                else:
                    rows.append((metric, k, group, ci.estimate, ci.low, ci.high, ci.n))
            group_items = items[mask]
            coverage = catalogue_coverage(group_items, index.n_items, k) if n_group else math.nan
            gini = exposure_gini(group_items, index.n_items, k) if n_group else math.nan
            rows.append(("coverage", k, group, coverage, math.nan, math.nan, n_group))
            rows.append(("gini", k, group, gini, math.nan, math.nan, n_group))

    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)).astype(
        {"metric": "str", "k": "Int64", "group": "str", "value": "float64", "ci_low": "float64",
         "ci_high": "float64", "users": "Int64"}
    )  # fmt: skip
    frame = pd.DataFrame(
        {"group": pd.Series(groups.labels, dtype="str"), "train_events": train_events.astype(np.int64), **per_user},
    )
    frame.index = pd.Index(index.users[ranked.users], name=USER)
    info: dict[str, Any] = {
        "model": ranked.model.name,
        "refit_config": ranked.model.refit_config().to_dict(),
        "fit_seconds": ranked.fit_seconds,
        "score_seconds": ranked.score_seconds,
        "users": len(ranked.users),
        "n_items": index.n_items,
        "ks": list(ks),
        "bootstrap": bootstrap,
        "seed": seed,
        "confidence": confidence,
        "cold_max": groups.cold_max,
        "heavy_min": groups.heavy_min,
        "ild": ild_note,
        "users_without_train": split.users_without_train,
        "users_without_test": split.users_without_test,
        "dropped_unseen_items": split.dropped_unseen_items,
        "dropped_seen_pairs": split.dropped_seen_pairs,
    }
    return FullEvaluation(model=ranked.model.name, summary=summary, per_user=frame, info=info)


# ---- rating prediction over k folds --------------------------------------------------------------------------


@dataclass(frozen=True)
class KFoldRatings:
    """RMSE and MAE of one model on every fold of :func:`recforge.protocols.kfold_random`.

    per_fold: one row per fold: ``fold``, ``rmse``, ``mae``, ``test_rows``, ``unknown_pairs``, ``fit_seconds``,
    ``predict_seconds``.
    """

    model: str
    per_fold: pd.DataFrame
    confidence: float = DEFAULT_CONFIDENCE

    @property
    def rmse(self) -> float:
        """Mean RMSE over the folds."""
        return float(self.per_fold["rmse"].mean())

    @property
    def mae(self) -> float:
        """Mean MAE over the folds."""
        return float(self.per_fold["mae"].mean())

    def summary(self) -> pd.DataFrame:
        """Tidy rows (same columns as :attr:`FullEvaluation.summary`) for rmse and mae, group ``all``.

        value is the mean over folds; ci_low/ci_high a t-interval over the fold values. The folds share most of
        their training data, so this interval shows fold-to-fold spread and is narrower than a true
        sampling interval: read it as a stability check, not as a significance test.
        """
        n = len(self.per_fold)
        half = stats.t.ppf(0.5 + self.confidence / 2.0, n - 1) if n > 1 else math.nan
        rows = []
        for metric in ("rmse", "mae"):
            values = self.per_fold[metric].to_numpy(dtype=np.float64)
            mean = float(values.mean())
            spread = float(half * values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
            rows.append((metric, pd.NA, "all", mean, mean - spread, mean + spread, pd.NA))
        return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)).astype(
            {"metric": "str", "k": "Int64", "group": "str", "value": "float64", "ci_low": "float64",
             "ci_high": "float64", "users": "Int64"}
        )  # fmt: skip


def evaluate_ratings_kfold(
    model_factory: ModelFactory,
    folds: Sequence[RatingFold],
    settings: RunSettings | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> KFoldRatings:
    """Fit a fresh model on each fold's train part and score RMSE/MAE on its test part (``kfold_random``).

    Test pairs with a user or item unseen in that fold's train reach the model as index ``-1`` (its fallback
    answers), and rows marked ``rating_missing`` are left out of both parts, as in :func:`evaluate_ratings`.
    """
    settings = settings or RunSettings()
    if not folds:
        raise ValueError("evaluate_ratings_kfold: no folds given; build them with recforge.protocols.kfold_random")
    name = ""
    rows = []
    for fold in folds:
        model = model_factory()
        name = model.name
        if not type(model).predicts_ratings:
            raise ValueError(f"{model.name} does not predict ratings; evaluate it with evaluate_full instead")
        # The pipeline's filled-in ratings were scored as measurements here (evaluate_ratings left them out).
        train, test = (measured(frame) for frame in (fold.train, fold.test))
        if test.empty and not fold.test.empty:
            raise DataError(
                f"evaluate_ratings_kfold: every rating of fold {fold.fold}'s {len(fold.test)} test rows was filled "
                "in, not measured, so the fold has nothing to score; use fewer folds or data with more ratings"
            )
        for part, frame in (("train", train), ("test", test)):
            if not _has_complete_ratings(frame):
                raise DataError(
                    f"evaluate_ratings_kfold: fold {fold.fold}'s {part} part needs a 'rating' column with no "
                    "missing values; rating metrics do not apply to implicit-feedback data"
                )
        rows.append({"fold": fold.fold, **_fit_predict_ratings(model, train, test, settings)})
    per_fold = pd.DataFrame(rows).astype({"fold": "int64", "test_rows": "int64", "unknown_pairs": "int64"})
    return KFoldRatings(model=name, per_fold=per_fold, confidence=confidence)
