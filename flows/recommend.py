"""The ``recommend`` flow: ingest → validate → prepare → train/evaluate all models in parallel → publish."""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner

from flows.dispatch import estimated_costs, run_model_tasks
from flows.runners import (
    data_for_tasks,
    make_task_runner,
    model_task_slots,
    release_workers,
    runner_name,
    shared_blas_threads,
    task_threads,
    worker_processes,
)
from recforge import handoff, progress
from recforge.champion import LOWER_IS_BETTER, ChampionSelection, keep_standing_champion
from recforge.config import ConfigError, RunConfig, refuse_future_as_of, resolve_db_url
from recforge.data.sources import SourceSpec
from recforge.memory import MemoryWatch, publish_advice, runner_advice
from recforge.pipeline import (
    ModelEvaluation,
    ModelRecommendations,
    PreparedData,
    choose_champion,
    leaderboard,
    metrics_frame,
)
from recforge.store import PUBLISHED_ALL_OR_NOTHING, RUN_STAGES, ChampionDecision, Store
from recmodels.registry import get_model_class
from tasks.ingest import ingest
from tasks.prepare import prepare_data
from tasks.privacy import protect
from tasks.publish import close_run, open_run, publish
from tasks.report import write_run_report
from tasks.train import evaluate_model, recommend_model
from tasks.validate import validate_with_docs


class ModelsFailed(RuntimeError):
    """Some models failed (the others, if any, were published); the message lists the failures.

    ``summary`` is what the flow would have returned (leaderboard, champion, report path, rows written), so that a
    caller can still show what was published.
    """

    def __init__(self, message: str, summary: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.summary = summary

    def __reduce__(self) -> tuple[Any, ...]:  # results may be pickled: keep the summary
        return (type(self), (str(self), self.summary))


@flow(name="recommend", validate_parameters=True)
def recommend(config: RunConfig | None = None, db_url: str | None = None) -> dict[str, Any]:
    """Run the nightly pipeline once for ``config.as_of`` and publish ranked recommendations to SQL.

    ``db_url`` is best left unset (it would show among the run's parameters): the URL then comes from
    ``$RECFORGE_DB_URL`` or defaults to ``sqlite:///var/recforge.db``. The model tasks run on
    ``config.task_runner``: when the flow was started on another runner (a deployment's run starts on threads),
    the pipeline runs as a child flow run on the configured one.
    """
    config = config or RunConfig()
    # The CLI refuses this before Prefect starts; a deployment's run (parameters from the dashboard) comes here.
    refuse_future_as_of(config.as_of, "config.as_of", "an as_of up to today, or none for now")
    logger = get_run_logger()
    context = FlowRunContext.get()
    current_runner = runner_name(context.task_runner) if context is not None else config.task_runner
    if current_runner != config.task_runner:
        # A deployment's run (and any plain call) starts on the flow's default thread runner; the runner the config
        # asks for needs a flow run of its own, so the pipeline runs as a child flow run on it.
        logger.info("config.task_runner is %r: the pipeline runs as a child flow run on it", config.task_runner)
        runner = make_task_runner(config.task_runner, config.max_workers, config.dask_address)
        return recommend.with_options(task_runner=runner)(config=config, db_url=db_url)
    url = resolve_db_url(db_url)
    as_of = config.resolved_as_of()
    output_dir = Path(config.output_dir)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 3)
        clock = now

    # The run is recorded before any data is read, so a run that fails at ingest (a missing file, a source that
    # does not answer) leaves a failed run row too, not only a failed flow run.
    spec = SourceSpec.from_mapping(config.source)
    flow_run_id = str(flow_run.id) if flow_run.id else None
    run_id = open_run(url, spec.dataset_name, spec.describe(), as_of, config.recorded_parameters(), flow_run_id)
    clock = time.perf_counter()
    task_data: PreparedData | handoff.DataRef | None = None
    memory: MemoryWatch | None = None  # samples free memory while models train and while the run publishes
    training = contextlib.ExitStack()  # what holds while model tasks run (closed by _training_over)
    try:
        dataset = protect(ingest(config.source, config.privacy), url)
        lap("ingest")
        report = validate_with_docs(dataset, config.min_interactions, output_dir / "gx")
        lap("validate")
        impute = {table: config.impute_for(table) for table in ("users", "items")}
        data = prepare_data(dataset, report, as_of, config.test_fraction, impute)
        lap("prepare")

        names, skipped = config.models_for_data(data.has_ratings)
        for name, reason in skipped.items():
            logger.warning("%s left out: %s", name, reason)
        _refuse_unmeasurable_metric(config.primary_metric, names, data.has_ratings)
        task_data = data_for_tasks(data, output_dir / "handoff")
        memory = MemoryWatch(logger.warning, _memory_advice(context, config, task_data)).start()
        # A time budget per model task: a model that hangs is cut off and counted as failed, not the whole run.
        evaluate_task = evaluate_model.with_options(timeout_seconds=config.model_timeout_s)
        recommend_task = recommend_model.with_options(timeout_seconds=config.model_timeout_s)
        costs = estimated_costs(
            {n: get_model_class(n).training_cost for n in names}, _measured_seconds(url, dataset.name, names)
        )
        logger.info("training order (expected seconds): %s", _order_line(costs))
        for name, params in config.model_params.items():
            if name in names:
                logger.info("%s hyperparameters over its defaults: %s", name, params)
            else:
                logger.warning("model_params for %s unused: %s is not trained in this run", name, name)
        runner = context.task_runner if context is not None else None
        slots = model_task_slots(runner, config.max_workers)
        training.enter_context(shared_blas_threads(runner, slots))
        threads = task_threads(runner, slots)  # torch's, per task; None where the workers' environment splits them
        training.callback(_release_workers, runner)  # no worker holds the data while the flow publishes
        tasks = run_model_tasks(
            names,
            costs,
            lambda n: evaluate_task.submit(n, task_data, config.k, config.seed, threads, config.model_params.get(n)),
            # A refit receives its finished evaluation and skips itself when that model already failed.
            lambda n, evaluation: recommend_task.submit(
                n,
                task_data,
                config.top_n,
                config.seed,
                evaluation,
                config.cold_start,
                config.explanations,
                config.new_items_weight,
                threads,
            ),
            slots,
            deadline=_flow_side_deadline(config.model_timeout_s),
        )
        evaluations, refits = tasks.evaluations, tasks.refits
        results: list[ModelEvaluation] = [
            _failed_evaluation(n, f"evaluation timed out: {tasks.overdue[(n, 'evaluation')]}")
            if (n, "evaluation") in tasks.overdue
            else _evaluation_result(n, evaluations[n])
            for n in names
        ]
        recommendations: list[ModelRecommendations] = []
        refit_errors: dict[str, str] = {}
        for name in names:
            if name not in refits:  # its evaluation task did not complete: that error is the model's
                continue
            if (name, "refit") in tasks.overdue:  # never waited on: it may never finish
                refit_errors[name] = f"refit timed out: {tasks.overdue[(name, 'refit')]}"
                continue
            try:
                refits[name].wait()
                state = refits[name].state
                if not state.is_completed():
                    refit_errors[name] = str(state.message or state.name)
                elif (published := refits[name].result()) is not None:
                    recommendations.append(published)
            except Exception as exc:  # a runner that raises the task's end here (a killed process worker)
                refit_errors[name] = f"refit ended: {type(exc).__name__}: {exc}"
        _training_over(None, task_data, training)
        lap("train")  # evaluations and refits interleave: one stage
        # Publishing holds every model's rows at once in this process: the watch goes on, with advice for it.
        memory.switch(
            "while the recommendations are published", publish_advice(sum(len(r.frame) for r in recommendations))
        )

        # An evaluation's own error says more than the refit's "upstream failed", so it wins.
        failed = refit_errors | {r.model: r.error for r in results if not r.ok}
        ok_results = [r for r in results if r.ok and r.model not in refit_errors]
        board = leaderboard(results, config.primary_metric)
        _leaderboard_artifact(board, config.k)
        # Guard rails (coverage floor, no significant regression) may reject every model: then no champion row
        # is written and the view keeps serving the previous champion.
        selection: ChampionSelection | None = None
        if ok_results:
            previous, standing = _champions_around(url, as_of, dataset.name)
            selection = choose_champion(ok_results, config.primary_metric, config.k, previous=previous)
            # A rerun of this date with some of the models must not demote a better champion it did not retrain.
            selection = keep_standing_champion(selection, standing, {r.model for r in recommendations}, failed)
        champion = selection.to_decision() if selection is not None and selection.model else None
        metrics = metrics_frame(results, config.k, refits=recommendations)
        if recommendations:
            frame = pd.concat([r.frame for r in recommendations], ignore_index=True)
            written = publish(url, run_id, data, metrics, frame, champion)
        else:
            written = {}
        memory.stop()
        lap("publish")
        status = "completed" if not failed else ("partial" if recommendations else "failed")
        error = "; ".join(f"{m}: {e}" for m, e in failed.items()) or None
        # The date's champion after this run: the one it chose, else the standing one it kept (the view serves it).
        serving = champion.model if champion else (selection.kept if selection is not None else None)
        close_run(url, run_id, status, timings, error, serving)
        summary = {
            "run_id": run_id,
            "status": status,
            "dataset": dataset.name,
            "as_of": as_of.isoformat(),
            "database": Store(url).url_masked,
            "champion": serving,
            "champion_reason": None if selection is None else selection.reason,
            "leaderboard": board.to_dict(orient="records"),
            "rows_written": written,
            "row_counts": data.row_counts,
            "timings": timings,
            "memory": memory.summary(),
            "failed_models": failed,
            "skipped_models": skipped,
            "data_docs": None if report.data_docs_index is None else str(report.data_docs_index),
        }
        summary["report"] = write_run_report(
            summary,
            output_dir,
            k=config.k,
            primary_metric=config.primary_metric,
            data=data,
            recommendations=frame if recommendations else None,
            metrics=metrics,
            validation=report.to_records(),
            validation_summary=report.summary(),
            refit_timings={
                r.model: {"fit_seconds": r.fit_seconds, "recommend_seconds": r.recommend_seconds}
                for r in recommendations
            },
        )
        _summary_artifact(summary, data.cleaning.summary(), report.summary())
        logger.info("run %s %s; champion %s", run_id, status, summary["champion"])
    except Exception as exc:
        _training_over(memory, task_data, training)
        lap(f"{_stage_after(timings)} (failed)")  # the stage that was running, and how long it ran
        close_run(url, run_id, "failed", timings, f"{type(exc).__name__}: {exc}")
        raise
    except BaseException as exc:
        # Interrupted: Ctrl-C, or a SIGTERM (which Prefect raises as TerminationSignal) from a cancellation, a
        # worker or container shutting down. No task can run any more, so the run record is closed directly, or
        # it would say "running" for ever; then the interruption goes on. Model tasks still training in this
        # process's threads stop at their next progress report, instead of holding the exit until they finish.
        if flow_run_id is not None:
            progress.interrupt(flow_run_id)
        _training_over(memory, task_data, training)
        _close_interrupted_run(url, run_id, timings, exc)
        raise
    if failed:
        outcome = (
            f"the others were published as run {run_id}"
            if recommendations
            else f"nothing was published (run {run_id}); the previous tables stay as they were"
        )
        raise ModelsFailed(f"{len(failed)} of {len(names)} models failed ({error}); {outcome}", summary)
    return summary


def _memory_advice(context: FlowRunContext | None, config: RunConfig, task_data: object) -> str:
    """The end of a low-memory warning for the runner this flow run trains on (see :mod:`recforge.memory`); the
    runner's own settings say how many worker processes hold a copy of the data."""
    data_bytes = task_data.nbytes if isinstance(task_data, handoff.DataRef) else None
    if context is None:
        return runner_advice(config.task_runner, None, data_bytes)
    return runner_advice(runner_name(context.task_runner), worker_processes(context.task_runner), data_bytes)


def _training_over(
    memory: MemoryWatch | None, task_data: PreparedData | handoff.DataRef | None, training: contextlib.ExitStack
) -> None:
    """Stop watching memory (if given: a successful run watches on while it publishes), release the workers, lift
    the BLAS limit and remove the hand-off file: the model tasks are done (or will never run)."""
    training.close()
    if memory is not None:
        memory.stop()
    handoff.remove(task_data)


def _release_workers(runner: TaskRunner | None) -> None:
    """:func:`flows.runners.release_workers`, logged; a failure to release is a warning, not the run's end."""
    logger = get_run_logger()
    try:
        done = release_workers(runner)
    except Exception as exc:  # the workers' memory is reclaimed when the flow ends anyway
        logger.warning("could not release the worker processes' memory after training: %s: %s", type(exc).__name__, exc)
        return
    if done:
        logger.info("model tasks done: %s", done)


def _stage_after(timings: dict[str, float]) -> str:
    """The stage that runs after the last one timed (the one in progress when the run failed)."""
    done = [stage for stage in RUN_STAGES if stage in timings]
    return RUN_STAGES[len(done)] if len(done) < len(RUN_STAGES) else "finishing"


def _close_interrupted_run(url: str, run_id: str, timings: dict[str, float], exc: BaseException) -> None:
    """Mark an interrupted run failed, naming the interruption and the last stage that finished."""
    last = next(reversed(timings), "start")
    error = f"interrupted by {type(exc).__name__} after stage {last!r}; {PUBLISHED_ALL_OR_NOTHING}"
    try:
        store = Store(url)
        try:
            store.finish_run(run_id, status="failed", timings=timings, error=error)
        finally:
            store.dispose()
    except Exception as close_error:  # the interruption matters more than the record of it
        get_run_logger().warning("could not close interrupted run %s: %s", run_id, close_error)


def _measured_seconds(url: str, dataset: str, names: list[str]) -> dict[str, float]:
    """The models' training seconds in recent runs on this data set; {} when they cannot be read (only the order
    of the model tasks depends on them, so this never fails the run)."""
    store = None
    try:
        store = Store(url)
        return store.recent_training_seconds(dataset, names)
    except Exception as exc:
        get_run_logger().warning("earlier runs' model timings unreadable (%s); using the models' cost hints", exc)
        return {}
    finally:
        if store is not None:
            store.dispose()


def _champions_around(
    url: str, as_of: datetime, dataset: str
) -> tuple[ChampionDecision | None, ChampionDecision | None]:
    """The champion of the latest as_of before this run's on the same data set (the no-regression guard's bar), and
    this as_of's own champion as an earlier run of the date published it (what a rerun would replace)."""
    store = Store(url)
    try:
        return store.previous_champion(as_of, dataset), store.champion_of(as_of, dataset)
    finally:
        store.dispose()


def _order_line(costs: dict[str, float]) -> str:
    return ", ".join(f"{n} {c:.1f}" for n, c in sorted(costs.items(), key=lambda item: -item[1]))


def _refuse_unmeasurable_metric(primary_metric: str, names: list[str], has_ratings: bool) -> None:
    """Before any model trains: a rating error as the primary metric needs ratings and a model that predicts them,
    or no model could be chosen (the run completed, exit 0, with no champion)."""
    if primary_metric not in LOWER_IS_BETTER:
        return
    if not has_ratings:
        why = "this data has no ratings"
    elif not any(get_model_class(n).predicts_ratings for n in names):
        why = f"none of the models of this run ({', '.join(names)}) predicts ratings"
    else:
        return
    raise ConfigError(
        f"primary_metric {primary_metric!r} cannot pick a champion: {why}; use a top-N metric (primary_metric = "
        "'ndcg', the default)" + ("" if not has_ratings else " or add a rating model (biased_mf, nmf, item_knn, …)")
    )


def _flow_side_deadline(model_timeout_s: float | None) -> float | None:
    """How long the flow waits for any model task to finish before it gives up on those in flight: the budget plus
    as much again (at least a minute) for a worker to report the timeout it enforces itself. None without one."""
    return None if model_timeout_s is None else model_timeout_s + max(60.0, model_timeout_s)


def _failed_evaluation(name: str, error: str) -> ModelEvaluation:
    """The evaluation of a model whose task did not complete: no metrics, the reason as its error."""
    return ModelEvaluation(
        model=name, family=get_model_class(name).family, metrics={}, seconds=float("nan"), error=error
    )


def _evaluation_result(name: str, future: PrefectFuture[ModelEvaluation]) -> ModelEvaluation:
    """The evaluation, or a failed one when the task itself did not complete (timed out, crashed, its worker
    process killed: the process runner raises that from ``wait()``)."""
    try:
        future.wait()
        state = future.state
        if state.is_completed():
            return future.result()
        reason = "timed out" if state.name == "TimedOut" else f"ended {state.name}"
        message = state.message or ""
    except Exception as exc:
        reason, message = "ended", f"{type(exc).__name__}: {exc}"
    return _failed_evaluation(name, f"evaluation {reason}: {message}".strip())


def _leaderboard_artifact(board: pd.DataFrame, k: int) -> None:
    shown = board.drop(columns=[c for c in board.columns if c.endswith("_seconds")], errors="ignore")
    records = [
        {key: (round(v, 4) if isinstance(v, float) else v) for key, v in row.items()}
        for row in shown.to_dict(orient="records")
    ]
    create_table_artifact(key="leaderboard", table=records, description=f"Models side by side, top-N metrics @{k}")


def _summary_artifact(summary: dict[str, Any], cleaning: str, validation: str) -> None:
    timing_rows = "\n".join(f"| {stage} | {seconds:.2f} |" for stage, seconds in summary["timings"].items())
    count_rows = "\n".join(f"| {stage} | {rows:,} |" for stage, rows in summary["row_counts"].items())
    failed = "\n".join(f"- **{m}** failed: {e}" for m, e in summary["failed_models"].items()) or "- none"
    skipped = "\n".join(f"- **{m}**: {why}" for m, why in summary.get("skipped_models", {}).items()) or "- none"
    markdown = f"""# recforge run `{summary["run_id"]}`

- **data set**: {summary["dataset"]}, as of {summary["as_of"]}
- **status**: {summary["status"]}
- **champion**: {summary["champion"] or "none"} — {summary["champion_reason"] or "no model finished its evaluation"}
- **database**: `{summary["database"]}`
- **report**: {summary.get("report") or "not written (see the flow run's logs)"}
- **validation**: {validation}
- **cleaning**: {cleaning}

## Rows per stage
| stage | rows |
|---|---|
{count_rows}

## Timings
| stage | seconds |
|---|---|
{timing_rows}

## Failed models
{failed}

## Left out for this data
{skipped}
"""
    create_markdown_artifact(key="run-summary", markdown=markdown, description="What this run did")
