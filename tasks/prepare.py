"""Prepare: clean, cut at as_of, split by time, impute, engineer features."""

from __future__ import annotations

from datetime import datetime

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from recforge.data.contract import Dataset
from recforge.pipeline import PreparedData, prepare
from recforge.validation import ValidationReport
from tasks.caching import cached


# Cached by the content of the data set, the validation report and the settings (see tasks.caching).
@task(name="prepare", **cached("prepare"))
def prepare_data(
    dataset: Dataset,
    report: ValidationReport,
    as_of: datetime,
    test_fraction: float,
    impute: dict[str, dict[str, str]],
) -> PreparedData:
    """Run the cleaning, imputation, split and feature stages; log what was dropped and why."""
    data = prepare(dataset, report, as_of, test_fraction=test_fraction, impute=impute)
    logger = get_run_logger()
    logger.info("cleaning: %s", data.cleaning.summary())
    logger.info("rows per stage: %s", data.row_counts)
    lines = [f"| {k} | {v:,} |" for k, v in data.row_counts.items()]
    imputed = [
        "| "
        + " | ".join(markdown_cell(r[key]) for key in ("table", "column", "strategy", "value"))
        + f" | {r['filled']:,} |"
        for r in data.imputation
    ]
    create_markdown_artifact(
        key="preparation",
        markdown="\n".join(
            [
                f"## Preparation of `{data.dataset_name}` as of {as_of.isoformat()}",
                "",
                "| stage | rows |",
                "|---|---|",
                *lines,
                "",
                f"**Cleaning**: {data.cleaning.summary()}",
                "",
                "| table | column | imputation | fill value (from training entities) | values filled |",
                "|---|---|---|---|---|",
                *imputed,
            ]
        ),
        description="Row counts per stage and cleaning summary",
    )
    return data


def markdown_cell(value: object) -> str:
    """``value`` as the text of one Markdown table cell: a fill value such as ``Drama|Crime`` (labels are
    ``|``-separated) split its row into one cell too many, and a line break ended the table."""
    return str(value).replace("\r\n", " ").replace("\n", " ").replace("\r", " ").replace("|", "\\|")
