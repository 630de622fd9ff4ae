"""Publish: run records, metrics, features and recommendations to SQL, all-or-nothing per as_of."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from recforge.data.contract import ITEM, USER
from recforge.pipeline import PreparedData
from recforge.store import PUBLISHED_ALL_OR_NOTHING, ChampionDecision, Store

# Transient database trouble (a dropped connection, a locked SQLite file) is worth a retry; bad data is not.
_DB_RETRY = {"retries": 2, "retry_delay_seconds": [2, 10]}


@task(name="open-run", cache_policy=NO_CACHE, **_DB_RETRY)
def open_run(
    db_url: str,
    dataset: str,
    source: str,
    as_of: datetime,
    parameters: dict[str, Any],
    flow_run_id: str | None,
) -> str:
    """Create the schema if needed and record a run in state 'running'; returns the run id."""
    store = Store(db_url)
    store.create_schema()
    for abandoned in store.close_abandoned_runs():
        get_run_logger().warning(
            "run %s was still marked running but its process on this host is gone (killed?); closed it as failed",
            abandoned,
        )
    for abandoned in close_runs_whose_flow_run_ended(store):
        get_run_logger().warning(
            "run %s was still marked running but its Prefect flow run has ended; closed it as failed", abandoned
        )
    run_id = store.start_run(
        dataset=dataset, source=source, as_of=as_of, parameters=parameters, flow_run_id=flow_run_id
    )
    get_run_logger().info("run %s recorded in %s", run_id, store.url_masked)
    return run_id


def close_runs_whose_flow_run_ended(store: Store) -> list[str]:
    """Close as failed the ``running`` rows of other hosts whose Prefect flow run is over; returns their ids.

    A run killed on another machine (a worker's pod evicted, a machine that never came back) cannot be checked by
    process; its flow run can, when it is known to this Prefect API. A flow run that is over (crashed, failed,
    cancelled — or even completed, which always closes its row first) while its row still says ``running`` left
    the row behind. Flow runs this API does not know, or cannot be asked about, are left alone.
    """
    from uuid import UUID

    from prefect.client.orchestration import get_client

    others = store.running_runs_of_other_hosts()
    if not others:
        return []
    errors = {}
    with get_client(sync_client=True) as client:
        for run_id, flow_run_id, host in others:
            try:
                state = client.read_flow_run(UUID(flow_run_id)).state
            except Exception:  # unknown to this API (another server), malformed id, API trouble: not ours to judge
                continue
            if state is not None and state.is_final():
                errors[run_id] = (
                    f"abandoned: its Prefect flow run {flow_run_id} on {host} ended as {state.name} without closing "
                    f"the run; {PUBLISHED_ALL_OR_NOTHING}"
                )
    return store.fail_running_runs(errors)


@task(name="publish", cache_policy=NO_CACHE, **_DB_RETRY)
def publish(
    db_url: str,
    run_id: str,
    data: PreparedData,
    metrics: pd.DataFrame,
    recommendations: pd.DataFrame,
    champion: ChampionDecision | None,
) -> dict[str, int]:
    """Write metrics, features and this as_of's recommendations in one transaction: all of them or none."""
    store = Store(db_url)
    for dataset, other_run in store.other_datasets_at(run_id, data.as_of):
        get_run_logger().warning(
            "as_of %s in %s holds recommendations of data set %r (run %s), and this run is of %r: its rows of the "
            "same models and the date's champion are replaced, since the tables do not tell data sets apart. Keep "
            "each data set in a database of its own (--db-url) unless %r is this data set under another name",
            data.as_of.isoformat(),
            store.url_masked,
            dataset,
            other_run,
            data.dataset_name,
            dataset,
        )
    written = store.publish_run(
        run_id,
        data.as_of,
        metrics,
        [("user", data.user_features, USER), ("item", data.item_features, ITEM)],
        recommendations,
        champion,
    )
    get_run_logger().info("published to %s: %s", store.url_masked, written)
    return written


@task(name="close-run", cache_policy=NO_CACHE, **_DB_RETRY)
def close_run(
    db_url: str,
    run_id: str,
    status: str,
    timings: dict[str, float],
    error: str | None = None,
    champion: str | None = None,
) -> None:
    """Record the run's final status, per-stage timings and error (if any)."""
    Store(db_url).finish_run(run_id, status=status, timings=timings, error=error, champion=champion)
