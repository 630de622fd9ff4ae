"""Report: write the run's self-contained HTML report and link it from the run's Prefect artifacts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_link_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from recforge.pipeline import PreparedData
from recforge.report import Curve, ReportInputs, write_report


@task(name="report", cache_policy=NO_CACHE)
def write_run_report(
    summary: Mapping[str, Any],
    output_dir: str | Path,
    *,
    k: int = 10,
    primary_metric: str = "ndcg",
    data: PreparedData | None = None,
    recommendations: pd.DataFrame | None = None,
    metrics: pd.DataFrame | None = None,
    validation: Sequence[Mapping[str, Any]] | None = None,
    validation_summary: str | None = None,
    refit_timings: Mapping[str, Mapping[str, float]] | None = None,
    training_curves: Mapping[str, Mapping[str, Curve]] | None = None,
) -> str | None:
    """Write ``<output_dir>/reports/<run_id>/index.html`` and a link artifact (key ``report``) to it.

    Returns the report's absolute path, or None when it could not be written: the report describes a run whose
    results are already published, so its failure is logged, not raised.
    """
    logger = get_run_logger()
    inputs = ReportInputs(
        summary=summary,
        k=k,
        primary_metric=primary_metric,
        data=data,
        recommendations=recommendations,
        metrics=metrics,
        validation=validation,
        validation_summary=validation_summary,
        refit_timings=refit_timings or {},
        training_curves=training_curves or {},
    )
    try:
        path = write_report(inputs, output_dir).resolve()
    except Exception:  # the run's results are published; a broken report must not turn it into a failure
        logger.exception("could not write the run report under %s", Path(output_dir).resolve() / "reports")
        return None
    create_link_artifact(
        key="report",
        link=path.as_uri(),
        link_text=f"Run report {summary.get('run_id', '')} (HTML)",
        description=f"Plots, leaderboard and sample recommendations of {summary.get('dataset', 'this run')}: {path}",
    )
    logger.info("run report: %s", path)
    return str(path)
