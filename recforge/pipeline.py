"""The pipeline's stages as plain functions over plain data, so they are testable without Prefect.

``tasks/`` wraps each of these in a Prefect task and ``flows/recommend.py`` composes them; nothing here imports
Prefect. Stage order: load → validate → :func:`prepare` (clean, cut at ``as_of``, split, impute, features) →
:func:`evaluate` and :func:`fit_and_recommend` per model → :func:`leaderboard` / :func:`choose_champion` → publish.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from recforge.data.contract import ITEM, RATING, USER, Dataset
from recforge.evaluation import evaluate_ratings, evaluate_topn
from recforge.features import item_features, user_features
from recforge.ids import IdIndex
from recforge.prepare import CleaningReport, Imputer, clean_interactions, declared_rules
from recforge.split import TemporalSplit, events_before, temporal_holdout
from recforge.store import ChampionDecision
from recforge.validation import ValidationReport
from recmodels.base import Recommender, RunSettings
from recmodels.registry import get_model_class

# Metrics where lower is better; every other metric is maximised when picking a champion.
LOWER_IS_BETTER = frozenset({"rmse", "mae"})


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

    @property
    def has_ratings(self) -> bool:
        return RATING in self.interactions.columns and bool(self.interactions[RATING].notna().any())


@dataclass(frozen=True)
class ModelEvaluation:
    """One model's side-by-side evaluation result (metrics on the held-out part, timings, or the error)."""

    model: str
    family: str
    metrics: dict[str, float]
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ModelRecommendations:
    """Top-N per user from a model refitted on all events before ``as_of``."""

    model: str
    frame: pd.DataFrame  # model, user_id, rank, item_id, score
    fit_seconds: float
    recommend_seconds: float


def prepare(
    dataset: Dataset,
    report: ValidationReport,
    as_of: datetime,
    test_fraction: float = 0.2,
    impute: Mapping[str, Mapping[str, str]] | None = None,
) -> PreparedData:
    """Clean the validated data, keep events before ``as_of``, split by time, impute and compute features.

    ``impute`` declares strategies per table and column (``{"users": {"age": "mean"}}``); the fill values are
    learned from the entities of the training part only.
    """
    impute = impute or {}
    loaded = len(dataset.interactions)
    cleaned, cleaning = clean_interactions(
        dataset.interactions,
        drop_rows=report.rows_to_drop.get("interactions"),
        known_users=None if dataset.users is None else pd.Index(dataset.users[USER]),
        known_items=None if dataset.items is None else pd.Index(dataset.items[ITEM]),
    )
    before = events_before(cleaned, as_of)
    if before.empty:
        raise ValueError(
            f"no interactions of {dataset.name!r} happened before as_of={as_of.isoformat()}: "
            "choose a later --as-of (the data's first event is "
            f"{cleaned['timestamp'].min() if len(cleaned) else 'absent'})"
        )
    split = temporal_holdout(before, test_fraction=test_fraction)
    train_users = pd.Index(split.train[USER].unique())
    train_items = pd.Index(split.train[ITEM].unique())
    imputation: list[dict[str, Any]] = []
    users = items = None
    if dataset.users is not None:
        rules = declared_rules(dataset.users, USER, impute.get("users", {}))
        imputer = Imputer(rules).fit(dataset.users, id_column=USER, fit_ids=train_users)
        users = imputer.transform(dataset.users)
        imputation += [{"table": "users", **row} for row in imputer.report()]
    if dataset.items is not None:
        rules = declared_rules(dataset.items, ITEM, impute.get("items", {}))
        imputer = Imputer(rules).fit(dataset.items, id_column=ITEM, fit_ids=train_items)
        items = imputer.transform(dataset.items)
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
        row_counts={
            "loaded": loaded,
            "cleaned": len(cleaned),
            "before_as_of": len(before),
            "train": len(split.train),
            "test": len(split.test),
            "users": int(before[USER].nunique()),
            "items": int(before[ITEM].nunique()),
        },
    )


def make_model(name: str) -> Recommender:
    """A fresh model with its registered default config."""
    return get_model_class(name)()


def evaluate(name: str, data: PreparedData, k: int = 10, seed: int = 42) -> ModelEvaluation:
    """Fit ``name`` on the training part and measure it on the held-out part (plus RMSE/MAE if it rates)."""
    cls = get_model_class(name)
    settings = RunSettings(seed=seed)
    start = time.perf_counter()
    try:
        metrics = dict(evaluate_topn(lambda: cls(), data.split, k=k, settings=settings))
        if cls.predicts_ratings and data.has_ratings:
            metrics.update(evaluate_ratings(lambda: cls(), data.interactions, seed=seed, settings=settings))
    except Exception as exc:  # one model's failure must not sink the others; the flow reports it
        return ModelEvaluation(name, cls.family, {}, time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
    return ModelEvaluation(name, cls.family, metrics, time.perf_counter() - start)


def fit_and_recommend(name: str, data: PreparedData, top_n: int = 50, seed: int = 42) -> ModelRecommendations:
    """Refit ``name`` on every event before ``as_of`` and rank ``top_n`` unseen items for every known user.

    Users listed in the users table but without events get the model's fallback (popularity) ranking.
    """
    index = IdIndex.from_frame(data.interactions)
    train = index.interactions(data.interactions, ratings=get_model_class(name).requires_ratings or data.has_ratings)
    model = make_model(name)
    start = time.perf_counter()
    model.fit(train, RunSettings(seed=seed))
    fit_seconds = time.perf_counter() - start
    user_ids = index.users
    if data.users is not None:
        user_ids = user_ids.append(pd.Index(data.users[USER]).difference(index.users))
    codes = index.user_codes(user_ids)
    start = time.perf_counter()
    items, scores = model.recommend(codes, top_n, exclude_seen=True)
    recommend_seconds = time.perf_counter() - start
    n_users, n_cols = items.shape
    valid = items >= 0
    frame = pd.DataFrame(
        {
            "model": name,
            USER: np.repeat(np.asarray(user_ids, dtype=object), n_cols)[valid.ravel()],
            "rank": np.tile(np.arange(1, n_cols + 1), n_users)[valid.ravel()],
            ITEM: np.asarray(index.items, dtype=object)[items[valid]],
            "score": scores[valid].astype(np.float64),
        }
    )
    return ModelRecommendations(name, frame, fit_seconds, recommend_seconds)


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


def choose_champion(results: list[ModelEvaluation], primary_metric: str = "ndcg", k: int = 10) -> ChampionDecision:
    """The successful model with the best primary metric; ties go to the earlier model in the list."""
    candidates = [r for r in results if r.ok and primary_metric in r.metrics and np.isfinite(r.metrics[primary_metric])]
    if not candidates:
        raise ValueError(f"no model produced {primary_metric!r}; cannot choose a champion")
    sign = 1.0 if primary_metric in LOWER_IS_BETTER else -1.0
    best = min(candidates, key=lambda r: sign * r.metrics[primary_metric])
    others = sorted((r for r in candidates if r is not best), key=lambda r: sign * r.metrics[primary_metric])
    runner_up = (
        f"; runner-up {others[0].model} {others[0].metrics[primary_metric]:.4f}" if others else "; only candidate"
    )
    metric_name = primary_metric if primary_metric in LOWER_IS_BETTER else f"{primary_metric}@{k}"
    return ChampionDecision(
        model=best.model,
        metric=metric_name,
        value=float(best.metrics[primary_metric]),
        reason=f"best {metric_name} on the temporal holdout ({best.metrics[primary_metric]:.4f}){runner_up}",
    )


def metrics_frame(results: list[ModelEvaluation], k: int) -> pd.DataFrame:
    """Long-format metrics (model, metric, k, value, split) for the ``model_metrics`` table."""
    rows = []
    for result in results:
        for metric, value in result.metrics.items():
            if metric in LOWER_IS_BETTER:
                rows.append((result.model, metric, None, float(value), "random_80_20"))
            elif metric.endswith("_seconds") or metric in {"users"}:
                rows.append(
                    (
                        result.model,
                        metric,
                        None,
                        float(value),
                        "timing" if "seconds" in metric else "temporal_holdout",
                    )
                )
            else:
                rows.append((result.model, metric, k, float(value), "temporal_holdout"))
    return pd.DataFrame(rows, columns=["model", "metric", "k", "value", "split"])
