"""Validation stage: checks a loaded :class:`Dataset` against the Great Expectations suites in ``expectations/``.

One suite per table (``interactions.json``, ``users.json``, ``items.json``), stored as GX 1.x
ExpectationSuite JSON. Every expectation carries a ``severity`` ("critical" fails the run, "warning" is reported
and left to the cleaning stage) and ``meta.description`` / ``meta.hint`` (what it checks, how to fix a failure).

Run-time rules applied to the stored suites before each validation:

- Values known only at run time come in as GX suite parameters (``{"$PARAMETER": "name"}`` in the JSON, values
  passed with ``ValidationDefinition.run(expectation_parameters=...)``): ``rating_min``/``rating_max`` from
  ``Dataset.rating_range``, ``now`` (wall clock) and ``future_limit`` (``now`` + :data:`FUTURE_TOLERANCE`),
  ``min_interactions``, ``known_user_ids``/``known_item_ids``
  (ids of the users/items tables). An expectation whose parameter has no value this run (no declared rating
  range, no users table, ...) is skipped.
- An expectation on a column the table lacks is skipped; required columns have their own critical
  ``expect_column_to_exist``, so a missing column is reported once and clearly instead of crashing.
- A warning's failing rows go to ``rows_to_drop`` (cleaning drops them) unless ``meta.rows_kept`` is true (missing
  ratings: the rows stay as events).
- ``meta.columns_at_run_time == "all"`` sets ``column_list`` to every column of the table (exact-duplicate rows).
- A ``rating`` column with no value in any row is implicit data, as if the column were absent: the expectations
  on that column alone are skipped (each of its rows would otherwise be "missing a rating", and dropped).

Great Expectations is imported inside the functions (it takes seconds to import) and every call builds its own
ephemeral context: one context shared by threads was seen to report one frame's results for another.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from recforge.data.contract import ITEM, RATING, USER, DataError, Dataset, holds_lists

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuiteValidationResult
    from great_expectations.core.run_identifier import RunIdentifier

log = logging.getLogger(__name__)

SUITES_DIR = Path(__file__).resolve().parents[1] / "expectations"
# Tables in the order they are validated and reported.
TABLES = ("interactions", "users", "items")
CRITICAL = "critical"
WARNING = "warning"
SAMPLE_SIZE = 5
#: How far ahead of the wall clock a timestamp may lie before the run fails. Events from devices or servers
#: with skewed clocks arrive minutes to hours ahead and only warn (each run keeps the events before its
#: ``as_of``); a wrong time unit or epoch puts them years to millennia ahead.
FUTURE_TOLERANCE = timedelta(days=1)
#: A log whose latest event comes before this instant was almost surely read in too coarse a time unit: seconds
#: read as milliseconds land in January 1970, YYYYMMDD numbers read as seconds in 1970 too. Any ``as_of`` after it
#: then takes in the whole log, future events included.
EARLIEST_PLAUSIBLE_LATEST_EVENT = datetime(1980, 1, 1, tzinfo=UTC)
# Data Docs keep the pages of this many most recent validate_dataset calls; older ones are deleted.
DATA_DOCS_KEEP_RUNS = 10

# Result keys that hold one entry per unexpected row: dropped from the copy stored for Data Docs so that a
# table with 100k bad rows does not write megabytes of JSON per run.
_BULKY_RESULT_KEYS = ("unexpected_list", "unexpected_index_list", "unexpected_index_query")
# Value sets longer than this (the ids of the users/items tables) are shortened in the Data Docs copy.
_DOCS_MAX_VALUE_SET = 20

# One lock per Data Docs folder: two threads writing the same GX file store would interleave pages and prunes.
_docs_locks: dict[Path, threading.Lock] = {}
_docs_locks_guard = threading.Lock()


class ValidationFailed(DataError):
    """The data set failed at least one critical expectation; ``report`` holds every outcome."""

    def __init__(self, message: str, report: ValidationReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ExpectationOutcome:
    """The result of one expectation on one table."""

    table: str
    # The checked column; None for table-level checks (row count, exact-duplicate rows).
    column: str | None
    # GX expectation type, e.g. ``expect_column_values_to_be_between``.
    expectation: str
    severity: str
    success: bool
    # Rows that broke a row-level check (0 for table-level checks such as row count or dtype).
    unexpected_count: int
    # Rows the check looked at (the table's row count for table-level checks).
    element_count: int
    # Up to 5 offending values as text; for table-level checks the observed value (dtype, row count, error).
    sample_values: list[str]
    # What the expectation checks, in plain words (the suite's ``meta.description``).
    description: str
    # How to fix a failure (the suite's ``meta.hint``).
    hint: str = ""
    # The first offending rows of a row-level check, as the table's row labels: the source's data rows counted
    # from 0 (a file's header not counted), also after erased users' rows left the table.
    rows: tuple[int, ...] = ()

    @property
    def location(self) -> str:
        """``table.column`` or ``table`` for table-level checks."""
        return f"{self.table}.{self.column}" if self.column else self.table

    def explain(self) -> str:
        """One line saying what failed, how many rows, sample values and the fix."""
        if self.unexpected_count:
            amount = f"{self.unexpected_count} of {self.element_count} rows fail"
            if self.rows:
                more = ", …" if self.unexpected_count > len(self.rows) else ""
                amount += f" (row{'s' if self.unexpected_count > 1 else ''} {', '.join(map(str, self.rows))}{more})"
            sample = f"; sample values: {', '.join(self.sample_values)}" if self.sample_values else ""
        else:
            amount = "failed"
            sample = f"; observed: {', '.join(self.sample_values)}" if self.sample_values else ""
        fix = f" Fix: {self.hint}" if self.hint else ""
        return f"{self.location}: {self.expectation} ({self.description}): {amount}{sample}.{fix}"


@dataclass(frozen=True)
class ValidationReport:
    """All expectation outcomes of one validation, plus the rows that failed warning-level row checks."""

    outcomes: list[ExpectationOutcome]
    # table -> sorted positional row indices (int64) that failed at least one WARNING row-level check; every
    # validated table has an entry (empty when nothing failed). For exact duplicates every copy is listed, as
    # GX counts them; the cleaning stage keeps the first copy.
    failing_rows: dict[str, np.ndarray]
    # table -> {failed warning check, described in words -> positional rows}: what the cleaning stage drops and
    # counts per reason. Exact-duplicate checks are left out: cleaning keeps one copy of each duplicate, whereas
    # dropping every listed copy would lose real events.
    rows_to_drop: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # index.html of the Data Docs site built for this validation, when validate_dataset got data_docs_dir.
    data_docs_index: Path | None = None
    dataset_name: str = ""
    source: str = ""

    @property
    def critical_failures(self) -> list[ExpectationOutcome]:
        """Failed expectations of severity critical."""
        return [o for o in self.outcomes if o.severity == CRITICAL and not o.success]

    @property
    def warnings(self) -> list[ExpectationOutcome]:
        """Failed expectations of severity warning (and any other non-critical severity)."""
        return [o for o in self.outcomes if o.severity != CRITICAL and not o.success]

    @property
    def passed(self) -> bool:
        """True when no critical expectation failed."""
        return not self.critical_failures

    def to_records(self) -> list[dict[str, Any]]:
        """One flat dict per outcome, for a Prefect table artifact."""
        return [
            {
                "table": o.table,
                "column": o.column or "",
                "expectation": o.expectation,
                "severity": o.severity,
                "success": o.success,
                "unexpected": o.unexpected_count,
                "sample": ", ".join(o.sample_values),
            }
            for o in self.outcomes
        ]

    def summary(self) -> str:
        """A few lines: verdict, counts, and one line per failed expectation."""
        verdict = "passed" if self.passed else "FAILED"
        n_ok = sum(o.success for o in self.outcomes)
        lines = [
            f"Validation of {self._name()} {verdict}: {len(self.outcomes)} checks, {n_ok} passed, "
            f"{len(self.critical_failures)} critical failures, {len(self.warnings)} warnings."
        ]
        lines += [f"  [critical] {o.explain()}" for o in self.critical_failures]
        lines += [f"  [{o.severity}] {o.explain()}" for o in self.warnings]
        if self.data_docs_index is not None:
            lines.append(f"  Data Docs: {self.data_docs_index}")
        return "\n".join(lines)

    def raise_for_critical(self) -> None:
        """Raise :class:`ValidationFailed` naming every failed critical expectation; do nothing if none."""
        failures = self.critical_failures
        if not failures:
            return
        lines = [f"{len(failures)} critical data validation failure(s) in {self._name()}:"]
        lines += [f"  - {o.explain()}" for o in failures]
        if self.data_docs_index is not None:
            lines.append(f"Details: {self.data_docs_index}")
        raise ValidationFailed("\n".join(lines), self)

    def _name(self) -> str:
        name = f"data set '{self.dataset_name}'" if self.dataset_name else "the data set"
        return f"{name} ({self.source})" if self.source else name


def validate_dataset(
    dataset: Dataset,
    *,
    now: datetime | None = None,
    min_interactions: int = 10,
    suites_dir: Path = SUITES_DIR,
    data_docs_dir: Path | None = None,
) -> ValidationReport:
    """Validate every table of ``dataset`` against its suite in ``suites_dir``.

    ``now`` is the wall clock (default: the current UTC time; it must be timezone-aware): a timestamp after it
    is a warning (a skewed device clock; the event counts only for a later ``as_of``), one more than
    :data:`FUTURE_TOLERANCE` after it fails the run (a wrong time unit or epoch). ``min_interactions`` is the
    row-count floor of the interactions table. With ``data_docs_dir``, GX Data Docs for this validation are
    written there (older runs pruned) and the report's ``data_docs_index`` points at the site's index.html.
    Never raises for bad data: call :meth:`ValidationReport.raise_for_critical` to stop on critical failures.
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware (e.g. datetime.now(UTC)), got naive {now!r}")
    if min_interactions < 0:
        raise ValueError(f"min_interactions must be >= 0, got {min_interactions}")

    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    parameters = _run_parameters(dataset, now=now, min_interactions=min_interactions)
    tables = dataset.tables()
    # One run id for all tables of this call: Data Docs group pages by it and prune whole runs.
    run_id = RunIdentifier(run_name=_safe_name(dataset.name or "dataset"), run_time=datetime.now(UTC))
    context = _ephemeral_context(gx)
    datasource = context.data_sources.add_pandas(name=_safe_name(dataset.name or "dataset"))

    outcomes: list[ExpectationOutcome] = []
    failing_rows: dict[str, np.ndarray] = {}
    rows_to_drop: dict[str, dict[str, np.ndarray]] = {}
    suites: dict[str, dict[str, Any]] = {}
    results: dict[str, ExpectationSuiteValidationResult] = {}
    for table in TABLES:
        if table not in tables:
            continue
        # Positional index, so that GX's unexpected index lists are row positions; the messages name the rows by
        # the table's own labels, which are the source's row numbers even after erased users' rows are gone.
        frame = tables[table].reset_index(drop=True)
        suite = _prepare_suite(_load_suite(suites_dir, table), frame, parameters)
        batch = datasource.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe(table)
        gx_suite = context.suites.add(gx.ExpectationSuite(**suite))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{table}-validation", data=batch, suite=gx_suite)
        )
        result = definition.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=parameters,
            # COMPLETE: the unexpected index lists give failing_rows. More partial values than shown, so
            # that SAMPLE_SIZE distinct ones can be picked.
            result_format={"result_format": "COMPLETE", "partial_unexpected_count": 4 * SAMPLE_SIZE},
            run_id=run_id,
        )
        table_outcomes, rows, droppable = _collect(table, suite, result, frame, _source_rows(tables[table]))
        outcomes += table_outcomes
        failing_rows[table] = rows
        rows_to_drop[table] = droppable
        suites[table] = suite
        results[table] = result

    docs_index = None
    if data_docs_dir is not None:
        # Data Docs are a by-product: a docs folder that cannot be written must not discard the validation.
        try:
            docs_index = _build_data_docs(Path(data_docs_dir), suites, results, run_id)
        except Exception as exc:
            log.warning("Could not build Great Expectations Data Docs in %s: %s", data_docs_dir, exc)
    return ValidationReport(
        outcomes=outcomes,
        failing_rows=failing_rows,
        rows_to_drop=rows_to_drop,
        data_docs_index=docs_index,
        dataset_name=dataset.name,
        source=dataset.source,
    )


def _load_suite(suites_dir: Path, table: str) -> dict[str, Any]:
    path = Path(suites_dir) / f"{table}.json"
    try:
        with path.open(encoding="utf-8") as f:
            suite = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Expectation suite for table '{table}' not found at {path}; restore it from the repository's "
            f"expectations/ folder or pass suites_dir= pointing at a folder with {TABLES} suites."
        ) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"Expectation suite {path} is not valid JSON: {exc}") from exc
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise ValueError(f"Expectation suite {path} must be an object with an 'expectations' list.")
    return suite


def _run_parameters(dataset: Dataset, *, now: datetime, min_interactions: int) -> dict[str, Any]:
    """Values for the suites' ``$PARAMETER`` references; a name left out skips the expectations using it."""
    now = now.astimezone(UTC)
    params: dict[str, Any] = {
        "now": now,
        "future_limit": now + FUTURE_TOLERANCE,
        "earliest_plausible_latest_event": EARLIEST_PLAUSIBLE_LATEST_EVENT,
        "min_interactions": int(min_interactions),
    }
    if dataset.rating_range is not None:
        low, high = dataset.rating_range
        params["rating_min"] = float(low)
        params["rating_max"] = float(high)
    for frame, column, name in (
        (dataset.users, USER, "known_user_ids"),
        (dataset.items, ITEM, "known_item_ids"),
    ):
        if frame is not None and column in frame.columns:
            params[name] = frame[column].dropna().unique().tolist()
    return params


def _prepare_suite(suite: dict[str, Any], frame: pd.DataFrame, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``suite`` with the run-time rules applied (see the module docstring).

    Each kept expectation gets ``meta.recforge_index`` (its position) so results map back to it whatever
    order GX reports them in.
    """
    columns = set(map(str, frame.columns))
    empty_ratings = RATING in frame.columns and not frame[RATING].notna().any()
    kept: list[dict[str, Any]] = []
    for spec in suite["expectations"]:
        spec = json.loads(json.dumps(spec))  # deep copy: the stored suite stays untouched
        kwargs = spec.setdefault("kwargs", {})
        meta = spec.setdefault("meta", {})
        if meta.get("columns_at_run_time") == "all":
            # Not list-valued columns (Parquet lists): GX failed on them ("unhashable type: 'numpy.ndarray'").
            lists = [str(c) for c in frame.columns if holds_lists(frame[c])]
            kwargs["column_list"] = [str(c) for c in frame.columns if str(c) not in lists]
            if lists:  # rows that differ only there count as duplicates: say so rather than "every column"
                meta["description"] = f"{meta.get('description', '')} (list-valued columns {lists} not compared)"
        if any(name not in parameters for name in _parameter_names(kwargs)):
            continue
        needed = [kwargs["column"]] if "column" in kwargs else list(kwargs.get("column_list", []))
        if spec["type"] != "expect_column_to_exist" and not set(needed) <= columns:
            continue
        if empty_ratings and kwargs.get("column") == RATING:
            continue
        if spec["type"] == "expect_column_max_to_be_between" and frame.empty:
            continue  # an empty table has no maximum; the row-count check reports it
        meta["recforge_index"] = len(kept)
        kept.append(spec)
    out = {k: v for k, v in suite.items() if k != "expectations"}
    out["expectations"] = kept
    return out


def _parameter_names(value: Any) -> Iterator[str]:
    """Names of the ``{"$PARAMETER": name}`` references anywhere in ``value``."""
    if isinstance(value, dict):
        if "$PARAMETER" in value:
            yield str(value["$PARAMETER"])
        else:
            for v in value.values():
                yield from _parameter_names(v)
    elif isinstance(value, list):
        for v in value:
            yield from _parameter_names(v)


def _ephemeral_context(gx: Any) -> Any:
    """A fresh in-memory GX context with progress bars off."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _source_rows(table: pd.DataFrame) -> np.ndarray | None:
    """The source's row numbers of the table's rows (its integer labels), or None where they are the positions."""
    index = table.index
    if not pd.api.types.is_integer_dtype(index.dtype) or index.equals(pd.RangeIndex(len(index))):
        return None
    return index.to_numpy(dtype=np.int64)


def _collect(
    table: str,
    suite: dict[str, Any],
    result: ExpectationSuiteValidationResult,
    frame: pd.DataFrame,
    source_rows: np.ndarray | None = None,
) -> tuple[list[ExpectationOutcome], np.ndarray, dict[str, np.ndarray]]:
    """Outcomes in suite order, the positions of rows failing warning-level row checks, and those rows per
    droppable check (see ``ValidationReport.rows_to_drop``). Outcomes name rows by ``source_rows`` (the
    source's row number of each position) where given, else by position."""
    specs = suite["expectations"]
    by_index: dict[int, ExpectationOutcome] = {}
    bad_rows: list[np.ndarray] = [np.empty(0, dtype=np.int64)]
    droppable: dict[str, np.ndarray] = {}
    for r in result.results:
        config = r.expectation_config
        spec = specs[int(config.meta["recforge_index"])]
        kwargs = spec["kwargs"]
        res = r.result or {}
        severity = getattr(config.severity, "value", str(config.severity))
        error = _exception_message(r.exception_info)
        success = bool(r.success) and error is None
        if error is not None:
            sample = [f"error: {error}"]
        elif spec["type"] == "expect_column_to_exist" and not success:
            sample = [f"column missing; columns present: {', '.join(map(str, frame.columns)) or '(none)'}"]
        elif "partial_unexpected_list" in res:
            # Distinct values: five copies of the same bad id say less than five different ones.
            sample = list(dict.fromkeys(_format_value(v) for v in res["partial_unexpected_list"]))[:SAMPLE_SIZE]
        elif res.get("observed_value") is not None:
            sample = [_format_value(res["observed_value"])]
        else:
            sample = []
        by_index[int(config.meta["recforge_index"])] = ExpectationOutcome(
            table=table,
            column=kwargs.get("column"),
            expectation=str(config.type),
            severity=str(severity),
            success=success,
            unexpected_count=int(res.get("unexpected_count") or 0),
            element_count=int(res.get("element_count", len(frame))),
            sample_values=sample,
            description=str(spec["meta"].get("description", "")) + _bounds_text(config.kwargs),
            hint=str(spec["meta"].get("hint", "")),
            rows=tuple(
                int(i if source_rows is None else source_rows[i])
                for i in (res.get("unexpected_index_list") or [])[:SAMPLE_SIZE]
            ),
        )
        if severity == WARNING and res.get("unexpected_index_list"):
            rows = np.asarray(res["unexpected_index_list"], dtype=np.int64)
            bad_rows.append(rows)
            # Exact duplicates are left to cleaning (it keeps one copy); so are rows the suite keeps (meta.rows_kept).
            if spec["type"] != "expect_compound_columns_to_be_unique" and not spec["meta"].get("rows_kept"):
                droppable[str(spec["meta"].get("description", spec["type"]))] = np.unique(rows)
    missing = [i for i in range(len(specs)) if i not in by_index]
    if missing:
        # Not expected from GX; a silent gap would hide checks, so fail loudly.
        raise RuntimeError(f"Great Expectations returned no result for {table} expectations {missing}")
    return [by_index[i] for i in range(len(specs))], np.unique(np.concatenate(bad_rows)), droppable


def _bounds_text(kwargs: Mapping[str, Any]) -> str:
    """`` (expected between a and b)`` for range checks, from the run's substituted parameters; else ''."""
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if isinstance(low, dict) or isinstance(high, dict):  # an unsubstituted $PARAMETER: nothing to show
        return ""
    if low is not None and high is not None:
        return f" (expected between {_format_value(low)} and {_format_value(high)})"
    if high is not None:
        return f" (expected at most {_format_value(high)})"
    if low is not None:
        return f" (expected at least {_format_value(low)})"
    return ""


def _exception_message(info: Any) -> str | None:
    """The first exception message in a GX ``exception_info`` (flat, or keyed by metric), else None."""
    if not isinstance(info, dict):
        return None
    if "raised_exception" in info:
        if info.get("raised_exception"):
            return str(info.get("exception_message") or "unknown error").strip().splitlines()[-1]
        return None
    for value in info.values():
        message = _exception_message(value)
        if message is not None:
            return message
    return None


def _format_value(value: Any) -> str:
    """A sample value as short text; missing values read ``<null>``."""
    if isinstance(value, dict):
        return " ".join(f"{k}={_format_value(v)}" for k, v in value.items())
    if value is None or value is pd.NA or value is pd.NaT:
        return "<null>"
    if isinstance(value, float) and math.isnan(value):
        return "<null>"
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _safe_name(name: str) -> str:
    """``name`` reduced to characters safe in GX asset names and file paths."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "dataset"


def _docs_lock(path: Path) -> threading.Lock:
    with _docs_locks_guard:
        return _docs_locks.setdefault(path.resolve(), threading.Lock())


def _build_data_docs(
    docs_dir: Path,
    suites: dict[str, dict[str, Any]],
    results: dict[str, ExpectationSuiteValidationResult],
    run_id: RunIdentifier,
) -> Path:
    """Store this run's results in a GX file context at ``docs_dir``, prune old runs, build the site.

    The results come from the ephemeral validation (no second pass over the data); bulky per-row lists are
    dropped from the stored copy first. Returns the site's index.html.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    docs_dir.mkdir(parents=True, exist_ok=True)
    with _docs_lock(docs_dir):
        context = gx.get_context(mode="file", project_root_dir=str(docs_dir))
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        store = context.validation_results_store
        new_keys: list[Any] = []
        for table, suite in suites.items():
            context.suites.add_or_update(gx.ExpectationSuite(**_docs_suite(suite)))
            suite_key = ExpectationSuiteIdentifier(name=suite["name"])
            key = ValidationResultIdentifier(
                expectation_suite_identifier=suite_key, run_id=run_id, batch_identifier=table
            )
            store.set(key, _slim_result(results[table]))
            new_keys += [suite_key, key]
        _prune_runs(context, keep=DATA_DOCS_KEEP_RUNS)
        urls = context.build_data_docs(resource_identifiers=new_keys)
    url = next(iter(urls.values()))
    return Path(unquote(urlparse(url).path))


def _docs_suite(suite: dict[str, Any]) -> dict[str, Any]:
    """The prepared suite without recforge's bookkeeping meta, as shown on the Data Docs suite page."""
    out = json.loads(json.dumps(suite))
    for spec in out["expectations"]:
        spec.get("meta", {}).pop("recforge_index", None)
    return out


def _slim_result(result: ExpectationSuiteValidationResult) -> ExpectationSuiteValidationResult:
    """``result`` with per-row lists removed and long id sets shortened, for storage in Data Docs.

    Mutates ``result`` in place: it is called after the outcomes were collected and the object is not used again.
    """
    for r in result.results:
        if r.result:
            for key in _BULKY_RESULT_KEYS:
                r.result.pop(key, None)
        value_set = r.expectation_config.kwargs.get("value_set")
        if isinstance(value_set, list) and len(value_set) > _DOCS_MAX_VALUE_SET:
            shown = value_set[:_DOCS_MAX_VALUE_SET]
            r.expectation_config.kwargs["value_set"] = [*shown, f"... {len(value_set) - len(shown)} more"]
    # GX 1.x's page header reads the asset from meta.batch_spec (its 0.x place) while 1.x keeps it in
    # meta.active_batch_definition: every page said "Data asset: None".
    batch = result.meta.get("active_batch_definition") or {}
    if batch.get("data_asset_name") and isinstance(result.meta.get("batch_spec"), dict):
        asset = f"{batch.get('datasource_name')}/{batch['data_asset_name']}".removeprefix("None/")
        result.meta["batch_spec"] = {**result.meta["batch_spec"], "data_asset_name": asset}
    return result


def _prune_runs(context: Any, *, keep: int) -> None:
    """Delete stored results and pages of all but the ``keep`` most recent runs."""
    store = context.validation_results_store
    keys = store.list_keys()
    run_times = sorted({str(k.run_id.run_time) for k in keys}, reverse=True)
    stale = set(run_times[keep:])
    if not stale:
        return
    uncommitted = Path(context.root_directory) / "uncommitted"
    site = uncommitted / "data_docs" / "local_site" / "validations"
    for key in keys:
        if str(key.run_id.run_time) not in stale:
            continue
        store.remove_key(key)
        # Pages mirror the store layout: <suite>/<run name>/<run time>/<batch>.html.
        run_name, run_time = key.run_id.to_tuple()
        shutil.rmtree(site / key.expectation_suite_identifier.name / run_name / run_time, ignore_errors=True)
    # remove_key deletes files only; drop the run folders it leaves empty.
    _remove_empty_dirs(uncommitted / "validations")
    _remove_empty_dirs(site)


def _remove_empty_dirs(root: Path) -> None:
    """Delete empty folders below ``root`` (deepest first), keeping ``root``."""
    for path in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(path.iterdir()):
            path.rmdir()


__all__ = [
    "SUITES_DIR",
    "ExpectationOutcome",
    "ValidationFailed",
    "ValidationReport",
    "validate_dataset",
]
