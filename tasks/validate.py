"""Validate: run the Great Expectations suites; critical failures stop the run before anything is written."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from recforge.data.contract import Dataset
from recforge.validation import ValidationReport, validate_dataset


@task(name="validate", cache_policy=NO_CACHE)
def validate(dataset: Dataset, min_interactions: int, data_docs_dir: Path | None) -> ValidationReport:
    """Validate every table; publish a table artifact of all outcomes, then raise on critical failures."""
    report = validate_dataset(dataset, min_interactions=min_interactions, data_docs_dir=data_docs_dir)
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
