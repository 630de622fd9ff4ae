"""The ``backfill`` flow: run the ``recommend`` pipeline for every ``as_of`` date in ``[start, end]``.

Open-source Prefect has no built-in backfill and schedules never create runs in the past, so this flow is the
backfill: one child run per date, at most ``concurrency`` at a time, either

- as ``recommend`` subflows in this process (the default; the child runs share this process's CPUs), or
- as runs of a deployment (``child_deployment="recommend/nightly"``) started with ``run_deployment``: each date
  then runs in its own process on a worker, with that deployment's parameters overridden by this flow's
  config and the date.

Each date's ``as_of`` is midnight UTC of that date, so the run sees only events strictly before that day
(the ``recommend`` flow cuts the data at ``as_of``). Dates that a completed run already published for the
same source and models are skipped unless ``force``; a rerun is idempotent because publishing replaces an
``as_of``'s rows. A failed date does not stop the others: every date's outcome (status, rows, champion, error)
goes to the ``backfill`` table artifact, and the flow fails at the end if any date failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from sqlalchemy import func, select

from flows.runners import THREAD_VARIABLES, available_cores, runs_side_by_side
from recforge.config import ConfigError, RunConfig, build_config, refuse_future_as_of, resolve_db_url
from recforge.data.contract import DataError
from recforge.data.sources import SourceSpec, check_paths
from recforge.store import Store, mask_source, publications_table, recommendations_table, runs_table, to_naive_utc
from recmodels.blas import blas_threads

#: Most dates one backfill accepts: a typo in a year should not start ten thousand runs.
MAX_DATES = 1000
OUTCOME_COLUMNS = ("date", "status", "rows", "champion", "error", "run_id", "seconds")


class BackfillFailed(RuntimeError):
    """Some dates failed; the others ran. ``outcomes`` holds one record per date (see OUTCOME_COLUMNS)."""

    def __init__(self, message: str, outcomes: list[dict[str, Any]]) -> None:
        # Both in args, so the exception survives pickling (Prefect may persist a failed flow's result).
        super().__init__(message, outcomes)

    @property
    def outcomes(self) -> list[dict[str, Any]]:
        return list(self.args[1])

    def __str__(self) -> str:
        return str(self.args[0])


def as_of_dates(start: date, end: date, step: int = 1) -> list[datetime]:
    """Midnight UTC of ``start``, ``start + step`` days, ... up to and including ``end``."""
    if isinstance(start, datetime) or isinstance(end, datetime):
        raise ConfigError("backfill start and end are dates (YYYY-MM-DD), not datetimes")
    if step < 1:
        raise ConfigError(f"backfill step must be at least 1 day, got {step}")
    if end < start:
        raise ConfigError(f"backfill end {end} is before start {start}; swap them")
    count = (end - start).days // step + 1
    if count > MAX_DATES:
        raise ConfigError(
            f"backfill from {start} to {end} every {step} day(s) is {count} runs, more than {MAX_DATES}; "
            "use a larger --step or split the range"
        )
    return [datetime.combine(start + timedelta(days=i * step), datetime.min.time(), UTC) for i in range(count)]


#: Run settings that change what a run publishes (besides the source, compared in full by :func:`output_settings`,
#: as_of and models): a date published with other values is not "already published" for a backfill with these.
OUTPUT_SETTINGS = (
    "top_n",
    "k",
    "seed",
    "test_fraction",
    "primary_metric",
    "impute",
    "min_interactions",
    "cold_start",
    "explanations",
    "new_items_weight",
    "privacy",
)


def output_settings(parameters: Mapping[str, Any], models: list[str]) -> dict[str, Any]:
    """The recorded parameters (``RunConfig.recorded_parameters()``) that shape the published rows of ``models``.

    The source counts in full: the runs table's ``source`` is a log line that shortens a SQL query to its first
    60 characters, and a backfill with a query changed further on skipped every date, serving the old query's rows.
    """
    settings = {name: parameters.get(name) for name in OUTPUT_SETTINGS}
    settings["model_params"] = {m: p for m, p in (parameters.get("model_params") or {}).items() if m in models}
    settings["source"] = _source_settings(parameters.get("source") or {})
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def _source_settings(source: Mapping[str, Any]) -> dict[str, Any] | Mapping[str, Any]:
    """Every setting of a recorded source, defaults filled in: ``{"kind": "csv"}`` and the same with ``sep: None``
    spelled out are one source. A recorded source this version cannot read stays as it was recorded."""
    try:
        return dataclasses.asdict(SourceSpec.from_mapping(source))
    except (DataError, TypeError, ValueError):
        return source


def published_runs(
    store: Store, source: str, as_ofs: list[datetime], models: list[str], settings: Mapping[str, Any] | None = None
) -> dict[datetime, str]:
    """The completed run whose rows each of ``as_ofs`` now serves for ``models``, from ``source``.

    Keyed by ``as_of`` (UTC); dates without such rows are absent. A date counts when every one of ``models`` is
    published there (table ``publications``) by a completed run of ``source`` and, with ``settings``
    (:func:`output_settings` of this backfill's config), one with the same settings: other top-N, seed,
    hyperparameters or privacy settings make other rows. What is published now decides, not the run history: a
    forced rerun of one model with another top-N left a date "done" by the earlier run whose rows it had replaced.
    The value is the latest started of the runs serving the date.
    """
    wanted = {to_naive_utc(a) for a in as_ofs}
    runs, pub = runs_table, publications_table
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(runs.c.run_id, runs.c.parameters)
            .where(runs.c.source == source, runs.c.status == "completed", runs.c.as_of.in_(sorted(wanted)))
            .order_by(runs.c.started_at)
        ).all()
        if settings is not None:
            rows = [r for r in rows if output_settings(json.loads(r.parameters or "{}"), models) == settings]
        order = {r.run_id: position for position, r in enumerate(rows)}  # by start time
        serving: dict[datetime, dict[str, str]] = {}
        if rows:
            for as_of, model, run_id in conn.execute(
                select(pub.c.as_of, pub.c.model, pub.c.run_id).where(
                    pub.c.as_of.in_(sorted(wanted)), pub.c.model.in_(sorted(set(models)))
                )
            ):
                serving.setdefault(as_of, {})[model] = run_id
    found: dict[datetime, str] = {}
    for as_of, by_model in serving.items():
        if set(models) <= set(by_model) and all(by_model[m] in order for m in models):
            found[as_of] = max((by_model[m] for m in models), key=order.__getitem__)
    return found


def _date_outcome(store: Store, as_of: datetime, *, flow_run_id: str | None, run_id: str | None) -> dict[str, Any]:
    """Status, champion and error of the run record (by flow run or run id) and the rows ``as_of`` now has."""
    runs = runs_table
    condition = runs.c.run_id == run_id if run_id is not None else runs.c.flow_run_id == flow_run_id
    with store.engine.connect() as conn:
        record = conn.execute(
            select(runs.c.run_id, runs.c.status, runs.c.champion, runs.c.error)
            .where(condition)
            .order_by(runs.c.started_at.desc())
        ).first()
        rows = conn.execute(
            select(func.count())
            .select_from(recommendations_table)
            .where(recommendations_table.c.as_of == to_naive_utc(as_of))
        ).scalar_one()
    outcome: dict[str, Any] = {"rows": int(rows)}
    if record is not None:
        outcome |= {"run_id": record.run_id, "status": record.status, "champion": record.champion}
        outcome["error"] = record.error
    return outcome


def _require_deployment(name: str) -> None:
    """Fail before any child starts when the deployment the dates should run as does not exist."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise ConfigError(
                f"deployment {name!r} does not exist on this Prefect server; deploy it (`recforge deploy`) or "
                "run the dates as subflows of the backfill (without --deployment; child_deployment unset)"
            ) from None


@task(name="backfill-date", task_run_name="as-of-{as_of:%Y-%m-%d}", cache_policy=NO_CACHE)
def run_date(
    as_of: datetime,
    config: RunConfig,
    db_url: str | None,
    child_deployment: str | None,
) -> dict[str, Any]:
    """Run the pipeline for one ``as_of`` and return its outcome record; a failure is recorded, not raised."""
    logger = get_run_logger()
    store = Store(resolve_db_url(db_url))
    dated = config.model_copy(update={"as_of": as_of})
    clock = time.perf_counter()
    if child_deployment is None:
        from flows.recommend import recommend
        from flows.runners import make_task_runner

        runner = make_task_runner(config.task_runner, config.max_workers, config.dask_address)
        state = recommend.with_options(task_runner=runner)(config=dated, db_url=db_url, return_state=True)
        child_id = state.state_details.flow_run_id
    else:
        from prefect.deployments import run_deployment

        parameters: dict[str, Any] = {"config": dated.model_dump(mode="json")}
        if db_url is not None:
            parameters["db_url"] = db_url
        child = run_deployment(
            child_deployment,
            parameters=parameters,
            timeout=None,
            poll_interval=2,
            # A retry of this task (or of the whole backfill run) finds the child it already started.
            idempotency_key=f"backfill-{flow_run.id}-{as_of:%Y-%m-%d}",
            tags=["backfill"],
        )
        state, child_id = child.state, child.id
    outcome = _date_outcome(store, as_of, flow_run_id=None if child_id is None else str(child_id), run_id=None)
    if "status" not in outcome or outcome["status"] == "running":
        # No run record (the child failed before recording one) or one left open by a crash.
        completed = state is not None and state.is_completed()
        outcome |= {"status": "completed" if completed else "failed", "champion": outcome.get("champion")}
        outcome.setdefault("error", None)
    if outcome["status"] != "completed" and not outcome.get("error"):
        outcome["error"] = (state.message if state is not None else None) or "child run did not complete"
    outcome["seconds"] = round(time.perf_counter() - clock, 2)
    logger.info(
        "as_of %s: %s, %s rows, champion %s", as_of.date(), outcome["status"], outcome["rows"], outcome["champion"]
    )
    return outcome


def _share_cores(
    config: RunConfig, children: int, in_process: bool
) -> tuple[RunConfig, contextlib.AbstractContextManager[None]]:
    """The config for in-process child runs and a BLAS limit to hold around them, so that they share the cores.

    Each ``recommend`` run alone keeps one model task in flight per core, with BLAS split between them; two
    dates side by side in this process would otherwise run two tasks per core, each with that run's BLAS share.
    So on the thread runner, unless the user chose ``max_workers``, every child gets ``cores // children`` model
    slots (at least 1), and BLAS and each model task's torch get ``cores // (children × slots)`` threads; BLAS
    is limited from this flow's thread — OpenBLAS takes limits only from the main thread, so a child's own limit
    (set in a worker thread) does nothing. Children on workers (a deployment) or on other runners are left as
    configured, as are the thread counts when the user set a thread variable.
    """
    if not in_process or config.task_runner != "thread" or children < 1:
        return config, contextlib.nullcontext()
    cores = available_cores()
    if config.max_workers is None:
        config = config.model_copy(update={"max_workers": max(1, cores // children)})
    if any(name in os.environ for name in THREAD_VARIABLES):
        return config, contextlib.nullcontext()
    return config, _cores_shared(max(1, cores // (children * (config.max_workers or 1))), children)


@contextlib.contextmanager
def _cores_shared(blas: int, children: int) -> Iterator[None]:
    """BLAS limited to ``blas`` threads, and each child's model tasks told that ``children`` runs share the cores."""
    with blas_threads(blas), runs_side_by_side(children):
        yield


@flow(
    name="backfill",
    flow_run_name="backfill-{start}-to-{end}",
    validate_parameters=True,
)
def backfill(
    start: date,
    end: date,
    step: int = 1,
    models: list[str] | None = None,
    force: bool = False,
    config: RunConfig | None = None,
    concurrency: int = 2,
    child_deployment: str | None = None,
    db_url: str | None = None,
) -> list[dict[str, Any]]:
    """Run ``recommend`` for each date from ``start`` to ``end`` (inclusive) every ``step`` days.

    Args:
        start: first date; its run sees events before midnight UTC of that day.
        end: last date (inclusive).
        step: days between dates.
        models: models to train (default: those of ``config``); overrides ``config.models``.
        force: rerun dates that a completed run already published.
        config: the run configuration of every date (``as_of`` is set per date); default: ``RunConfig()``.
        concurrency: dates running at the same time.
        child_deployment: run each date as a run of this deployment (e.g. ``recommend/nightly``) instead of
            as a subflow in this process.
        db_url: best left unset (it would show among the parameters): ``$RECFORGE_DB_URL`` is used.

    Returns:
        One record per date, in date order: date, status (completed, partial, failed, skipped), rows
        (recommendation rows of that as_of after the run), champion, error, run_id, seconds.
    """
    if concurrency < 1:
        raise ConfigError(f"backfill concurrency must be at least 1, got {concurrency}")
    config = config or RunConfig()
    if models is not None:
        config = build_config({**config.model_dump(exclude_none=True), "models": models}, origin="backfill models")
    dates = as_of_dates(start, end, step)
    # Also checked by the CLI; a run of the backfill/manual deployment (the dashboard's form) comes here directly.
    refuse_future_as_of(dates[-1], "end", "an end date up to today")
    if child_deployment is None:
        # Checked once: every date would fail on it, each with a run row (a deployment's workers have their own).
        check_paths(SourceSpec.from_mapping(config.source))
    logger = get_run_logger()
    if child_deployment is not None:
        _require_deployment(child_deployment)
    store = Store(resolve_db_url(db_url))
    store.create_schema()
    source = mask_source(SourceSpec.from_mapping(config.source).describe())
    models = config.model_list()
    settings = output_settings(config.recorded_parameters(), models)
    done = {} if force else published_runs(store, source, dates, models, settings)

    outcomes: dict[datetime, dict[str, Any]] = {}
    for as_of in dates:
        if as_of in done:
            outcomes[as_of] = _date_outcome(store, as_of, flow_run_id=None, run_id=done[as_of]) | {
                "status": "skipped",
                "error": None,
                "seconds": 0.0,
            }
    todo = [d for d in dates if d not in outcomes]
    logger.info(
        "backfill of %s: %d dates, %d already published (skipped), %d to run, %d at a time",
        source,
        len(dates),
        len(outcomes),
        len(todo),
        concurrency,
    )
    progress = create_progress_artifact(
        progress=100.0 * len(outcomes) / len(dates), key="backfill-progress", description=f"backfill of {source}"
    )

    child_config, shared_cores = _share_cores(config, min(concurrency, len(todo)), child_deployment is None)
    # A sliding window of `concurrency` child runs: the next date starts as soon as one finishes.
    queue = list(todo)
    running: dict[PrefectFuture[dict[str, Any]], datetime] = {}
    with shared_cores:
        while queue or running:
            while queue and len(running) < concurrency:
                as_of = queue.pop(0)
                running[run_date.submit(as_of, child_config, db_url, child_deployment)] = as_of
            finished = next(as_completed(list(running)))
            as_of = running.pop(finished)
            finished.wait()  # sets the final state; `.state` alone may still read "Running" from the API
            state = finished.state
            if state.is_completed():
                outcomes[as_of] = finished.result()
            else:  # the task itself broke (not the child run): record it and go on with the other dates
                outcomes[as_of] = {"status": "failed", "rows": None, "champion": None, "error": state.message}
            update_progress_artifact(progress, 100.0 * len(outcomes) / len(dates))

    records = [{**dict.fromkeys(OUTCOME_COLUMNS), **outcomes[d], "date": d.date().isoformat()} for d in dates]
    records = [{c: r[c] for c in OUTCOME_COLUMNS} for r in records]
    counts = {s: sum(r["status"] == s for r in records) for s in ("completed", "partial", "failed", "skipped")}
    create_table_artifact(
        key="backfill",
        table=records,
        description=f"Backfill of {source} from {start} to {end} every {step} day(s): {counts}",
    )
    failed = [r for r in records if r["status"] in ("failed", "partial")]
    if failed:
        raise BackfillFailed(
            f"{len(failed)} of {len(records)} dates failed or were partial: "
            + "; ".join(f"{r['date']}: {r['error']}" for r in failed),
            records,
        )
    return records
