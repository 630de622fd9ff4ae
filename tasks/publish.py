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
from recforge.store import ChampionDecision, Store

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
    run_id = store.start_run(
        dataset=dataset, source=source, as_of=as_of, parameters=parameters, flow_run_id=flow_run_id
    )
    get_run_logger().info("run %s recorded in %s", run_id, store.url_masked)
    return run_id


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
