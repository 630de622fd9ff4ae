"""Validate: run the Great Expectations suites; critical failures stop the run before anything is written."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger

from recforge.data.contract import TIMESTAMP, Dataset
from recforge.validation import ValidationReport, validate_dataset
from tasks.caching import cached, folder_fingerprint

# Great Expectations parses suite parameters with a module-level pyparsing grammar that is not thread-safe: two
# validations in threads of one process (e.g. backfill dates running side by side) failed with
# "SuiteParameterParser.push_first() missing 1 required positional argument". Validate one data set at a time.
_GX_LOCK = threading.Lock()


def _events_ahead_of_the_clock(inputs: dict[str, Any]) -> str | None:
    """Why a validation of these inputs must run afresh: events ahead of the wall clock, which the report flags
    (and cleaning drops) as of its own clock. A cached report kept dropping them after they had come to pass; data
    without such events gets the same report at any later time, since the clock only moves forward."""
    dataset = inputs.get("dataset")
    if not isinstance(dataset, Dataset) or TIMESTAMP not in dataset.interactions.columns:
        return None
    latest = dataset.interactions[TIMESTAMP].max()
    if pd.isna(latest) or latest <= pd.Timestamp.now(tz="UTC"):
        return None
    return f"events up to {latest} lie ahead of the wall clock"


# Cached by the data set's content, the settings and the absolute Data Docs folder (see tasks.caching); a critical
# failure is never cached, nor data with events ahead of the clock. The flow calls it through ``validate_with_docs``.
@task(name="validate", **cached("validate", bypass=_events_ahead_of_the_clock, data_docs_dir=folder_fingerprint))
def validate(dataset: Dataset, min_interactions: int, data_docs_dir: Path | None) -> ValidationReport:
    """Validate every table; publish a table artifact of all outcomes, then raise on critical failures."""
    report = _validate_one_at_a_time(dataset, min_interactions, data_docs_dir)
    create_table_artifact(
        key="validation",
        table=report.to_records(),
        description=f"Great Expectations outcomes for {dataset.name}: {report.summary()}",
    )
    logger = get_run_logger()
    for outcome in report.warnings:
        logger.warning("validation warning: %s", outcome.explain())
    if report.data_docs_index is not None:
        logger.info("Great Expectations Data Docs: %s", report.data_docs_index)
    report.raise_for_critical()
    return report


def _validate_one_at_a_time(dataset: Dataset, min_interactions: int, data_docs_dir: Path | None) -> ValidationReport:
    """``validate_dataset`` under the process-wide lock.

    A module-level function rather than a ``with`` in the task: the task's function is pickled by value when a
    Dask or process runner ships the flow, and a lock it referenced directly cannot be pickled.
    """
    with _GX_LOCK:
        return validate_dataset(dataset, min_interactions=min_interactions, data_docs_dir=data_docs_dir)


def validate_with_docs(dataset: Dataset, min_interactions: int, data_docs_dir: Path | None) -> ValidationReport:
    """Run ``validate``; validate again, past the cache, when a cached report's Data Docs page is gone.

    A cache hit returns the report of an earlier run in the same folder (the key holds the absolute folder), whose
    site may have been deleted since, with ``var/`` or by hand; a report that points at nothing is no report.
    """
    report = validate(dataset, min_interactions, data_docs_dir)
    if report.data_docs_index is not None and not report.data_docs_index.exists():
        get_run_logger().info(
            "the cached validation's Data Docs page %s is gone: validating again",
            report.data_docs_index,
        )
        report = validate.with_options(refresh_cache=True)(dataset, min_interactions, data_docs_dir)
    return report
