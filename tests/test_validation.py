"""Tests of the validation stage (recforge/validation.py and the suites in expectations/)."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge import validation
from recforge.data.contract import DataError, Dataset
from recforge.validation import (
    SUITES_DIR,
    ExpectationOutcome,
    ValidationFailed,
    ValidationReport,
    validate_dataset,
)

ML100K = Path(__file__).resolve().parents[1].parent / "shared/data/ml-100k"
NOW = datetime(2024, 6, 1, tzinfo=UTC)
N_ROWS = 12


def _interactions() -> pd.DataFrame:
    """12 clean interactions: users u0..u3, items i0..i5, ratings 1..5, timestamps in 2023."""
    return pd.DataFrame(
        {
            "user_id": [f"u{k % 4}" for k in range(N_ROWS)],
            "item_id": [f"i{k % 6}" for k in range(N_ROWS)],
            "rating": [float(1 + k % 5) for k in range(N_ROWS)],
            "timestamp": pd.to_datetime([1_672_531_200 + 3600 * k for k in range(N_ROWS)], unit="s", utc=True),
        }
    )


def _users() -> pd.DataFrame:
    return pd.DataFrame({"user_id": ["u0", "u1", "u2", "u3"], "age": [25, 31, 47, 19], "gender": list("MFFM")})


def _items() -> pd.DataFrame:
    return pd.DataFrame({"item_id": [f"i{k}" for k in range(6)], "genres": ["Drama|Comedy"] * 6})


def _dataset(
    interactions: pd.DataFrame | None = None,
    users: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
    rating_range: tuple[float, float] | None = (1.0, 5.0),
) -> Dataset:
    return Dataset(
        name="toy",
        interactions=_interactions() if interactions is None else interactions,
        users=users,
        items=items,
        source="tests/toy",
        rating_range=rating_range,
    )


def _outcome(
    report: ValidationReport, table: str, expectation: str, column: str | None, severity: str | None = None
) -> ExpectationOutcome:
    """The single outcome of ``expectation`` on ``table.column`` (of that severity, when given)."""
    found = [
        o
        for o in report.outcomes
        if (o.table, o.expectation, o.column) == (table, expectation, column) and severity in (None, o.severity)
    ]
    assert len(found) == 1, f"{table}.{column} {expectation}: {found}"
    return found[0]


def _critical_message(report: ValidationReport) -> str:
    with pytest.raises(ValidationFailed) as info:
        report.raise_for_critical()
    assert info.value.report is report
    return str(info.value)


@pytest.fixture(scope="module")
def clean_report() -> ValidationReport:
    """The report of a clean data set with all three tables (run once: GX import is slow)."""
    return validate_dataset(_dataset(users=_users(), items=_items()), now=NOW)


def test_suites_are_gx_suites_with_severity_and_description() -> None:
    import great_expectations as gx

    for table in ("interactions", "users", "items"):
        with (SUITES_DIR / f"{table}.json").open() as f:
            raw = json.load(f)
        suite = gx.ExpectationSuite(**raw)
        assert suite.name == table
        assert len(suite.expectations) == len(raw["expectations"]) > 0
        for spec in raw["expectations"]:
            assert spec["severity"] in {"critical", "warning"}, spec
            assert spec["meta"]["description"].strip(), spec
            assert spec["meta"]["hint"].strip(), spec
        assert {e.severity.value for e in suite.expectations} <= {"critical", "warning"}


def test_clean_dataset_passes(clean_report: ValidationReport) -> None:
    report = clean_report
    assert report.passed
    assert report.critical_failures == []
    assert report.warnings == []
    assert all(o.success for o in report.outcomes)
    # Every stored expectation applies here: all columns, parameters and tables are present.
    assert [o.table for o in report.outcomes].count("interactions") == 19
    assert [o.table for o in report.outcomes].count("users") == 6
    assert [o.table for o in report.outcomes].count("items") == 5
    rating_range = _outcome(report, "interactions", "expect_column_values_to_be_between", "rating")
    assert rating_range.severity == "critical"
    assert rating_range.element_count == N_ROWS
    assert "expected between 1.0 and 5.0" in rating_range.description
    assert set(report.failing_rows) == {"interactions", "users", "items"}
    assert all(rows.size == 0 and rows.dtype == np.int64 for rows in report.failing_rows.values())
    report.raise_for_critical()  # no critical failure: must not raise
    assert report.summary().startswith("Validation of data set 'toy' (tests/toy) passed: 30 checks, 30 passed")


def test_to_records_lists_every_outcome(clean_report: ValidationReport) -> None:
    records = clean_report.to_records()
    assert len(records) == len(clean_report.outcomes)
    assert set(records[0]) == {"table", "column", "expectation", "severity", "success", "unexpected", "sample"}
    unique_users = [r for r in records if r["expectation"] == "expect_column_values_to_be_unique"]
    assert [(r["table"], r["column"], r["severity"]) for r in unique_users] == [
        ("users", "user_id", "critical"),
        ("items", "item_id", "critical"),
    ]
    json.dumps(records)  # plain types only, ready for a Prefect table artifact


def test_rating_out_of_range_is_critical() -> None:
    frame = _interactions()
    frame.loc[[2, 9], "rating"] = [6.0, 0.5]
    report = validate_dataset(_dataset(frame), now=NOW)
    assert not report.passed
    failure = _outcome(report, "interactions", "expect_column_values_to_be_between", "rating")
    assert report.critical_failures == [failure]
    assert (failure.unexpected_count, failure.element_count) == (2, N_ROWS)
    assert failure.sample_values == ["6.0", "0.5"]
    # Only warning-level checks feed failing_rows.
    assert report.failing_rows["interactions"].size == 0
    message = _critical_message(report)
    assert "1 critical data validation failure(s) in data set 'toy' (tests/toy)" in message
    assert "interactions.rating: expect_column_values_to_be_between" in message
    assert "2 of 12 rows fail (rows 2, 9); sample values: 6.0, 0.5" in message  # rows: they were not named
    assert "expected between 1.0 and 5.0" in message
    assert "Fix: " in message
    with pytest.raises(DataError):  # ValidationFailed is a DataError: callers catching those see it
        report.raise_for_critical()


def test_rating_range_follows_the_dataset_and_is_skipped_without_one() -> None:
    frame = _interactions()
    frame.loc[0, "rating"] = 9.0
    wider = validate_dataset(_dataset(frame, rating_range=(0.0, 10.0)), now=NOW)
    assert wider.passed
    unknown = validate_dataset(_dataset(frame, rating_range=None), now=NOW)
    assert unknown.passed
    assert not [o for o in unknown.outcomes if (o.column, o.expectation[-10:]) == ("rating", "be_between")]


@pytest.mark.parametrize("empty", [np.nan, None], ids=["csv-blank", "sql-null"])
def test_a_rating_column_without_any_value_is_implicit_data(empty: object) -> None:
    # A blank rating column (CSV) or an all-NULL one (SQL) is not "every row misses its rating": validation
    # skips that column's checks, so cleaning keeps every row, and the data set has no ratings.
    frame = _interactions().assign(rating=pd.Series([empty] * N_ROWS, dtype=object if empty is None else float))
    report = validate_dataset(_dataset(frame), now=NOW)
    assert report.passed
    assert not [o for o in report.outcomes if o.column == "rating"]
    assert not any(len(rows) for rows in report.rows_to_drop.get("interactions", {}).values())
    frame.loc[0, "rating"] = 4.0  # one rating given: the others are missing ones again
    partial = validate_dataset(_dataset(frame), now=NOW)
    assert _outcome(partial, "interactions", "expect_column_values_to_not_be_null", "rating").unexpected_count == (
        N_ROWS - 1
    )


def test_null_ids_are_critical() -> None:
    frame = _interactions()
    frame.loc[4, "user_id"] = None
    frame.loc[[1, 7], "item_id"] = None
    report = validate_dataset(_dataset(frame), now=NOW)
    users = _outcome(report, "interactions", "expect_column_values_to_not_be_null", "user_id")
    items = _outcome(report, "interactions", "expect_column_values_to_not_be_null", "item_id")
    assert report.critical_failures == [users, items]
    assert (users.unexpected_count, items.unexpected_count) == (1, 2)
    assert items.sample_values == ["<null>"]
    # Missing ids are still str-typed columns: only the null checks fail.
    assert _outcome(report, "interactions", "expect_column_values_to_be_of_type", "user_id").success
    message = _critical_message(report)
    assert "interactions.user_id: expect_column_values_to_not_be_null" in message
    assert "interactions.item_id: expect_column_values_to_not_be_null" in message
    assert "2 of 12 rows fail" in message


def test_timestamps_far_in_the_future_are_critical() -> None:
    # A wrong time unit or epoch puts events years ahead: the run must stop.
    frame = _interactions()
    future = pd.Timestamp("2024-06-02 08:00", tz="UTC")  # 32 hours after NOW
    frame.loc[5, "timestamp"] = future
    report = validate_dataset(_dataset(frame), now=NOW)
    failure = _outcome(report, "interactions", "expect_column_values_to_be_between", "timestamp", "critical")
    ahead = _outcome(report, "interactions", "expect_column_values_to_be_between", "timestamp", "warning")
    assert report.critical_failures == [failure]
    assert failure.unexpected_count == 1 and ahead.unexpected_count == 1
    assert failure.sample_values == [future.isoformat()]
    assert "more than a day ahead" in _critical_message(report)
    assert "expected at most 2024-06-02T00:00:00+00:00" in _critical_message(report)
    # The bound follows the wall clock at validation: a year later the same row is fine.
    assert validate_dataset(_dataset(frame), now=NOW + timedelta(days=365)).passed


@pytest.mark.parametrize(
    ("epochs", "unit"),
    [([1_672_531_200, 1_690_000_000], "ms"), ([20230815, 20230901], "s")],  # seconds read as ms; YYYYMMDD as s
)
def test_a_log_that_ends_before_1980_warns_about_the_time_unit(epochs: list[int], unit: str) -> None:
    # Read in too coarse a unit, every event lands in 1970 and any later --as-of took in the whole log, future
    # events included, without a word. A warning: nothing is dropped, toy data with small epochs still runs.
    epochs = np.linspace(epochs[0], epochs[1], N_ROWS).astype(np.int64)
    frame = _interactions().assign(timestamp=pd.to_datetime(epochs, unit=unit, utc=True))
    report = validate_dataset(_dataset(frame), now=NOW)
    assert report.passed
    warning = _outcome(report, "interactions", "expect_column_max_to_be_between", "timestamp", "warning")
    assert report.warnings == [warning]
    assert "read in too coarse a unit" in warning.explain() and "--timestamp-unit" in warning.explain()
    assert report.rows_to_drop["interactions"] == {}


def test_a_list_valued_extra_column_does_not_break_the_duplicate_check() -> None:
    # A Parquet list column made GX's exact-duplicate check fail with "unhashable type: 'numpy.ndarray'".
    frame = _interactions().assign(tags=[np.array(["a", "b"])] * N_ROWS)
    frame = pd.concat([frame, frame.iloc[:1]], ignore_index=True)
    report = validate_dataset(_dataset(frame), now=NOW)
    duplicates = _outcome(report, "interactions", "expect_compound_columns_to_be_unique", None, "warning")
    assert duplicates.unexpected_count == 2 and "unhashable" not in duplicates.explain()
    assert "(list-valued columns ['tags'] not compared)" in duplicates.explain()


def test_timestamps_slightly_ahead_of_the_clock_only_warn_and_are_dropped() -> None:
    # Device and server clocks run minutes to hours ahead; a nightly run must not fail over them.
    frame = _interactions()
    frame.loc[[3, 7], "timestamp"] = [NOW + timedelta(minutes=5), NOW + timedelta(hours=20)]
    report = validate_dataset(_dataset(frame), now=NOW)
    assert report.passed
    assert _outcome(report, "interactions", "expect_column_values_to_be_between", "timestamp", "critical").success
    warning = _outcome(report, "interactions", "expect_column_values_to_be_between", "timestamp", "warning")
    assert warning.unexpected_count == 2
    assert report.warnings == [warning]
    dropped = report.rows_to_drop["interactions"]
    assert [rows.tolist() for rows in dropped.values()] == [[3, 7]]


def test_duplicate_user_ids_in_users_are_critical() -> None:
    users = pd.concat([_users(), _users().iloc[[2]]], ignore_index=True)
    report = validate_dataset(_dataset(users=users), now=NOW)
    failure = _outcome(report, "users", "expect_column_values_to_be_unique", "user_id")
    assert report.critical_failures == [failure]
    # GX counts every copy of a repeated id.
    assert (failure.unexpected_count, failure.element_count) == (2, 5)
    assert failure.sample_values == ["u2"]
    assert "users.user_id: expect_column_values_to_be_unique" in _critical_message(report)


def test_too_few_rows_is_critical_and_the_floor_is_configurable() -> None:
    frame = _interactions().iloc[:5]
    report = validate_dataset(_dataset(frame), now=NOW)
    failure = _outcome(report, "interactions", "expect_table_row_count_to_be_between", None)
    assert report.critical_failures == [failure]
    assert failure.sample_values == ["5"]
    message = _critical_message(report)
    assert "interactions: expect_table_row_count_to_be_between" in message
    assert "expected at least 10" in message and "observed: 5" in message
    assert validate_dataset(_dataset(frame), now=NOW, min_interactions=5).passed
    assert not validate_dataset(_dataset(), now=NOW, min_interactions=13).passed


def test_missing_column_is_a_clear_critical_failure() -> None:
    frame = _interactions().drop(columns=["timestamp"])
    report = validate_dataset(_dataset(frame), now=NOW)
    failure = _outcome(report, "interactions", "expect_column_to_exist", "timestamp")
    assert report.critical_failures == [failure]
    assert failure.sample_values == ["column missing; columns present: user_id, item_id, rating"]
    # Checks on the missing column are skipped rather than reported as errors.
    assert [o for o in report.outcomes if o.column == "timestamp"] == [failure]
    assert "interactions.timestamp: expect_column_to_exist" in _critical_message(report)


def test_wrong_dtypes_are_critical_without_crashing() -> None:
    frame = _interactions()
    frame["user_id"] = np.arange(N_ROWS, dtype=np.int64)
    frame["timestamp"] = frame["timestamp"].dt.tz_localize(None)  # naive datetimes break the contract
    report = validate_dataset(_dataset(frame), now=NOW)
    ids = _outcome(report, "interactions", "expect_column_values_to_be_of_type", "user_id")
    ts = _outcome(report, "interactions", "expect_column_values_to_be_of_type", "timestamp")
    assert not ids.success and ids.sample_values == ["int64"]
    assert not ts.success and ts.sample_values == ["datetime64"]
    # Comparing naive datetimes with the aware wall clock errors inside GX: reported, not raised.
    future = _outcome(report, "interactions", "expect_column_values_to_be_between", "timestamp", "critical")
    assert not future.success and future.sample_values[0].startswith("error: ")
    assert all(o in report.critical_failures for o in (ids, ts, future))


def test_object_dtype_ids_holding_strings_pass() -> None:
    frame = _interactions().astype({"user_id": object, "item_id": object})
    assert validate_dataset(_dataset(frame), now=NOW).passed


def test_duplicate_rows_and_unknown_items_are_warnings_with_positional_rows() -> None:
    frame = _interactions()
    frame.loc[7] = frame.loc[3]  # exact duplicate of row 3
    frame.loc[[2, 10], "item_id"] = "i99"  # not in the items table
    frame.index = np.arange(100, 100 + N_ROWS)[::-1]  # failing_rows must be positions, not labels
    report = validate_dataset(_dataset(frame, users=_users(), items=_items()), now=NOW)
    assert report.passed
    dupes = _outcome(report, "interactions", "expect_compound_columns_to_be_unique", None)
    unknown = _outcome(report, "interactions", "expect_column_values_to_be_in_set", "item_id")
    assert report.warnings == [dupes, unknown]
    assert (dupes.severity, dupes.unexpected_count) == ("warning", 2)
    assert (unknown.severity, unknown.unexpected_count, unknown.sample_values) == ("warning", 2, ["i99"])
    np.testing.assert_array_equal(report.failing_rows["interactions"], [2, 3, 7, 10])
    assert report.failing_rows["users"].size == 0
    summary = report.summary()
    assert "passed" in summary and "2 warnings" in summary
    assert "[warning] interactions.item_id: expect_column_values_to_be_in_set" in summary


def test_unknown_users_and_out_of_range_ages_are_warnings() -> None:
    users = _users()
    users.loc[1, "age"] = 150
    frame = _interactions()
    frame.loc[6, "user_id"] = "u77"
    report = validate_dataset(_dataset(frame, users=users), now=NOW)
    assert report.passed
    age = _outcome(report, "users", "expect_column_values_to_be_between", "age")
    assert not age.success and age.unexpected_count == 1 and age.sample_values == ["150"]
    np.testing.assert_array_equal(report.failing_rows["users"], [1])
    np.testing.assert_array_equal(report.failing_rows["interactions"], [6])
    # Without an items table the item reference check does not apply.
    assert not [o for o in report.outcomes if o.expectation.endswith("in_set") and o.column == "item_id"]


def test_attribute_checks_only_when_the_column_exists() -> None:
    report = validate_dataset(
        _dataset(users=_users().drop(columns=["age"]), items=_items().drop(columns=["genres"])), now=NOW
    )
    assert report.passed
    assert {o.column for o in report.outcomes if o.table in {"users", "items"}} == {"user_id", "item_id"}


def test_naive_now_and_negative_floor_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        validate_dataset(_dataset(), now=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="min_interactions"):
        validate_dataset(_dataset(), min_interactions=-1)


def test_missing_suite_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"interactions.*interactions\.json"):
        validate_dataset(_dataset(), now=NOW, suites_dir=tmp_path)


def test_concurrent_validations_keep_their_own_results() -> None:
    bad = _interactions()
    bad.loc[0, "rating"] = 42.0
    reports: dict[str, ValidationReport] = {}

    def run(name: str, frame: pd.DataFrame) -> None:
        reports[name] = validate_dataset(_dataset(frame), now=NOW)

    threads = [
        threading.Thread(target=run, args=(name, frame))
        for name, frame in [("good", _interactions()), ("bad", bad), ("good2", _interactions())]
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reports["good"].passed and reports["good2"].passed
    assert [o.sample_values for o in reports["bad"].critical_failures] == [["42.0"]]


def test_data_docs_are_built_and_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "DATA_DOCS_KEEP_RUNS", 2)
    frame = _interactions()
    frame.loc[3, "rating"] = 7.0
    reports = [validate_dataset(_dataset(frame, users=_users()), now=NOW, data_docs_dir=tmp_path) for _ in range(3)]
    index = reports[-1].data_docs_index
    assert index is not None and index.name == "index.html" and index.is_file()
    assert index.is_relative_to(tmp_path)
    assert "interactions" in index.read_text()
    pages = sorted(index.parent.glob("validations/*/*/*/*.html"))
    # 2 kept runs x 2 tables; the first run's pages were pruned.
    assert len(pages) == 4
    assert {p.parts[-4] for p in pages} == {"interactions", "users"}
    # Each page names its data set and table (GX's header read it from where GX 1.x no longer puts it: "None").
    headers = {p.parts[-4]: re.sub(r"\s+", " ", p.read_text()) for p in pages}
    assert "Data asset: toy/interactions<br>" in headers["interactions"] and "Data asset: None" not in headers["users"]
    assert len({p.parts[-2] for p in pages}) == 2
    stored = sorted((tmp_path / "gx" / "uncommitted" / "validations").rglob("*.json"))
    assert len(stored) == 4
    # The validation itself is the same with or without docs.
    assert reports[-1].critical_failures[0].sample_values == ["7.0"]
    assert f"Details: {index}" in _critical_message(reports[-1])


@pytest.fixture(scope="module")
def movielens() -> Dataset:
    frame = pd.read_csv(
        ML100K / "u.data",
        sep="\t",
        header=None,
        names=["user_id", "item_id", "rating", "timestamp"],
        dtype={"user_id": str, "item_id": str, "rating": float, "timestamp": np.int64},
    )
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s", utc=True)
    return Dataset(name="ml-100k", interactions=frame, source=str(ML100K / "u.data"), rating_range=(1.0, 5.0))


def test_real_movielens_interactions_pass_quickly(movielens: Dataset) -> None:
    validate_dataset(movielens)  # warm-up: GX import and first-use costs are not what is measured
    start = time.perf_counter()
    report = validate_dataset(movielens)
    elapsed = time.perf_counter() - start
    assert report.passed, report.summary()
    assert report.warnings == []
    counted = [o for o in report.outcomes if o.expectation == "expect_column_values_to_not_be_null"]
    assert {o.element_count for o in counted} == {100_000}
    assert elapsed < 5.0, f"validating 100k rows took {elapsed:.1f} s"


def test_rows_to_drop_names_each_warning_and_leaves_duplicates_to_cleaning() -> None:
    interactions = pd.DataFrame(
        {
            "user_id": pd.array(["u1", "u1", "u2", "u9", "u2"], dtype="str"),
            "item_id": pd.array(["i1", "i1", "i2", "i2", "i1"], dtype="str"),
            "rating": [4.0, 4.0, None, 3.0, 5.0],
            "timestamp": pd.to_datetime([1, 1, 2, 3, 4], unit="D", utc=True),
        }
    )
    users = pd.DataFrame({"user_id": pd.array(["u1", "u2"], dtype="str")})
    report = validate_dataset(Dataset("tiny", interactions, users=users, rating_range=(1.0, 5.0)), min_interactions=1)
    assert report.passed
    drops = report.rows_to_drop["interactions"]
    assert sorted(rows.tolist() for rows in drops.values()) == [[3]]  # the user not in the users table
    assert any("users table" in reason for reason in drops)
    assert 0 in report.failing_rows["interactions"]  # the duplicate pair is reported, but not to be dropped
    assert 2 in report.failing_rows["interactions"]  # so is the missing rating, kept as an event by cleaning
    assert all(0 not in rows and 1 not in rows for rows in drops.values())


def test_the_users_suite_checks_the_age_range_preparation_enforces() -> None:
    # Two copies of 0–120: the suite's expectation (what validation reports) and prepare's AGE_RANGE (what is
    # made missing and imputed). Changed in one place only, the report and the data would disagree.
    from recforge.prepare import AGE_RANGE

    suite = json.loads((validation.SUITES_DIR / "users.json").read_text())
    ages = [
        e["kwargs"] for e in suite["expectations"] if e["kwargs"].get("column") == "age" and "min_value" in e["kwargs"]
    ]
    assert [(a["min_value"], a["max_value"]) for a in ages] == [AGE_RANGE]
