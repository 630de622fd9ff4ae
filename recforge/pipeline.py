"""The pipeline's stages as plain functions over plain data, so they are testable without Prefect.

``tasks/`` wraps each of these in a Prefect task and ``flows/recommend.py`` composes them; nothing here imports
Prefect. Stage order: load → validate → :func:`prepare` (clean, cut at ``as_of``, split, impute, features) →
:func:`evaluate` and :func:`fit_and_recommend` per model → :func:`leaderboard` / :func:`choose_champion` → publish.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from recforge.champion import LOWER_IS_BETTER, Candidate, ChampionRules, ChampionSelection, select_champion
from recforge.data.contract import ITEM, RATING, TIMESTAMP, USER, DataError, Dataset, title_column
from recforge.evaluation import FullEvaluation, evaluate_full, evaluate_ratings
from recforge.features import item_features, user_features
from recforge.ids import IdIndex
from recforge.prepare import (
    AGE_RANGE,
    CleaningReport,
    Imputer,
    blank_implausible_ages,
    clean_interactions,
    collapse_repeats,
    declared_rules,
    fill_missing_ratings,
    measured,
)
from recforge.split import TemporalSplit, stamped_before, temporal_holdout
from recforge.store import ChampionDecision
from recforge.validation import ValidationReport
from recmodels.base import Recommender, RunSettings
from recmodels.coldstart import (
    ColdStartChain,
    ColdStartConfig,
    UserAttributes,
    encode_item_features,
    encode_user_attributes,
)
from recmodels.coldstart.chain import CONTENT_LABEL, MODEL_LABEL, NEIGHBOURS_LABEL
from recmodels.data import Interactions
from recmodels.explain import POPULAR_REASON, explain
from recmodels.knn.item import ItemKNN
from recmodels.neural.training import NeuralRecommender
from recmodels.neural.warm_start import WarmStart
from recmodels.registry import get_model_class


@dataclass(frozen=True)
class PreparedData:
    """Everything the training stage needs, cut at ``as_of`` and cleaned."""

    dataset_name: str
    as_of: datetime
    interactions: pd.DataFrame  # cleaned events strictly before as_of
    users: pd.DataFrame | None  # imputed attributes
    items: pd.DataFrame | None
    split: TemporalSplit
    cleaning: CleaningReport
    user_features: pd.DataFrame
    item_features: pd.DataFrame
    imputation: list[dict[str, Any]] = field(default_factory=list)
    row_counts: dict[str, int] = field(default_factory=dict)
    # What reasons call each item ("Title (year)"), from the items table before imputation: an imputed year is a
    # median of other items' years, not this item's. None: built from ``items`` (older pickles, hand-made data).
    item_labels: pd.Series | None = None

    @property
    def has_ratings(self) -> bool:
        return RATING in self.interactions.columns and bool(self.interactions[RATING].notna().any())


@dataclass(frozen=True, eq=False)
class EvaluatedWeights:
    """A deep model's weights after its evaluation fit, with the ids its rows stand for, so that the publishing
    fit can start from them (``NeuralConfig.warm_start_epochs``) whatever indices the newer data gives."""

    state: dict[str, np.ndarray]
    users: pd.Index
    items: pd.Index

    def matched_to(self, index: IdIndex) -> WarmStart:
        """The warm start for a fit over ``index``: each of its users and items mapped to its row here (or -1)."""
        earlier = IdIndex(users=self.users, items=self.items)
        return WarmStart(self.state, earlier.user_codes(index.users), earlier.item_codes(index.items))


@dataclass(frozen=True)
class ModelEvaluation:
    """One model's side-by-side evaluation result (metrics on the held-out part, timings, or the error)."""

    model: str
    family: str
    metrics: dict[str, float]
    seconds: float
    error: str | None = None
    full: FullEvaluation | None = None  # tidy metrics over all k and user groups, per-user values
    weights: EvaluatedWeights | None = None  # a deep model's trained weights, for a warm-started refit

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def refit_config(self) -> dict[str, Any] | None:
        """The config the evaluated model asks to be refitted with on all events (None: its default config)."""
        return None if self.full is None else self.full.info.get("refit_config")


@dataclass(frozen=True)
class ModelRecommendations:
    """Top-N per user from a model refitted on all events before ``as_of``."""

    model: str
    frame: pd.DataFrame  # model, user_id, rank, item_id, score
    fit_seconds: float
    recommend_seconds: float
    warnings: tuple[str, ...] = ()  # what went wrong without stopping the publication (e.g. the cold-start chain)


def prepare(
    dataset: Dataset,
    report: ValidationReport,
    as_of: datetime,
    test_fraction: float = 0.2,
    impute: Mapping[str, Mapping[str, str]] | None = None,
) -> PreparedData:
    """Keep the events before ``as_of``, clean them, split by time, impute and compute features.

    The cut comes first: cleaning collapses a (user, item) pair's repeated events into the latest one, which
    must be the latest before ``as_of`` — cut afterwards, a pair repeated after ``as_of`` vanished from the run,
    and ``repeat_count`` counted events from its future. ``impute`` declares strategies per table and column
    (``{"users": {"age": "mean"}}``); the fill values are learned from the entities of the training part only.
    """
    impute = impute or {}
    raw = dataset.interactions
    loaded = len(raw)
    stamped = stamped_before(raw, as_of)
    # Rows without a timestamp stay for cleaning, which drops and counts them ("missing timestamp").
    window = stamped | raw[TIMESTAMP].isna().to_numpy()
    if not stamped.any():
        # A DataError like the other "this data cannot make a run" cases: the CLI reports it as a data problem.
        first = raw[TIMESTAMP].min()
        raise DataError(
            f"no interactions of {dataset.name!r} happened before as_of={as_of.isoformat()}: "
            "choose a later --as-of, or a later --start for a backfill (the data's first event is "
            f"{first if pd.notna(first) else 'absent'})"
        )
    # Validation named rows by position in the whole file: keep those in the window, renumbered.
    positions = np.cumsum(window) - 1
    drop_rows = {}
    for reason, rows in (report.rows_to_drop.get("interactions") or {}).items():
        rows = np.asarray(rows, dtype=np.int64).ravel()
        drop_rows[reason] = positions[rows[window[rows]]]
    events, cleaning = clean_interactions(
        raw.iloc[np.flatnonzero(window)] if not window.all() else raw,
        drop_rows=drop_rows,
        known_users=None if dataset.users is None else pd.Index(dataset.users[USER]),
        known_items=None if dataset.items is None else pd.Index(dataset.items[ITEM]),
        collapse=False,
    )
    if events.empty:
        raise DataError(_nothing_left_after_cleaning(dataset, cleaning))
    before = collapse_repeats(events)
    cleaning = cleaning.after_collapse(before)
    # Split the events, then collapse each part. Collapsed first, a pair the user had before their cut and again
    # after it kept only its later event: it became a test item the user "had not had", its earlier event left
    # training, and every model was credited for recommending it (on data with repeats; ML-100K has none).
    split = temporal_holdout(events, test_fraction=test_fraction)
    split = dataclasses.replace(split, train=collapse_repeats(split.train), test=collapse_repeats(split.test))
    # Events without a rating get their user's mean rating (the rating metrics leave them out): evaluation's
    # from its training part only, publishing's from every event before as_of (there is no held-out part).
    train, test = fill_missing_ratings(split.train, [split.train, split.test])
    [before] = fill_missing_ratings(before, [before])
    split = dataclasses.replace(split, train=train, test=test)
    if split.test.empty:
        # Every model would fail its evaluation with the same error; say it once, with the counts behind it.
        raise DataError(
            f"{dataset.name}: nothing to evaluate on — of {len(before)} events before {as_of.isoformat()} "
            f"({before[USER].nunique()} users, {before[ITEM].nunique()} items), the newest {test_fraction:.0%} of "
            f"each user's events held out for testing leave none that can be scored ({split.users_without_train} "
            f"users have a single event, {split.dropped_unseen_items} held-out events are of items no one had "
            f"before, {split.dropped_seen_pairs} repeat items the user already had). The pipeline needs users with "
            "several events, on items that other users have too: use more data, or a later --as-of if newer events"
            " exist"
        )
    train_users = pd.Index(split.train[USER].unique())
    train_items = pd.Index(split.train[ITEM].unique())
    imputation: list[dict[str, Any]] = []
    users = items = None
    later = {"users": 0, "items": 0}
    if dataset.users is not None:
        known, later["users"] = _known_at(dataset.users, USER, raw, window, as_of)
        known, implausible_ages = blank_implausible_ages(known)
        rules = declared_rules(known, USER, impute.get("users", {}))
        imputer = Imputer(rules).fit(known, id_column=USER, fit_ids=train_users)
        users = imputer.transform(known)
        for row in imputer.report():
            if row["column"] == "age" and implausible_ages:
                low, high = AGE_RANGE
                row["strategy"] = f"{row['strategy']} ({implausible_ages} not numbers or outside {low}–{high}: missing)"
            imputation.append({"table": "users", **row})
    labels = None
    if dataset.items is not None:
        known, later["items"] = _known_at(dataset.items, ITEM, raw, window, as_of)
        labels = item_labels(known)  # before imputation: an imputed year is the other items' median
        rules = declared_rules(known, ITEM, impute.get("items", {}))
        imputer = Imputer(rules).fit(known, id_column=ITEM, fit_ids=train_items)
        items = imputer.transform(known)
        imputation += [{"table": "items", **row} for row in imputer.report()]
    return PreparedData(
        dataset_name=dataset.name,
        as_of=as_of,
        interactions=before,
        users=users,
        items=items,
        split=split,
        cleaning=cleaning,
        user_features=user_features(before, as_of, items),
        item_features=item_features(before, as_of, items),
        imputation=imputation,
        item_labels=labels,
        row_counts={
            "loaded": loaded,
            "before_as_of": int(window.sum()),
            "cleaned": len(before),
            "train": len(split.train),
            "test": len(split.test),
            "users": int(before[USER].nunique()),
            "items": int(before[ITEM].nunique()),
        }
        | {f"{table} table rows after as_of (left out)": n for table, n in later.items() if n},
    )


def _known_at(
    table: pd.DataFrame, id_column: str, raw: pd.DataFrame, window: np.ndarray, as_of: datetime
) -> tuple[pd.DataFrame, int]:
    """The rows of a users/items ``table`` that existed at ``as_of``, and how many were left out.

    The tables are today's snapshot, while a past ``as_of`` (a backfill) must see the catalogue of its day: an
    entity whose first event comes after ``as_of``, or an item released in a later year, did not exist yet. Left
    in, such users were ranked and such items recommended (``new_items_weight``) on dates before they appeared.
    Entities without any event stay: nothing says they are newer than ``as_of``.
    """
    ids = table[id_column]
    seen_before = pd.Index(raw.loc[window, id_column].unique())
    first_seen_after = pd.Index(raw.loc[~window, id_column].unique()).difference(seen_before)
    later = ids.isin(first_seen_after)
    if id_column == ITEM and "release_year" in table.columns:
        years = pd.to_numeric(table["release_year"], errors="coerce")
        later |= (years > as_of.year) & ~ids.isin(seen_before)
    if not later.any():
        return table, 0
    return table.loc[~later].reset_index(drop=True), int(later.sum())


def _nothing_left_after_cleaning(dataset: Dataset, cleaning: CleaningReport) -> str:
    """Why cleaning kept no interaction, and the likely fix (ids that do not match the users/items tables)."""
    reasons = "; ".join(f"{rows} as {reason!r}" for reason, rows in cleaning.invalid_rows_dropped.items() if rows)
    message = f"{dataset.name}: cleaning kept none of the {cleaning.input_rows} interactions"
    message += f" ({reasons or 'none invalid'})"
    mismatched = False
    for column, table, name in ((ITEM, dataset.items, "items"), (USER, dataset.users, "users")):
        if table is None:
            continue
        ids = dataset.interactions[column].dropna().astype(str)
        if ids.empty or ids.isin(set(table[column].dropna().astype(str))).any():
            continue
        mismatched = True
        message += (
            f". Not one interaction's {column} is in the {name} table (interactions: {', '.join(ids.head(3))}; "
            f"{name} table: {', '.join(table[column].astype(str).head(3))})"
        )
        if ids.str.fullmatch(r"-?\d+\.0").all():
            message += (
                f"; the interactions' {column}s are written as decimals (e.g. {ids.iloc[0]}), as a column with "
                "empty cells gets exported: write them as whole numbers"
            )
    if mismatched:
        return message + ". Ids are compared as text: make the files use the same ids"
    return message + ": fix those rows in the source (the validation report and its Data Docs show samples)"


def make_model(name: str, config: Mapping[str, Any] | None = None) -> Recommender:
    """A fresh model with its registered default config, or with ``config``'s fields over it (all of a config's
    ``to_dict()``, or some of them)."""
    cls = get_model_class(name)
    return cls() if config is None else cls(cls.config_class(**config))


def _require_training_ratings(name: str, data: PreparedData) -> None:
    """A DataError saying why a model that needs ratings cannot be evaluated when the training part holds none
    (every rating is in the held-out part: a source that began recording ratings lately). It failed saying the
    data set had no ratings at all."""
    train = data.split.train
    if RATING in train.columns and not measured(train)[RATING].notna().any():
        raise DataError(
            f"{name} needs ratings to train, and the training part of the split (each user's older events) holds "
            f"none: every rating measured is among the held-out newer events. It cannot be evaluated on this data; "
            "leave it out (--models), or use data whose older events are rated too"
        )


def evaluate(
    name: str,
    data: PreparedData,
    k: int = 10,
    seed: int = 42,
    ks: Sequence[int] = (5, 10, 20),
    bootstrap: int = 1000,
    settings: RunSettings | None = None,
    params: Mapping[str, Any] | None = None,
) -> ModelEvaluation:
    """Fit ``name`` on the training part and measure it on the held-out part (plus RMSE/MAE if it rates).

    ``params`` replace fields of the model's registered config (``RunConfig.model_params``; checked there).

    ``metrics`` holds every metric at the leaderboard cut-off ``k`` under plain names (``ndcg``, ``coverage``,
    ...), the bootstrap interval of each as ``<name>_ci_low`` / ``<name>_ci_high``, and timings; ``full`` keeps
    the tidy table over all ``ks`` and activity groups plus per-user values for paired tests.
    """
    cls = get_model_class(name)
    settings = settings or RunSettings(seed=seed)
    fitted: list[Recommender] = []

    def new_model() -> Recommender:
        fitted.append(make_model(name, params))
        return fitted[-1]

    start = time.perf_counter()
    try:
        if cls.requires_ratings:
            _require_training_ratings(name, data)
        full = evaluate_full(
            new_model,
            data.split,
            ks=sorted({*ks, k}),
            item_attributes=data.items,
            bootstrap=bootstrap,
            seed=seed,
            settings=settings,
        )
        metrics = _metrics_at(full, k)
        if cls.predicts_ratings and data.has_ratings:
            rating = evaluate_ratings(lambda: make_model(name, params), data.interactions, seed=seed, settings=settings)
            metrics.update(
                rmse=rating["rmse"],
                mae=rating["mae"],
                # What the rating metrics stand on: 1 when 5 events in 1,424 had a rating (the rest filled in).
                rating_test_rows=rating["test_rows"],
                rating_fit_seconds=rating["fit_seconds"],
            )
        weights = _warm_start_weights(fitted[0], data.split.train)
    except Exception as exc:  # one model's failure must not sink the others; the flow reports it
        return ModelEvaluation(name, cls.family, {}, time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
    return ModelEvaluation(name, cls.family, metrics, time.perf_counter() - start, full=full, weights=weights)


def _warm_start_weights(model: Recommender, train: pd.DataFrame) -> EvaluatedWeights | None:
    """The evaluated network's weights when its config asks for warm-started refits, else ``None``."""
    if not isinstance(model, NeuralRecommender) or model.config.warm_start_epochs is None:
        return None
    index = IdIndex.from_frame(train)  # the index the evaluation fit used (evaluate_full builds the same one)
    return EvaluatedWeights(model.warm_state(), index.users, index.items)


def _metrics_at(full: FullEvaluation, k: int) -> dict[str, float]:
    """The overall metrics at cut-off ``k`` with their intervals, under plain names, plus timings."""
    summary = full.summary
    rows = summary[summary["group"].eq("all") & (summary["k"].eq(k) | summary["k"].isna()).fillna(True)]
    out: dict[str, float] = {}
    for metric, value, low, high in zip(rows["metric"], rows["value"], rows["ci_low"], rows["ci_high"], strict=True):
        out[metric] = float(value)
        if np.isfinite(low) and np.isfinite(high):
            out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = float(low), float(high)
    out["users"] = float(len(full.per_user))
    out["fit_seconds"] = float(full.info["fit_seconds"])
    out["score_seconds"] = float(full.info["score_seconds"])
    return out


def fit_and_recommend(
    name: str,
    data: PreparedData,
    top_n: int = 50,
    seed: int = 42,
    settings: RunSettings | None = None,
    *,
    cold_start: bool = True,
    explanations: bool = True,
    new_items_weight: float | None = None,
    config: Mapping[str, Any] | None = None,
    weights: EvaluatedWeights | None = None,
) -> ModelRecommendations:
    """Refit ``name`` on every event before ``as_of`` and rank ``top_n`` unseen items for every known user.

    ``config`` (a config's ``to_dict()``) replaces the registered default, typically the evaluated model's
    :attr:`ModelEvaluation.refit_config`: a deep model then trains the epoch count its evaluation early-stopped at.
    With ``weights`` (:attr:`ModelEvaluation.weights`) a deep model instead starts from the evaluated network,
    users and items matched by id, and trains its config's ``warm_start_epochs``.

    Users listed in the users table but without events are ranked too. With ``cold_start`` the declared fallback
    chain decides per user (:mod:`recmodels.coldstart.chain`): the model for users with more than four distinct
    items (repeats count once), item neighbours blended with segment popularity for one to four, attribute-segment
    popularity then global popularity for none; the frame's ``strategy`` column says which one produced each row.
    With ``explanations`` a ``reason`` column says why (:mod:`recmodels.explain`). With ``new_items_weight`` (and an
    items table) items without events join the catalogue and the chain blends a content score over item attributes
    with the model's, this weight on the model's side (``strategy`` ``content`` on those rows).
    """
    index = IdIndex.from_frame(data.interactions)
    hybrid = cold_start and new_items_weight is not None and data.items is not None
    if hybrid:
        assert data.items is not None
        unseen = pd.Index(data.items[ITEM].astype(str)).difference(index.items)
        index = IdIndex(users=index.users, items=index.items.append(unseen))
    train = index.interactions(data.interactions, ratings=get_model_class(name).requires_ratings or data.has_ratings)
    model = make_model(name, config)
    settings = settings or RunSettings(seed=seed)
    start = time.perf_counter()
    if weights is not None:
        if not isinstance(model, NeuralRecommender):
            raise TypeError(f"{name}: only deep models can start from evaluated weights")
        model.fit(train, settings, warm_start=weights.matched_to(index))
    else:
        model.fit(train, settings)
    fit_seconds = time.perf_counter() - start
    user_ids = index.users
    if data.users is not None:
        user_ids = user_ids.append(pd.Index(data.users[USER]).difference(index.users))
    codes = index.user_codes(user_ids)
    start = time.perf_counter()
    chain = None
    warnings: list[str] = []
    if cold_start:
        try:
            chain, query = _cold_start_chain(
                model, train, data, index, user_ids, settings, new_items_weight if hybrid else None
            )
        except Exception as exc:  # the chain helps; it must not cost the model its publication
            warnings.append(f"cold-start chain failed ({type(exc).__name__}: {exc}); published the model's own ranking")
    if chain is not None:
        items, scores, strategy = chain.recommend_with_strategy(codes, top_n, attributes=query)
    else:
        items, scores = model.recommend(codes, top_n, exclude_seen=True)
        strategy = np.where(items >= 0, MODEL_LABEL, "")
    recommend_seconds = time.perf_counter() - start
    n_users, n_cols = items.shape
    valid = (items >= 0).ravel()
    frame = pd.DataFrame(
        {
            "model": name,
            USER: np.repeat(np.asarray(user_ids, dtype=object), n_cols)[valid],
            "rank": np.tile(np.arange(1, n_cols + 1), n_users)[valid],
            ITEM: np.asarray(index.items, dtype=object)[items.ravel()[valid]],
            "score": scores.ravel()[valid].astype(np.float64),
            "strategy": strategy.ravel()[valid],
        }
    )
    if explanations:
        rows_users = np.repeat(codes, n_cols)[valid]
        reasons = _reasons(model, chain, train, rows_users, items.ravel()[valid], strategy.ravel()[valid], data, index)
        frame["reason"] = reasons
    return ModelRecommendations(name, frame, fit_seconds, recommend_seconds, tuple(warnings))


def _cold_start_chain(
    model: Recommender,
    train: Interactions,
    data: PreparedData,
    index: IdIndex,
    user_ids: pd.Index,
    settings: RunSettings,
    new_items_weight: float | None,
) -> tuple[ColdStartChain, UserAttributes | None]:
    """The fallback chain around a fitted ``model``, and the attributes of the users to rank (None without)."""
    attributes = query = None
    if data.users is not None and len(data.users.columns) > 1:
        attributes = encode_user_attributes(data.users, index.users, id_column=USER)
        query = encode_user_attributes(data.users, user_ids, id_column=USER, like=attributes)
    features = None
    if new_items_weight is not None and data.items is not None:
        features = encode_item_features(data.items, index.items, id_column=ITEM)
    config = ColdStartConfig(hybrid_alpha=new_items_weight)
    chain = ColdStartChain(config).fit(
        train,
        settings,
        model=model,
        user_attributes=attributes,
        item_features=features,
        # Fitted (or shared) only if some user has few enough events to reach the neighbours step.
        neighbours=lambda: _shared_neighbours(data, train, config, settings.seed),
    )
    return chain, query


# One item-kNN per prepared data set serves every model's chain: the flow's refit tasks share the process (thread
# runner) and the same PreparedData object, and at scale a kNN fit per model would cost as much as the model.
_NEIGHBOURS: dict[tuple[int, int, int], tuple[weakref.ref[PreparedData], ItemKNN]] = {}
_NEIGHBOURS_LOCK = threading.Lock()


def _shared_neighbours(data: PreparedData, train: Interactions, config: ColdStartConfig, seed: int) -> ItemKNN:
    """The chain's item–item kNN for ``data`` (fitted on ``train`` by the first caller, reused by the others)."""
    key = (id(data), train.n_users, train.n_items)
    with _NEIGHBOURS_LOCK:  # the others wait for the first fit rather than repeat it
        cached = _NEIGHBOURS.get(key)
        if cached is not None and cached[0]() is data and cached[1].config == config.neighbours:
            return cached[1]
        for stale in [k for k, (ref, _) in _NEIGHBOURS.items() if ref() is None]:
            del _NEIGHBOURS[stale]
        neighbours = ItemKNN(config.neighbours).fit(train, RunSettings(seed=seed))
        _NEIGHBOURS[key] = (weakref.ref(data), neighbours)
        return neighbours


def item_labels(items: pd.DataFrame | None) -> pd.Series | None:
    """Item id → "Title (year)" (or the title alone), for the items of ``items`` that have a title; None when the
    table has no title column."""
    column = title_column(items)
    if items is None or column is None:
        return None
    table = items.drop_duplicates(ITEM).set_index(ITEM)
    titles = table[column].dropna()
    if "release_year" in table.columns:
        # As floats: with a nullable Int64 or text column (MovieLens' loader gives Int64) a missing year compared
        # as NA, and the title of every item without a year became NaN.
        years = pd.Series(
            pd.to_numeric(table["release_year"].reindex(titles.index), errors="coerce").to_numpy(
                np.float64, na_value=np.nan
            ),
            index=titles.index,
        )
        # Whole years only: a fractional one (an imputed median) made the Int64 cast below fail every refit.
        has_year = (years == years.round()) & ~titles.astype(str).str.contains(r"\(\d{4}\)\s*$", regex=True)
        whole = years.where(has_year).astype("Int64").astype(str)
        titles = titles.astype(str).where(~has_year, titles.astype(str) + " (" + whole + ")")
    return titles.astype(str)


def _item_labels(data: PreparedData, index: IdIndex) -> np.ndarray:
    """What a reason calls each item of ``index``: its label (:func:`item_labels`), else the item id."""
    labels = pd.Series(np.asarray(index.items, dtype=object), index=index.items).astype(str)
    named = data.item_labels if data.item_labels is not None else item_labels(data.items)
    if named is not None:
        titles = named.reindex(index.items)
        labels = labels.where(titles.isna(), titles)
    return labels.to_numpy(dtype=object)


def _reasons(
    model: Recommender,
    chain: ColdStartChain | None,
    train: Interactions,
    users: np.ndarray,
    items: np.ndarray,
    strategy: np.ndarray,
    data: PreparedData,
    index: IdIndex,
) -> np.ndarray:
    """One short reason per published row, from whichever strategy produced it."""
    reasons = np.empty(len(users), dtype=object)
    labels = _item_labels(data, index)
    explainers = {MODEL_LABEL: model, NEIGHBOURS_LABEL: chain.neighbours_ if chain is not None else None}
    for label, explainer in explainers.items():
        rows = np.flatnonzero(strategy == label)
        if len(rows) == 0 or explainer is None:
            continue
        try:
            explanation = explain(explainer, train, users[rows], items[rows])
        except TypeError:  # a model recmodels.explain does not know: publish no reason rather than a wrong one
            continue
        reasons[rows] = explanation.reasons(labels)
    segment = np.char.startswith(strategy.astype(str), "segment_popularity:")
    reasons[segment] = [f"popular with users like you ({s.split(':', 1)[1]})" for s in strategy[segment]]
    reasons[strategy == "popularity"] = POPULAR_REASON
    reasons[strategy == CONTENT_LABEL] = "new, and like what you enjoyed"
    return reasons


def leaderboard(results: list[ModelEvaluation], primary_metric: str = "ndcg") -> pd.DataFrame:
    """One row per model, best first by the primary metric; failed models last with their error."""
    rows = []
    for result in results:
        row: dict[str, Any] = {"model": result.model, "family": result.family}
        row.update(result.metrics)
        row["seconds"] = round(result.seconds, 3)
        row["error"] = result.error
        rows.append(row)
    table = pd.DataFrame(rows)
    if primary_metric in table.columns:
        ascending = primary_metric in LOWER_IS_BETTER
        table = table.sort_values(primary_metric, ascending=ascending, na_position="last", kind="stable")
    return table.reset_index(drop=True)


def choose_champion(
    results: list[ModelEvaluation],
    primary_metric: str = "ndcg",
    k: int = 10,
    coverage_floor: float = 0.05,
    previous: ChampionDecision | None = None,
) -> ChampionSelection:
    """Pick the champion under the declared rule: best primary metric, coverage floor, no significant regression.

    Models whose evaluation carries per-user values (``full``) are compared with paired tests; the decision and
    its reason (including every rejected model and why) go to the ``champions`` table.
    """
    metric = primary_metric if primary_metric in LOWER_IS_BETTER else f"{primary_metric}@{k}"
    rules = ChampionRules(
        primary_metric=metric,
        coverage_floor=coverage_floor if metric not in LOWER_IS_BETTER else 0.0,
    )
    candidates = []
    for result in results:
        if result.full is not None:
            candidate = Candidate.from_evaluation(result.full)
            if primary_metric in LOWER_IS_BETTER and primary_metric in result.metrics:
                candidate = dataclasses.replace(
                    candidate, metrics={**candidate.metrics, primary_metric: result.metrics[primary_metric]}
                )
        else:
            keyed = {(m if m in LOWER_IS_BETTER else f"{m}@{k}"): v for m, v in result.metrics.items()}
            candidate = Candidate(result.model, keyed, {}, {}, None, result.error)
        candidates.append(candidate)
    return select_champion(candidates, rules, previous)


def metrics_frame(
    results: list[ModelEvaluation],
    k: int,
    protocol: str = "temporal_holdout",
    refits: Sequence[ModelRecommendations] = (),
) -> pd.DataFrame:
    """Long-format metrics (model, metric, k, value, split) for the ``model_metrics`` table.

    Every metric at every evaluated cut-off, its bootstrap interval as ``<metric>_ci_low`` / ``_ci_high``, and the
    per-activity-group values under split ``<protocol>:<group>``; rating metrics (and ``rating_test_rows``, the rated
    test events they average over) under ``random_80_20``; timings
    under ``timing``, the publishing refits' as ``refit_fit_seconds`` / ``refit_recommend_seconds``.
    """
    rows: list[tuple[str, str, int | None, float, str]] = []
    for result in results:
        if result.full is not None:
            table = result.full.summary
            for metric, cut, group, value, low, high in zip(
                table["metric"],
                table["k"],
                table["group"],
                table["value"],
                table["ci_low"],
                table["ci_high"],
                strict=True,
            ):
                split = protocol if group == "all" else f"{protocol}:{group}"
                cut_off = None if pd.isna(cut) else int(cut)
                if np.isfinite(value):
                    rows.append((result.model, metric, cut_off, float(value), split))
                if np.isfinite(low) and np.isfinite(high):
                    rows.append((result.model, f"{metric}_ci_low", cut_off, float(low), split))
                    rows.append((result.model, f"{metric}_ci_high", cut_off, float(high), split))
        for metric, value in result.metrics.items():
            if metric in LOWER_IS_BETTER or metric == "rating_test_rows":
                rows.append((result.model, metric, None, float(value), "random_80_20"))
            elif metric.endswith("_seconds"):
                rows.append((result.model, metric, None, float(value), "timing"))
            elif result.full is None and not metric.endswith(("_ci_low", "_ci_high")) and metric != "users":
                rows.append((result.model, metric, k, float(value), protocol))
    for refit in refits:
        rows.append((refit.model, "refit_fit_seconds", None, float(refit.fit_seconds), "timing"))
        rows.append((refit.model, "refit_recommend_seconds", None, float(refit.recommend_seconds), "timing"))
    return pd.DataFrame(rows, columns=["model", "metric", "k", "value", "split"])
