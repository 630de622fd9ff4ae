"""Bad input never loses or corrupts published data: the corpus in tests/data/bad, case by case.

Each corpus case (written by ``tests/data/bad/make_corpus.py``) is declared in :data:`CASES` with its expected
outcome: either it fails at a named stage with a message that names the table or file, the column and the
rows (the listed words must all appear), or it proceeds with documented cleaning whose row counts are given.

The cases go through :func:`run_pipeline`, the ``recommend`` flow's stages as plain functions in the flow's
order, down to the same ``Store`` calls the publish task makes; a failing case therefore gets every chance to
write something. Before and after each failing case the published tables (recommendations, champions,
model_metrics) of a database holding a good run are compared: they must be unchanged. A few representative
cases also run through the real flow under the session's Prefect test harness.
"""

from __future__ import annotations

import filecmp
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from recforge.config import RunConfig
from recforge.data.contract import DataError, Dataset
from recforge.data.sources import SourceSpec, load_dataset
from recforge.pipeline import (
    PreparedData,
    choose_champion,
    evaluate,
    fit_and_recommend,
    metrics_frame,
    prepare,
)
from recforge.prepare import REASON_EPOCH_TIMESTAMP
from recforge.privacy import PrivacyConfig, deidentify
from recforge.store import Store, champions_table, metrics_table, recommendations_table
from recforge.validation import ValidationReport, validate_dataset
from tests.data.bad import make_corpus

CORPUS = Path(__file__).resolve().parent / "data" / "bad"
REPO_ROOT = Path(__file__).resolve().parents[1]
AS_OF = datetime(2022, 1, 1, tzinfo=UTC)
MODELS = ("popularity", "item_knn")
TOP_N = 10
K = 5
#: The tables a failing run must leave exactly as they were.
PUBLISHED = {
    "recommendations": recommendations_table,
    "champions": champions_table,
    "model_metrics": metrics_table,
}
#: Rows and users of the good interactions file; the good source (interactions, users, items).
GOOD_ROWS = make_corpus.N_USERS * make_corpus.EVENTS_PER_USER
GOOD_USERS = make_corpus.N_USERS
GOOD_SOURCE = {
    "kind": "csv",
    "interactions": "good/interactions.csv",
    "users": "good/users.csv",
    "items": "good/items.csv",
}
# Cleaning reasons of warning-level validation checks (the suite's meta.description of each check).
UNKNOWN_USER = "every interaction's user_id appears in the users table (when there is one)"
UNKNOWN_ITEM = "every interaction's item_id appears in the items table (when there is one)"
AHEAD_OF_CLOCK = "no timestamp lies ahead of the wall clock at validation"


# ----------------------------------------------------------------------------------------------- the pipeline


class StageFailed(Exception):
    """A stage of :func:`run_pipeline` raised; ``stage`` names it and ``error`` is the original exception."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage}: {type(error).__name__}: {error}")
        self.stage = stage
        self.error = error


@dataclass(frozen=True)
class Published:
    """What a successful :func:`run_pipeline` produced and wrote."""

    dataset: Dataset
    report: ValidationReport
    data: PreparedData
    recommendations: pd.DataFrame
    run_id: str
    failed_models: dict[str, str]


def resolve(source: Mapping[str, Any], root: Path = CORPUS) -> dict[str, Any]:
    """``source`` with its file and folder settings made absolute (they are relative to ``root``)."""
    out = dict(source)
    for key in ("interactions", "users", "items", "data_dir"):
        if key in out:
            out[key] = str(root / out[key])
    if out.get("kind") == "sql" and "source_url" not in out:
        out["source_url"] = f"sqlite:///{root / 'sql/cases.sqlite'}"
    return out


def run_pipeline(source: Mapping[str, Any], store: Store, as_of: datetime = AS_OF) -> Published:
    """The ``recommend`` flow without Prefect: load, validate, prepare, evaluate, refit, publish.

    Same stage functions, same order and the same ``Store`` calls as ``flows/recommend.py`` and
    ``tasks/publish.py``: a run record before loading, metrics and features, then the recommendations with the
    champion, and the run closed as completed/partial/failed. Raises :class:`StageFailed` naming the stage.
    """
    try:
        spec = SourceSpec.from_mapping(source)  # RunConfig checks the settings before the flow starts
    except Exception as exc:
        raise StageFailed("load", exc) from exc
    run_id = store.start_run(
        dataset=spec.dataset_name, source=spec.describe(), as_of=as_of, parameters=dict(source), flow_run_id=None
    )
    stage = "load"
    try:
        dataset, _ = deidentify(load_dataset(spec), PrivacyConfig())  # as the ingest task does
        stage = "validate"
        report = validate_dataset(dataset, min_interactions=10)
        report.raise_for_critical()
        stage = "prepare"
        data = prepare(dataset, report, as_of)
        stage = "evaluate"
        results = [evaluate(name, data, k=K, bootstrap=100) for name in MODELS]
        failed = {r.model: str(r.error) for r in results if not r.ok}
        ok = [r for r in results if r.ok]
        if not ok:  # the flow then publishes nothing and closes the run as failed
            raise RuntimeError("every model failed: " + "; ".join(f"{m}: {e}" for m, e in failed.items()))
        stage = "recommend"
        frames = [fit_and_recommend(r.model, data, top_n=TOP_N).frame for r in ok]
        stage = "publish"
        selection = choose_champion(ok, k=K)
        champion = selection.to_decision() if selection.model else None
        recommendations = pd.concat(frames, ignore_index=True)
        # As tasks/publish.py does: everything in one transaction.
        store.publish_run(
            run_id,
            as_of,
            metrics_frame(results, K),
            [("user", data.user_features, "user_id"), ("item", data.item_features, "item_id")],
            recommendations,
            champion,
        )
    except Exception as exc:
        store.finish_run(run_id, status="failed", timings={}, error=f"{type(exc).__name__}: {exc}")
        raise StageFailed(stage, exc) from exc
    status = "partial" if failed else "completed"
    store.finish_run(run_id, status=status, timings={}, champion=champion.model if champion else None)
    return Published(dataset, report, data, recommendations, run_id, failed)


def _users_per_model(recommendations: pd.DataFrame) -> dict[str, int]:
    return recommendations.groupby("model")["user_id"].nunique().to_dict()


def snapshot(store: Store) -> dict[str, pd.DataFrame]:
    """The published tables, rows sorted, for before/after comparison."""
    out = {}
    with store.engine.connect() as conn:
        for name, table in PUBLISHED.items():
            frame = pd.DataFrame(conn.execute(sa.select(table)).all(), columns=[c.name for c in table.c])
            out[name] = frame.sort_values(list(frame.columns)).reset_index(drop=True)
    return out


class PublishedTablesChanged(AssertionError):
    """A run that failed changed a published table."""


def assert_unchanged(before: Mapping[str, pd.DataFrame], after: Mapping[str, pd.DataFrame]) -> None:
    """Raise :class:`PublishedTablesChanged` naming the first published table whose rows differ."""
    for name, frame in before.items():
        try:
            pd.testing.assert_frame_equal(after[name], frame, obj=f"published table {name}")
        except AssertionError as exc:
            raise PublishedTablesChanged(str(exc)) from None


# ------------------------------------------------------------------------------------------------ the cases


@dataclass(frozen=True)
class Case:
    """One corpus case and its declared outcome.

    stage: the stage that must fail (load, validate, prepare, evaluate, publish), or None when the run must
        publish. words: text that must all appear in the failure message (file or table, column, rows, fix).
    dropped: proceeding cases: rows the cleaning stage drops per reason (every nonzero reason listed).
    warnings: proceeding cases: failed warning-level checks as ``table.column`` -> offending rows.
    users: proceeding cases: users with published recommendations (per model).
    check: proceeding cases: further assertions on the run's result.
    partial_write: failing cases that today leave rows behind: the defect in words (a strict xfail).
    """

    name: str
    source: dict[str, Any]
    stage: str | None
    words: tuple[str, ...] = ()
    dropped: dict[str, int] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)
    users: int | None = None
    check: Callable[[Published], None] | None = None
    partial_write: str | None = None


def _csv(name: str, **settings: Any) -> dict[str, Any]:
    return {"kind": "csv", "interactions": f"csv/{name}", **settings}


def _parquet(name: str, **settings: Any) -> dict[str, Any]:
    return {"kind": "parquet", "interactions": f"parquet/{name}", **settings}


def _sql(**settings: Any) -> dict[str, Any]:
    return {"kind": "sql", **settings}


def _movielens(name: str) -> dict[str, Any]:
    return {"kind": "movielens-100k", "data_dir": f"movielens/{name}"}


def _ids_exact(published: Published) -> None:
    users = set(published.recommendations["user_id"])
    assert str(2**63 - 1) in users and str(2**63 - GOOD_USERS) in users  # 64-bit ids, digit for digit
    assert str(2**62 + make_corpus.FIRST_ITEM) in set(published.dataset.interactions["item_id"])


def _mixed_ids(published: Published) -> None:
    users = set(published.recommendations["user_id"])
    assert {"1", "u2", "29", "u30"} <= users and "2" not in users and "u1" not in users


def _same_as_good(published: Published) -> None:
    good = load_dataset(SourceSpec.from_mapping(resolve(GOOD_SOURCE))).interactions
    pd.testing.assert_frame_equal(published.dataset.interactions, good[list(published.dataset.interactions.columns)])


def _ratings_missing_kept(published: Published) -> None:
    # Events whose rating is missing stay events: counted, given a rating, and never recommended back.
    data = published.data
    assert data.cleaning.ratings_missing == 4 and not data.interactions["rating"].isna().any()
    missing = data.interactions.loc[data.interactions["rating_missing"], ["user_id", "item_id"]]
    assert len(missing) == 4
    recommended = published.recommendations.merge(missing, on=["user_id", "item_id"])
    assert recommended.empty, recommended


def _bom(published: Published) -> None:
    assert list(published.dataset.interactions.columns[:2]) == ["user_id", "item_id"]


CASES: tuple[Case, ...] = (
    # ---- CSV / TSV
    Case(
        "csv_missing_column",
        _csv("missing_column.csv"),
        "load",
        ("missing_column.csv", "no column 'timestamp'", "columns found"),
    ),
    Case(
        "csv_no_header",
        _csv("no_header.csv"),
        "load",
        ("no_header.csv", "first line looks like data", "--names user_id,item_id,rating,timestamp"),
    ),
    Case(
        "csv_renamed_column",
        _csv("renamed_column.csv"),
        "load",
        ("renamed_column.csv", "no column 'user_id'", "'userId'", "--columns user_id=userId"),
    ),
    Case(
        "csv_rating_text",
        _csv("rating_text.csv"),
        "load",
        ("rating_text.csv", "'rating'", "2 rating(s) are not numbers", "row 10: 'four'", "row 11: '4 stars'"),
    ),
    Case(
        "csv_null_ids",
        _csv("null_ids.csv"),
        "validate",
        ("interactions.user_id", "expect_column_values_to_not_be_null", f"3 of {GOOD_ROWS} rows"),
    ),
    Case(
        "csv_rating_out_of_range",
        _csv("rating_out_of_range.csv", rating_range=[1, 5]),
        "validate",
        ("interactions.rating", "between 1.0 and 5.0", f"2 of {GOOD_ROWS} rows", "0.0", "11.0"),
    ),
    Case(
        "csv_rating_missing",
        _csv("rating_missing.csv"),
        None,
        warnings={"interactions.rating": 4},
        users=GOOD_USERS,
        check=_ratings_missing_kept,
    ),
    Case(
        "csv_timestamp_negative",
        _csv("timestamp_negative.csv"),
        None,
        dropped={REASON_EPOCH_TIMESTAMP: 2},
        users=GOOD_USERS,
    ),
    Case(
        "csv_no_header_named",
        _csv("no_header.csv", names="user_id,item_id,rating,timestamp"),
        None,
        users=GOOD_USERS,
    ),
    Case(
        "csv_timestamp_zero",
        _csv("timestamp_zero.csv"),
        None,
        dropped={REASON_EPOCH_TIMESTAMP: 3},
        users=GOOD_USERS,
    ),
    Case(
        "csv_timestamp_future",
        _csv("timestamp_future.csv"),
        "validate",
        ("interactions.timestamp", "more than a day ahead", f"2 of {GOOD_ROWS} rows", "2099-01-01"),
    ),
    Case(
        "csv_timestamp_unparseable",
        _csv("timestamp_unparseable.csv"),
        "load",
        ("timestamp_unparseable.csv", "'timestamp'", "2 of 240", "row 4: 'yesterday'", "'31/12/2020 10:00'"),
    ),
    Case(
        "csv_timestamp_mixed_units",
        _csv("timestamp_mixed_units.csv"),
        "load",
        (
            "timestamp_mixed_units.csv",
            "'timestamp'",
            "10 epoch timestamp(s) fall after 2200",
            "row 100",
            "timestamp_unit",
        ),
    ),
    Case(
        "csv_header_repeated",
        _csv("header_repeated.csv"),
        "load",
        ("header_repeated.csv", "'rating'", "row 120: 'rating'"),
    ),
    Case(
        "csv_duplicate_columns",
        _csv("duplicate_columns.csv"),
        "load",
        ("duplicate_columns.csv", "repeated column name(s) ['rating']"),
    ),
    Case(
        "csv_truncated_last_line",
        _csv("truncated_last_line.csv"),
        "validate",
        ("interactions.timestamp", "expect_column_values_to_not_be_null", f"1 of {GOOD_ROWS} rows"),
    ),
    Case(
        "csv_wrong_delimiter",
        _csv("wrong_delimiter.csv"),
        "load",
        ("wrong_delimiter.csv", "no column 'user_id'", "separated by ';'", "sep=';'"),
    ),
    Case(
        "csv_unquoted_separator",
        _csv("unquoted_separator.csv"),
        "load",
        ("unquoted_separator.csv", "Expected 4 fields in line 32, saw 5", "quote values that contain the separator"),
    ),
    # The same on the first data line: pandas would read the first field as an index and shift every column.
    Case(
        "csv_unquoted_separator_first_row",
        _csv("unquoted_separator_first_row.csv"),
        "load",
        ("unquoted_separator_first_row.csv", "line 2", "more fields than the 4 column(s) named", "quote values"),
    ),
    Case(
        "csv_non_utf8",
        _csv("non_utf8.csv"),
        "load",
        ("non_utf8.csv", "line 14 (b'1,caf\\xe9", "is not UTF-8 text", "--encoding", "re-save it as UTF-8"),
    ),
    Case("csv_bom", _csv("bom.csv"), None, users=GOOD_USERS, check=_bom),
    Case("csv_spaces_after_commas", _csv("spaces_after_commas.csv"), None, users=GOOD_USERS, check=_same_as_good),
    Case("csv_empty", _csv("empty.csv"), "load", ("empty.csv", "the file is empty")),
    Case(
        "csv_header_only",
        _csv("header_only.csv"),
        "validate",
        ("interactions", "expect_table_row_count_to_be_between", "expected at least 10", "observed: 0"),
    ),
    # One user: each test event's item occurs only in the test part, so nothing can be evaluated (one error).
    Case(
        "csv_single_user",
        _csv("single_user.csv"),
        "prepare",
        ("nothing to evaluate on", "(1 users,", "held-out events are of items no one had before", "use more data"),
    ),
    # One item, one event per user: nothing left to train on.
    Case(
        "csv_single_item",
        _csv("single_item.csv"),
        "prepare",
        ("nothing to evaluate on", "1 items)", "users have a single event", "use more data"),
    ),
    Case(
        "csv_all_after_as_of",
        _csv("all_after_as_of.csv"),
        "prepare",
        ("no interactions", "before as_of=2022-01-01", "first event is 2023-"),
    ),
    Case(
        "csv_unknown_users_and_items",
        {
            "kind": "csv",
            "interactions": "csv/unknown_refs/interactions.csv",
            "users": "csv/unknown_refs/users.csv",
            "items": "csv/unknown_refs/items.csv",
        },
        None,
        # 20 events name items 123/124, two of them by the unknown users 29/30: counted as unknown users.
        dropped={UNKNOWN_USER: 16, UNKNOWN_ITEM: 18},
        warnings={"interactions.user_id": 16, "interactions.item_id": 20},
        users=GOOD_USERS - 2,
    ),
    Case(
        "csv_long_ids",
        _csv("long_ids.csv"),
        "load",  # at publish until 2026-12-07: after training and two retries of the publish
        ("long_ids.csv: interactions column 'user_id'", "longer than 200 characters", "'uuuuuuuu", "(300 characters)"),
    ),
    Case("tsv_int64_ids", _csv("int64_ids.tsv"), None, users=GOOD_USERS, check=_ids_exact),
    Case(
        "csv_over_memory_budget",
        {"kind": "csv", "interactions": "good/interactions.csv", "max_input_bytes": 4096},
        "load",
        ("interactions.csv", "max_input_bytes=4,096", "over the memory budget", "bytes"),
    ),
    # ---- Parquet
    Case(
        "parquet_rating_text",
        _parquet("rating_text.parquet"),
        "load",
        ("rating_text.parquet", "'rating'", "row 10: 'four'"),
    ),
    Case(
        "parquet_float_ids_nan",
        _parquet("float_ids_nan.parquet"),
        "validate",
        ("interactions.user_id", "expect_column_values_to_not_be_null", f"2 of {GOOD_ROWS} rows"),
    ),
    Case("parquet_int64_ids", _parquet("int64_ids.parquet"), None, users=GOOD_USERS, check=_ids_exact),
    Case(
        "parquet_ms_timestamps",
        _parquet("ms_timestamps.parquet"),
        "load",
        ("ms_timestamps.parquet", "'timestamp'", f"{GOOD_ROWS} epoch timestamp(s) fall after 2200", "row 0"),
    ),
    Case(
        "parquet_missing_column",
        _parquet("missing_column.parquet"),
        "load",
        # The suggested mapping must not be the user_id column, however similar the name.
        ("missing_column.parquet", "no column 'item_id'", "columns found", "--columns item_id=<your column>"),
    ),
    # ---- SQL (tables of a SQLite file)
    Case(
        "sql_no_rows",
        _sql(table="events_no_rows"),
        "validate",
        ("interactions", "expect_table_row_count_to_be_between", "observed: 0"),
    ),
    Case(
        "sql_query_no_rows",
        _sql(query="SELECT * FROM events_mixed_ids WHERE 1 = 0"),
        "validate",
        ("interactions", "expect_table_row_count_to_be_between", "observed: 0"),
    ),
    Case("sql_mixed_int_str_ids", _sql(table="events_mixed_ids"), None, users=GOOD_USERS, check=_mixed_ids),
    Case(
        "sql_float_ids_with_null",
        _sql(table="events_float_ids_null"),
        "validate",
        ("interactions.user_id", "expect_column_values_to_not_be_null", f"2 of {GOOD_ROWS} rows"),
    ),
    Case(
        "sql_rating_text",
        _sql(table="events_rating_text"),
        "load",
        ("table events_rating_text", "'rating'", "row 10: 'four'"),
    ),
    Case(
        "sql_repeated_column_names",
        _sql(query="SELECT user_id, item_id, rating, timestamp, user_id FROM events_mixed_ids"),
        "load",
        ("query at sqlite", "repeated column name(s) ['user_id']", "alias"),
    ),
    Case(
        "sql_missing_table",
        _sql(table="events_typo"),
        "load",
        ("no table events_typo", "events_mixed_ids", "check the name"),
    ),
    # ---- MovieLens (GroupLens folder format)
    Case(
        "movielens_truncated_last_line",
        _movielens("truncated_last_line"),
        "validate",
        ("interactions.timestamp", "expect_column_values_to_not_be_null", f"1 of {GOOD_ROWS} rows"),
    ),
    Case(
        "movielens_rating_out_of_range",
        _movielens("rating_out_of_range"),
        "validate",
        ("interactions.rating", "between 1.0 and 5.0", f"1 of {GOOD_ROWS} rows", "7.0"),
    ),
    Case(
        "movielens_wrong_delimiter",
        _movielens("wrong_delimiter"),
        "load",
        ("u.data", "1 fields per line, expected 4"),
    ),
    Case("movielens_empty", _movielens("empty"), "load", ("u.data", "is empty")),
    Case(
        "movielens_ms_timestamps",
        _movielens("ms_timestamps"),
        "load",
        ("u.data", "timestamp", f"{GOOD_ROWS} epoch timestamp(s) fall after 2200", "convert them to seconds"),
    ),
    Case(
        "movielens_unknown_items",
        _movielens("unknown_items"),
        None,
        dropped={UNKNOWN_ITEM: 20},
        warnings={"interactions.item_id": 20},
        users=GOOD_USERS,
    ),
    Case(
        "movielens_non_utf8",
        _movielens("non_utf8"),
        "load",
        ("u.data", "not utf-8 text", "re-save it as utf-8"),
    ),
)
_KNOWN_PARTIAL_WRITE = pytest.mark.xfail.with_args(strict=True, raises=PublishedTablesChanged)
FAILING = [
    pytest.param(c, marks=_KNOWN_PARTIAL_WRITE(reason=c.partial_write)) if c.partial_write else c
    for c in CASES
    if c.stage is not None
]
PROCEEDING = [c for c in CASES if c.stage is None]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def published_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A database holding one good run (as of :data:`AS_OF`) of the corpus's good data."""
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('published') / 'rf.db'}")
    store.create_schema()
    run_pipeline(resolve(GOOD_SOURCE), store)
    yield store
    store.dispose()


# ------------------------------------------------------------------------------------------------ tests


def test_corpus_is_reproducible(tmp_path: Path) -> None:
    """The committed corpus is what make_corpus.py writes (text byte for byte, Parquet/SQLite by content)."""
    written = {p.relative_to(tmp_path) for p in make_corpus.write_corpus(tmp_path)}
    committed = {
        p.relative_to(CORPUS)
        for p in CORPUS.rglob("*")
        if p.is_file() and p.name not in make_corpus.KEEP and "__pycache__" not in p.parts
    }
    assert written == committed
    for relative in sorted(written):
        if relative.suffix == ".parquet":
            fresh, committed = (pd.read_parquet(root / relative) for root in (tmp_path, CORPUS))
            pd.testing.assert_frame_equal(fresh, committed)
        elif relative.suffix == ".sqlite":
            assert _sqlite_dump(tmp_path / relative) == _sqlite_dump(CORPUS / relative)
        else:
            assert filecmp.cmp(tmp_path / relative, CORPUS / relative, shallow=False), relative
    assert len(CASES) >= 25 and len({c.name for c in CASES}) == len(CASES)
    kinds = {SourceSpec.from_mapping(resolve(c.source)).kind for c in CASES}
    assert kinds == {"csv", "parquet", "sql", "movielens-100k"}


def _sqlite_dump(path: Path) -> list[str]:
    import sqlite3

    connection = sqlite3.connect(path)
    try:
        return list(connection.iterdump())
    finally:
        connection.close()


def test_good_run_published(published_store: Store) -> None:
    tables = snapshot(published_store)
    recommendations = tables["recommendations"]
    assert set(recommendations["model"]) == set(MODELS)
    assert _users_per_model(recommendations) == dict.fromkeys(MODELS, GOOD_USERS)
    assert len(tables["champions"]) == 1 and tables["champions"]["model"].iloc[0] in MODELS
    assert len(tables["model_metrics"]) > 0


@pytest.mark.parametrize("case", FAILING, ids=lambda c: c.name)
def test_failing_case_names_the_problem_and_keeps_published_rows(case: Case, published_store: Store) -> None:
    before = snapshot(published_store)
    runs_before = len(published_store.latest_runs(limit=1000))
    with pytest.raises(StageFailed) as info:
        run_pipeline(resolve(case.source), published_store)
    failure = info.value
    message = str(failure.error)
    assert failure.stage == case.stage, f"{case.name}: failed at {failure.stage}, not {case.stage}: {message}"
    missing = [w for w in case.words if w not in message]
    assert not missing, f"{case.name}: message lacks {missing}:\n{message}"
    assert_unchanged(before, snapshot(published_store))
    runs = published_store.latest_runs(limit=1000)
    assert len(runs) == runs_before + 1  # recorded before loading, so a load failure is on record too
    latest = runs.iloc[0]
    assert latest["status"] == "failed" and case.words[0] in latest["error"]


@pytest.mark.parametrize("case", PROCEEDING, ids=lambda c: c.name)
def test_proceeding_case_cleans_as_declared(case: Case, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'rf.db'}")
    store.create_schema()
    published = run_pipeline(resolve(case.source), store)
    dropped = {r: n for r, n in published.data.cleaning.invalid_rows_dropped.items() if n}
    assert dropped == {r: n for r, n in case.dropped.items() if n}
    warnings = {o.location: o.unexpected_count for o in published.report.warnings}
    assert {k: v for k, v in warnings.items() if k != "interactions"} == case.warnings
    assert _users_per_model(published.recommendations) == dict.fromkeys(MODELS, case.users)
    assert published.failed_models == {}
    assert store.latest_runs(limit=1)["status"].tolist() == ["completed"]
    if case.check is not None:
        case.check(published)
    store.dispose()


def test_events_slightly_ahead_of_the_clock_are_left_out_not_fatal(tmp_path: Path) -> None:
    # Skewed device or server clocks: two events a few hours "in the future" must not stop a nightly run.
    frame = pd.read_csv(CORPUS / "good" / "interactions.csv")
    ahead = int(datetime.now(UTC).timestamp()) + 3 * 3600
    frame.loc[[4, 9], "timestamp"] = ahead
    frame.to_csv(tmp_path / "interactions.csv", index=False)
    source = resolve(GOOD_SOURCE) | {"interactions": str(tmp_path / "interactions.csv")}
    store = Store(f"sqlite:///{tmp_path / 'rf.db'}")
    store.create_schema()
    published = run_pipeline(source, store)
    [warning] = published.report.warnings
    assert warning.description.startswith(AHEAD_OF_CLOCK) and warning.unexpected_count == 2
    # They are after the run's as_of (now): outside its window, not dropped by cleaning.
    assert not any(published.data.cleaning.invalid_rows_dropped.values())
    assert published.data.row_counts["before_as_of"] == len(frame) - 2
    assert store.latest_runs(limit=1)["status"].tolist() == ["completed"]
    store.dispose()


def test_reliability_doc_lists_every_case() -> None:
    text = (REPO_ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    missing = [c.name for c in CASES if f"`{c.name}`" not in text]
    assert not missing, f"docs/reliability.md does not list {missing}"


# ---------------------------------------------------------------------------------------------- the real flow

FLOW_CASES = ("csv_wrong_delimiter", "csv_over_memory_budget", "parquet_float_ids_nan", "csv_single_item")


def _case(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


def _flow_config(case: Case, tmp_path: Path) -> RunConfig:
    return RunConfig(
        source=resolve(case.source),
        as_of=AS_OF,
        models=list(MODELS),
        top_n=TOP_N,
        k=K,
        output_dir=str(tmp_path / "var"),
    )


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("name", FLOW_CASES)
def test_flow_fails_cleanly_on_bad_input(name: str, published_store: Store, tmp_path: Path) -> None:
    """The recommend flow stops at the declared stage with the same message, and publishes nothing."""
    from flows.recommend import recommend

    case = _case(name)
    url = published_store.engine.url.render_as_string(hide_password=False)
    before = snapshot(published_store)
    runs_before = len(published_store.latest_runs(limit=1000))
    with pytest.raises(Exception) as info:
        recommend(config=_flow_config(case, tmp_path), db_url=url)
    message = str(info.value)
    missing = [w for w in case.words if w not in message]
    assert not missing, f"{name}: the flow's error lacks {missing}:\n{message}"
    assert_unchanged(before, snapshot(published_store))
    runs = published_store.latest_runs(limit=1000)
    # The flow records the run before it reads any data; any failure, loading included, closes it failed.
    assert len(runs) == runs_before + 1
    assert runs.iloc[0]["status"] == "failed" and case.words[0] in runs.iloc[0]["error"]


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_flow_publishes_after_cleaning_unknown_references(tmp_path: Path) -> None:
    """Proceeding case through the flow: warnings, rows dropped and counted, every known user served."""
    from flows.recommend import recommend

    case = _case("csv_unknown_users_and_items")
    url = f"sqlite:///{tmp_path / 'rf.db'}"
    summary = recommend(config=_flow_config(case, tmp_path), db_url=url)
    assert summary["status"] == "completed" and summary["failed_models"] == {}
    dropped = sum(case.dropped.values())
    assert summary["row_counts"]["loaded"] == GOOD_ROWS
    assert summary["row_counts"]["cleaned"] == GOOD_ROWS - dropped
    store = Store(url)
    recommendations = snapshot(store)["recommendations"]
    assert _users_per_model(recommendations) == dict.fromkeys(MODELS, case.users)
    assert not {"29", "30"} & set(recommendations["user_id"])  # users missing from the users table
    store.dispose()


# ------------------------------------------------------------------------------------------------ unit checks


def test_memory_budget_counts_every_file_before_reading(tmp_path: Path) -> None:
    from recforge.data.files import load_files

    good = {name: CORPUS / "good" / f"{name}.csv" for name in ("interactions", "users", "items")}
    sizes = {name: path.stat().st_size for name, path in good.items()}
    total = sum(sizes.values())
    files = {"users": good["users"], "items": good["items"]}
    assert len(load_files(good["interactions"], **files, max_input_bytes=total).interactions) == GOOD_ROWS
    with pytest.raises(DataError) as info:
        load_files(good["interactions"], **files, max_input_bytes=total - 1)
    message = str(info.value)
    assert f"{total:,} bytes" in message and f"max_input_bytes={total - 1:,}" in message
    assert all(f"{name} {path} is {sizes[name]:,} bytes" in message for name, path in good.items())
    # An unreadable file is refused by the budget before any reader sees it.
    huge = tmp_path / "huge.csv"
    huge.write_bytes(b"\xff" * 10_000)
    with pytest.raises(DataError, match="over the memory budget"):
        load_files(huge, max_input_bytes=9_999)


@pytest.mark.parametrize("budget", [0, -1, "lots", True, 1.5])
def test_memory_budget_setting_must_be_a_positive_integer(budget: object) -> None:
    source = {"kind": "csv", "interactions": str(CORPUS / "good/interactions.csv"), "max_input_bytes": budget}
    with pytest.raises(DataError, match="max_input_bytes"):
        SourceSpec.from_mapping(source)


def test_memory_budget_setting_is_parsed_and_described() -> None:
    source = {"kind": "csv", "interactions": str(CORPUS / "good/interactions.csv"), "max_input_bytes": "4096"}
    spec = SourceSpec.from_mapping(source)
    assert spec.max_input_bytes == 4096 and "max_input_bytes=4096" in spec.describe()
    assert RunConfig(source=source).source["max_input_bytes"] == "4096"  # checked at config time, kept


def test_only_placeholder_timestamps_is_an_error_not_an_empty_run() -> None:
    from recforge.prepare import clean_interactions

    frame = pd.DataFrame(
        {
            "user_id": ["1", "2", "3"],
            "item_id": ["a", "b", "c"],
            "timestamp": pd.to_datetime([0, -5, 0], unit="s", utc=True),
        }
    )
    with pytest.raises(DataError, match="every interaction's timestamp is at or before 1970-01-01"):
        clean_interactions(frame)
    # One real event among them: the placeholders are dropped and counted, the real one kept.
    frame.loc[1, "timestamp"] = pd.Timestamp("2021-05-01", tz="UTC")
    cleaned, report = clean_interactions(frame)
    assert cleaned["user_id"].tolist() == ["2"]
    assert report.invalid_rows_dropped == {REASON_EPOCH_TIMESTAMP: 2}
