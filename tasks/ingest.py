"""Ingest: load a data set from its source."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.logging import get_run_logger

from recforge.data.contract import Dataset
from recforge.data.sources import SourceSpec, load_dataset
from tasks.caching import cached, source_fingerprint


def _is_transient(exc: BaseException) -> bool:
    """Retry only I/O hiccups (network, database connection), never contract violations."""
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, (OSError, OperationalError)) and not isinstance(exc, FileNotFoundError)


# Cached by the content of the files the source names (see tasks.caching): a rerun reads the stored Dataset.
@task(
    **cached("ingest", source=source_fingerprint),
    name="ingest",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=lambda _task, _run, state: _is_transient(state.result(raise_on_failure=False)),
)
def ingest(source: dict[str, Any]) -> Dataset:
    """Load interactions (and optional users/items tables) from the configured source."""
    spec = SourceSpec.from_mapping(source)
    logger = get_run_logger()
    logger.info("loading %s", spec.describe())
    dataset = load_dataset(spec)
    logger.info(
        "loaded %s: %d interactions, %s users rows, %s items rows",
        dataset.name,
        len(dataset.interactions),
        "no" if dataset.users is None else len(dataset.users),
        "no" if dataset.items is None else len(dataset.items),
    )
    return dataset
