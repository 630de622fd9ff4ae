"""Train: one task per model for evaluation, and one per model for the publishing refit."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from recforge.handoff import DataRef, resolve
from recforge.malloc import tune_malloc
from recforge.pipeline import ModelEvaluation, ModelRecommendations, PreparedData, evaluate, fit_and_recommend
from recforge.progress import progress_callback, stoppable
from recmodels.base import RunSettings
from recmodels.torch_utils import torch_threads


@task(name="evaluate-model", cache_policy=NO_CACHE, task_run_name="evaluate-{name}")
def evaluate_model(
    name: str,
    data: PreparedData | DataRef,
    k: int,
    seed: int,
    threads: int | None = None,
    params: dict[str, Any] | None = None,
) -> ModelEvaluation:
    """Fit on the training part, measure on the temporal holdout; a failure is returned, not raised.

    ``data`` is the prepared data, or a reference to it when the task runs in another process. ``threads``: this
    task's share of the cores on the thread runner (``flows.runners.task_threads``; None elsewhere), set as the
    task thread's torch count rather than as ``RunSettings.threads``: a cap, not a request, so the models that
    choose one thread on their own (bpr's small steps, the deep models on CPU) still do. torch's count is per
    thread, so the other tasks keep theirs. ``params``: the run's hyperparameters for this model
    (``RunConfig.model_params``); the refit takes them from the evaluated model's config.
    """
    tune_malloc()  # once per process: the worker processes of the process and Dask runners included
    logger = get_run_logger()
    progress = stoppable(progress_callback(f"{name} (evaluation)", log=logger.info), _flow_run_key())
    settings = RunSettings(seed=seed, progress=progress)
    with torch_threads(threads):
        result = evaluate(name, resolve(data), k=k, seed=seed, settings=settings, params=params)
    if result.ok:
        shown = {m: round(v, 4) for m, v in result.metrics.items() if not m.endswith("_seconds")}
        logger.info("%s evaluated in %.2f s: %s", name, result.seconds, shown)
    else:
        logger.error("%s failed during evaluation: %s", name, result.error)
    return result


@task(name="fit-and-recommend", cache_policy=NO_CACHE, task_run_name="recommend-{name}")
def recommend_model(
    name: str,
    data: PreparedData | DataRef,
    top_n: int,
    seed: int,
    evaluation: ModelEvaluation,
    cold_start: bool = True,
    explanations: bool = True,
    new_items_weight: float | None = None,
    threads: int | None = None,
) -> ModelRecommendations | None:
    """Refit on all events before as_of and rank top-N unseen items for every user (skipped if evaluation failed).

    The refit uses the config the evaluated model asks for (a deep model: the epoch count its evaluation
    early-stopped at, so the refit trains on every event without a validation slice of its own), and starts
    from the evaluated network when that config has ``warm_start_epochs`` (GRU4Rec, NeuMF).
    """
    if not evaluation.ok:
        get_run_logger().warning("%s: not refitted because its evaluation failed", name)
        return None
    tune_malloc()
    progress = stoppable(progress_callback(f"{name} (refit)", log=get_run_logger().info), _flow_run_key())
    settings = RunSettings(seed=seed, progress=progress)
    if evaluation.weights is not None and evaluation.refit_config is not None:
        get_run_logger().info(
            "%s: refit starts from the evaluated network's weights, %s epochs on all events",
            name,
            evaluation.refit_config.get("warm_start_epochs"),
        )
    with torch_threads(threads):
        result = fit_and_recommend(
            name,
            resolve(data),
            top_n=top_n,
            seed=seed,
            settings=settings,
            cold_start=cold_start,
            explanations=explanations,
            new_items_weight=new_items_weight,
            config=evaluation.refit_config,
            weights=evaluation.weights,
        )
    for warning in result.warnings:
        get_run_logger().warning("%s: %s", name, warning)
    # Count first, then fold "segment_popularity:<segment>" labels by prefix: splitting every row's label cost
    # 16 s per model at 200,000 users × 50 rows.
    counts = result.frame["strategy"].value_counts()
    by_strategy = counts.groupby(counts.index.str.split(":").str[0], sort=False).sum().to_dict()
    get_run_logger().info(
        "%s: %d recommendations (fit %.2f s, recommend %.2f s); rows by strategy: %s",
        name,
        len(result.frame),
        result.fit_seconds,
        result.recommend_seconds,
        by_strategy,
    )
    return result


def _flow_run_key() -> str | None:
    """The id of the flow run this task belongs to (what :func:`recforge.progress.interrupt` is given), if any."""
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None
