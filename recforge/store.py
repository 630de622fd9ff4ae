"""SQL storage for runs, metrics, features and published recommendations (SQLAlchemy 2 Core).

Works with any SQLAlchemy URL; SQLite (``sqlite:///var/recforge.db``) is the embedded default. All SQL is
built with SQLAlchemy constructs so the same code runs on SQLite and PostgreSQL.

Tables (see the ``Table`` objects below): ``runs``, ``model_metrics``, ``recommendations``, ``features``,
``champions``, ``schema_version`` (one row), and the view ``champion_recommendations`` (the recommendations of
the champion model of the latest ``as_of`` that has a champion). The ``Table`` objects describe the schema for
queries; the DDL lives in Alembic revisions (``recforge/migrations``), applied by ``Store.create_schema``.

Bulk writes (recommendations, metrics, features): PostgreSQL through psycopg 3 gets binary ``COPY``, other
databases chunked ``executemany``; either way inside the transaction that first deletes the rows replaced.

Datetimes: callers may pass tz-aware or naive datetimes (naive means UTC). They are stored as naive UTC
(``TIMESTAMP WITHOUT TIME ZONE`` on PostgreSQL, fixed-width text on SQLite) so equality filters on ``as_of``
behave the same everywhere, and they are returned tz-aware UTC.
"""

from __future__ import annotations

import json
import math
import struct
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Select,
    String,
    Table,
    Text,
    TypeDecorator,
    and_,
    column,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    table,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import DDLCompiler
from sqlalchemy.sql.ddl import ExecutableDDLElement
from sqlalchemy.sql.elements import ColumnElement

from recforge import pg_partitions
from recforge.data.contract import MAX_ID_CHARS
from recforge.processes import host_name, process_alive, process_token

DEFAULT_URL = "sqlite:///var/recforge.db"
# The pre-Alembic compatibility mark in table schema_version. Schema changes are Alembic revisions in
# recforge/migrations; bump this (in a revision) only for a change that recforge versions from before Alembic,
# which open a database only when this row holds 1, must refuse.
SCHEMA_VERSION = 1
# Rows per executemany call or COPY write: large enough to amortise round trips, small enough to bound memory.
CHUNK_ROWS = 50_000
RUN_STATUSES = ("running", "completed", "failed", "partial")
#: What a run record that did not finish normally can say about its publications.
PUBLISHED_ALL_OR_NOTHING = (
    "the publish step is atomic, so this run published either everything or nothing (see the publications table)"
)
ENTITIES = ("user", "item")

METRIC_COLUMNS = ("model", "metric", "k", "value", "split")
RECOMMENDATION_COLUMNS = ("model", "user_id", "rank", "item_id", "score")


#: The ``timing`` metrics that :meth:`Store.recent_training_seconds` adds up (what a model's two tasks cost).
TRAINING_TIMINGS = (
    "fit_seconds",
    "score_seconds",
    "rating_fit_seconds",
    "refit_fit_seconds",
    "refit_recommend_seconds",
)


#: The recommend flow's stages in order, as the run records' timings name them.
RUN_STAGES = ("ingest", "validate", "prepare", "train", "publish")


class UTCDateTime(TypeDecorator[datetime]):
    """A datetime stored as naive UTC and returned tz-aware UTC; accepts aware or naive (= UTC) values."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> datetime | None:
        return None if value is None else to_naive_utc(value)

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def to_naive_utc(value: datetime) -> datetime:
    """``value`` as a naive datetime in UTC; naive input is taken to be UTC already."""
    if value is pd.NaT or value is None:
        raise TypeError(f"expected a datetime (tz-aware, or naive meaning UTC), got {value!r}")
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        # A plain `date` has no time of day: ask for an explicit datetime rather than guess midnight.
        kind = "a date" if isinstance(value, date) else type(value).__name__
        raise TypeError(f"expected a datetime (tz-aware, or naive meaning UTC), got {kind}: {value!r}")
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other databases, in-memory ones and ``file:`` URIs."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def mask_url(url: str) -> str:
    """``url`` with its password shown as ``***``; never echoes an unparsable URL (it may hold a secret)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise ValueError(
            "could not parse the database URL (not shown: it may contain a password); expected e.g. "
            "'sqlite:///var/recforge.db' or 'postgresql+psycopg://user:password@host/dbname'"
        ) from None


def mask_source(source: str) -> str:
    """A data source description with any URL password hidden; paths and other text are returned unchanged."""
    try:
        parsed = make_url(source)
    except ArgumentError:
        return source
    return parsed.render_as_string(hide_password=True) if parsed.password is not None else source


@dataclass
class PruneResult:
    """What :meth:`Store.prune` deleted (or, in a dry run, would delete).

    before: the cut-off. kept_served: the champion view's date when it is older and was kept. dates: the dates
    pruned. rows: rows per table (recommendations, features). Times are UTC.
    """

    before: datetime
    kept_served: datetime | None
    dates: list[datetime] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=lambda: {"recommendations": 0, "features": 0})

    def add(self, as_of: datetime, rows: Mapping[str, int]) -> None:
        self.dates.append(as_of)
        for table_name, count in rows.items():
            self.rows[table_name] += int(count)


@dataclass(frozen=True)
class ChampionDecision:
    """The model chosen to serve an ``as_of``: which one, by which metric and value, and why."""

    model: str
    metric: str
    value: float
    reason: str


metadata = MetaData()

schema_version_table = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", UTCDateTime(), nullable=False),
)

runs_table = Table(
    "runs",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("flow_run_id", String(64), nullable=True),
    Column("dataset", String(200), nullable=False),
    Column("source", Text, nullable=False),
    Column("as_of", UTCDateTime(), nullable=False),
    Column("parameters", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("timings", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("champion", String(200), nullable=True),
    # Who runs it (revision 0006): lets a later run close a row whose process was killed (recforge.processes).
    Column("host", String(255), nullable=True),
    Column("process", String(100), nullable=True),
    Index("ix_runs_started_at", "started_at"),
)

metrics_table = Table(
    "model_metrics",
    metadata,
    Column("run_id", String(36), ForeignKey("runs.run_id"), nullable=False),
    Column("model", String(200), nullable=False),
    Column("metric", String(100), nullable=False),
    # `k` is NULL for metrics without a cut-off (RMSE, MAE). Primary-key columns cannot be NULL, so the key
    # uses `k_key` = k or 0 (k itself must be >= 1).
    Column("k", Integer, nullable=True),
    Column("k_key", Integer, nullable=False),
    Column("value", Float, nullable=True),
    Column("split", String(100), nullable=False),
    PrimaryKeyConstraint("run_id", "model", "metric", "k_key", "split"),
)

recommendations_table = Table(
    "recommendations",
    metadata,
    Column("as_of", UTCDateTime(), nullable=False),
    Column("model", String(200), nullable=False),
    Column("user_id", String(MAX_ID_CHARS), nullable=False),
    Column("rank", Integer, nullable=False),
    Column("item_id", String(MAX_ID_CHARS), nullable=False),
    Column("score", Float, nullable=False),
    # No foreign key to runs (revision 0002): PostgreSQL would check it per row of a multi-million-row
    # publish; `Store.publish` checks the run once and key-share-locks its row instead.
    Column("run_id", String(36), nullable=False),
    # What produced the row ("model", or a cold-start fallback such as "popularity") and a short explanation;
    # NULL on rows published before revision 0003.
    Column("strategy", String(100), nullable=True),
    Column("reason", Text, nullable=True),
    # Serves every read (they give as_of, model and user_id) and the deletes of a republish. It is the only
    # index (revision 0004): each index costs PostgreSQL CPU on every COPYed row; "the latest as_of of a model"
    # is answered by the publications table instead.
    PrimaryKeyConstraint("as_of", "model", "user_id", "rank"),
    # PostgreSQL (revision 0005): one partition per as_of, in it one per model, each built aside with its
    # rows and swapped in by a publish (recforge.pg_partitions). SQLite ignores this.
    postgresql_partition_by="LIST (as_of)",
)

# One row per (as_of, model) published, written in the same transaction as its recommendations (revision 0004).
publications_table = Table(
    "publications",
    metadata,
    Column("as_of", UTCDateTime(), nullable=False),
    Column("model", String(200), nullable=False),
    Column("run_id", String(36), nullable=False),
    Column("row_count", Integer, nullable=False),  # rows written by the publish (a later forget may remove some)
    Column("published_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("as_of", "model"),
)

features_table = Table(
    "features",
    metadata,
    Column("run_id", String(36), ForeignKey("runs.run_id"), nullable=False),
    Column("as_of", UTCDateTime(), nullable=False),
    Column("entity", String(8), nullable=False),
    Column("entity_id", String(MAX_ID_CHARS), nullable=False),
    Column("feature", String(200), nullable=False),
    Column("value", Float, nullable=False),
    PrimaryKeyConstraint("run_id", "as_of", "entity", "entity_id", "feature"),
    Index("ix_features_entity", "entity", "entity_id"),
)

champions_table = Table(
    "champions",
    metadata,
    Column("as_of", UTCDateTime(), primary_key=True),
    Column("model", String(200), nullable=False),
    Column("metric", String(100), nullable=False),
    Column("value", Float, nullable=False),
    Column("run_id", String(36), ForeignKey("runs.run_id"), nullable=False),
    Column("decided_at", UTCDateTime(), nullable=False),
    Column("reason", Text, nullable=False),
)

erasures_table = Table(
    "erasures",
    metadata,
    # As stored in the other tables: the pseudonym when ids are pseudonymised (recforge.privacy).
    Column("user_id", String(MAX_ID_CHARS), primary_key=True),
    Column("requested_at", UTCDateTime(), nullable=False),
    Column("rows_deleted", Text, nullable=False),
    Column("note", Text, nullable=True),
)

DATA_TABLES = (runs_table, metrics_table, recommendations_table, features_table, champions_table)
CHAMPION_VIEW_NAME = "champion_recommendations"
MAX_INTEGER = 2**31 - 1  # the largest value of an INTEGER column (rank, k) on PostgreSQL
# Advisory lock key (PostgreSQL) between forget_user and the writes of user rows: see Store._lock_erasures.
ERASURES_LOCK = "recforge.erasures"


def _champion_view_select() -> Select[Any]:
    """Recommendations of the champion model of the latest ``as_of`` that has a champion."""
    latest = select(func.max(champions_table.c.as_of)).scalar_subquery()
    return (
        select(*recommendations_table.c)
        .select_from(
            recommendations_table.join(
                champions_table,
                and_(
                    recommendations_table.c.as_of == champions_table.c.as_of,
                    recommendations_table.c.model == champions_table.c.model,
                ),
            )
        )
        .where(champions_table.c.as_of == latest)
    )


# A lightweight handle to query the view with (not part of `metadata`, so create_all never makes a table).
champion_recommendations = table(CHAMPION_VIEW_NAME, *(column(c.name, c.type) for c in recommendations_table.c))


def _user_rows(user: str) -> dict[str, tuple[Table, ColumnElement[bool]]]:
    """The published rows of ``user`` per table: what ``forget_user`` deletes and ``user_row_counts`` counts."""
    return {
        "recommendations": (recommendations_table, recommendations_table.c.user_id == user),
        "features": (features_table, and_(features_table.c.entity == "user", features_table.c.entity_id == user)),
    }


class CreateView(ExecutableDDLElement):
    """``CREATE VIEW <name> AS <select>``, compiled for the connection's dialect."""

    def __init__(self, name: str, selectable: Select[Any]) -> None:
        self.name = name
        self.selectable = selectable


class DropView(ExecutableDDLElement):
    """``DROP VIEW IF EXISTS <name>`` (supported by SQLite and PostgreSQL)."""

    def __init__(self, name: str) -> None:
        self.name = name


@compiles(CreateView)
def _compile_create_view(element: CreateView, compiler: DDLCompiler, **kw: Any) -> str:
    name = compiler.preparer.quote(element.name)
    body = compiler.sql_compiler.process(element.selectable, literal_binds=True)
    return f"CREATE VIEW {name} AS {body}"


@compiles(DropView)
def _compile_drop_view(element: DropView, compiler: DDLCompiler, **kw: Any) -> str:
    return f"DROP VIEW IF EXISTS {compiler.preparer.quote(element.name)}"


# PostgreSQL refuses to drop tables a view depends on: drop the view first in `metadata.drop_all`.
event.listen(metadata, "before_drop", DropView(CHAMPION_VIEW_NAME))


ColumnValues = Sequence[Any] | np.ndarray | pd.Series
"""One column of a bulk write: a list, numpy array or pandas Series of plain values (None/NaN = NULL)."""


def _bulk_insert(
    conn: Connection,
    target: Table,
    columns: Mapping[str, ColumnValues],
    constants: Mapping[str, Any] | None = None,
) -> int:
    """Insert rows into ``target`` inside the caller's transaction; returns the number of rows.

    ``columns`` maps column names to equally long columns of values; ``constants`` maps column names to one
    value shared by every row (run_id, as_of). The one path every bulk write goes through: PostgreSQL through
    psycopg gets binary ``COPY`` (:func:`_copy_insert`), other databases chunked ``executemany``
    (:func:`_executemany_insert`). Rows go in chunks of ``CHUNK_ROWS``.
    """
    constants = dict(constants or {})
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"bulk insert into {target.name}: columns differ in length {lengths}")
    total = next(iter(lengths.values()), 0)
    if total == 0:
        return 0
    if _can_copy(conn, target, [*columns, *constants]):
        _copy_insert(conn, target, columns, constants, total)
    else:
        _executemany_insert(conn, target, columns, constants, total)
    return total


def _executemany_insert(
    conn: Connection, target: Table, columns: Mapping[str, ColumnValues], constants: Mapping[str, Any], total: int
) -> None:
    """Chunks of rows through the driver's ``executemany`` (SQLite, and PostgreSQL drivers other than psycopg).

    Why not ``conn.execute(insert(target), list_of_dicts)``: SQLAlchemy then builds and type-processes
    parameters row by row, which costs more than SQLite's own insert. Here the INSERT is still compiled by
    SQLAlchemy for the connection's dialect (names quoted, its paramstyle), values go through their
    column type's bind processor (a constant only once), and chunks of plain tuples or dicts go to the
    driver's ``executemany``.
    """
    dialect = conn.dialect
    names = [*columns, *constants]
    compiled = insert(target).compile(dialect=dialect, column_keys=names)
    processors = _bind_processors(conn, target, names)
    processed_constants = {
        name: value if processors[name] is None else processors[name](value) for name, value in constants.items()
    }
    # Positional paramstyles (SQLite's qmark) take tuples in the compiled order; named ones take dicts.
    order = list(compiled.positiontup or []) if dialect.positional else names
    sql = str(compiled)
    for start in range(0, total, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, total)
        # Python objects for one chunk at a time: for millions of rows, whole-column lists would take GBs.
        chunk_columns: dict[str, Sequence[Any]] = {}
        for name, values in columns.items():
            plain = _plain_list(values.iloc[start:stop] if isinstance(values, pd.Series) else values[start:stop])
            processor = processors[name]
            chunk_columns[name] = plain if processor is None else list(map(processor, plain))
        for name, value in processed_constants.items():
            chunk_columns[name] = [value] * (stop - start)
        rows = zip(*(chunk_columns[name] for name in order), strict=True)
        if dialect.positional:
            params: list[Any] = list(rows)
        else:
            params = [dict(zip(order, row, strict=True)) for row in rows]
        conn.exec_driver_sql(sql, params)


def _bind_processors(conn: Connection, target: Table, names: Sequence[str]) -> dict[str, Any]:
    # The dialect's own type implementation: the generic type's processor would skip e.g. SQLite's fixed
    # datetime text format, and equality filters on as_of would then miss the rows.
    dialect = conn.dialect
    return {name: target.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names}


def _plain_list(values: ColumnValues) -> list[Any]:
    """Plain Python values (numpy/pandas scalars become int/float/str; NaN stays NaN)."""
    return values.tolist() if isinstance(values, np.ndarray | pd.Series) else list(values)


# -- PostgreSQL binary COPY ------------------------------------------------------------------------------------
# Format (https://www.postgresql.org/docs/current/sql-copy.html, "Binary Format"): a signature, flags and
# header-extension length, then per row a 16-bit field count and per field a 32-bit byte length (-1 = NULL)
# and the value in the type's binary send format (big-endian), then a 16-bit -1. Rows are assembled with
# pyarrow's vectorised kernels (~0.3 us a row here), not row by row: psycopg's `write_row` took 2-5 us a row
# on this 2-core machine, as much CPU as PostgreSQL spent storing the row.
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_COPY_NULL = struct.pack(">i", -1)
# timestamp: microseconds since 2000-01-01 (PostgreSQL's epoch), here as an offset from the Unix epoch.
_PG_EPOCH_US = 946_684_800_000_000


def _copy_kind(column_type: Any) -> str | None:
    """How a column's values are sent in binary COPY: 'text', 'int4', 'float8', 'timestamp', or None."""
    impl = column_type.impl if isinstance(column_type, TypeDecorator) else column_type
    if isinstance(impl, String):  # includes Text
        return "text"
    if type(impl) is Integer:  # not BigInteger/SmallInteger (other widths)
        return "int4"
    if type(impl) is Float and impl.precision is None:  # PostgreSQL: double precision
        return "float8"
    if isinstance(impl, DateTime) and not impl.timezone:
        return "timestamp"
    return None


def _can_copy(conn: Connection, target: Table, names: Sequence[str]) -> bool:
    """Whether this insert can use binary COPY: psycopg 3, a UTF-8 client encoding, supported column types."""
    if conn.dialect.name != "postgresql" or conn.dialect.driver != "psycopg":
        return False
    # Text fields of a binary COPY are in the client encoding; the rows are built as UTF-8.
    if conn.connection.driver_connection.info.encoding != "utf-8":  # type: ignore[union-attr]
        return False
    return all(_copy_kind(target.c[name].type) is not None for name in names)


def _copy_insert(
    conn: Connection, target: Table, columns: Mapping[str, ColumnValues], constants: Mapping[str, Any], total: int
) -> None:
    """``COPY target (...) FROM STDIN (FORMAT BINARY)`` on the connection's psycopg connection, in its open
    transaction (so a failure also rolls back the caller's deletes), ``CHUNK_ROWS`` rows per write.

    Names reach the statement only as quoted identifiers (psycopg's ``sql.Identifier``), never as text.
    """
    from psycopg import sql

    names = [*columns, *constants]
    processors = _bind_processors(conn, target, names)
    kinds = {name: _copy_kind(target.c[name].type) for name in names}
    arrays = {}
    for name, values in columns.items():
        processor = processors[name]
        if processor is not None:  # e.g. UTCDateTime: aware -> naive UTC
            values = [None if v is None else processor(v) for v in _plain_list(values)]
        arrays[name] = _arrow_column(values, kinds[name])  # type: ignore[arg-type]
    # Constants: encoded once, and after the per-row fields so they join as a single piece.
    tail = b"".join(
        _copy_constant(value if processors[name] is None else processors[name](value), kinds[name])  # type: ignore[arg-type]
        for name, value in constants.items()
    )
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(target.name), sql.SQL(", ").join(sql.Identifier(name) for name in names)
    )
    dbapi_cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        with dbapi_cursor.copy(statement) as copy:
            copy.write(_COPY_SIGNATURE)
            for start in range(0, total, CHUNK_ROWS):
                chunk = {name: array.slice(start, CHUNK_ROWS) for name, array in arrays.items()}
                copy.write(_copy_rows(chunk, kinds, len(names), tail))
            copy.write(_COPY_TRAILER)
    finally:
        dbapi_cursor.close()


def _arrow_column(values: ColumnValues, kind: str) -> pa.Array:
    """A column as an Arrow array of the COPY kind's type; None (and NaN) become nulls."""
    arrow_type = {
        "text": pa.large_string(),
        "int4": pa.int32(),
        "float8": pa.float64(),
        "timestamp": pa.timestamp("us"),
    }[kind]
    if isinstance(values, pd.Series):
        values = values.array  # Arrow-backed str columns convert without copying
    array = pa.array(values, type=arrow_type, from_pandas=True)
    # An Arrow-backed pandas column (e.g. after pd.concat) may come in several chunks.
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _copy_constant(value: Any, kind: str) -> bytes:
    """One field (length + value) of binary COPY for a value shared by all rows."""
    if value is None:
        return _COPY_NULL
    if kind == "text":
        data = str(value).encode("utf-8")
    elif kind == "int4":
        data = struct.pack(">i", value)
    elif kind == "float8":
        data = struct.pack(">d", value)
    else:
        epoch_us = pa.scalar(value, pa.timestamp("us")).value
        data = struct.pack(">q", epoch_us - _PG_EPOCH_US)
    return struct.pack(">i", len(data)) + data


def _fixed_binary(values: np.ndarray) -> pa.Array:
    """Each element of a numpy array (any fixed-size dtype, e.g. a structured one) as one binary value."""
    values = np.ascontiguousarray(values)
    width = values.dtype.itemsize
    fixed = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(values), [None, pa.py_buffer(values.view(np.uint8))]
    )
    return fixed.cast(pa.large_binary())


def _copy_fields(array: pa.Array, kind: str) -> pa.Array:
    """Per row, the field (32-bit length + value bytes, or -1 for NULL) of one column."""
    if kind == "text":
        data = array.cast(pa.large_binary())
        lengths = pc.fill_null(pc.binary_length(data), -1).to_numpy(zero_copy_only=False)
        empty = pa.scalar(b"", pa.large_binary())
        return pc.binary_join_element_wise(_fixed_binary(lengths.astype(">i4")), pc.fill_null(data, empty), empty)
    if kind == "timestamp":
        numbers = pc.fill_null(array.cast(pa.int64()), 0).to_numpy(zero_copy_only=False) - _PG_EPOCH_US
        value_dtype = ">i8"
    else:
        numbers = pc.fill_null(array, 0).to_numpy(zero_copy_only=False)
        value_dtype = ">i4" if kind == "int4" else ">f8"
    packed = np.empty(len(array), dtype=[("length", ">i4"), ("value", value_dtype)])
    packed["length"] = packed.dtype["value"].itemsize
    packed["value"] = numbers
    fields = _fixed_binary(packed)
    if array.null_count:
        fields = pc.if_else(pc.is_valid(array), fields, pa.scalar(_COPY_NULL, pa.large_binary()))
    return fields


def _copy_rows(
    arrays: Mapping[str, pa.Array], kinds: Mapping[str, str | None], field_count: int, tail: bytes
) -> memoryview:
    """The binary COPY bytes of a chunk of rows: per row the field count, the column fields, ``tail``."""
    pieces = [pa.scalar(struct.pack(">h", field_count), pa.large_binary())]
    pieces += [_copy_fields(array, kinds[name]) for name, array in arrays.items()]  # type: ignore[arg-type]
    pieces.append(pa.scalar(tail, pa.large_binary()))
    rows = pc.binary_join_element_wise(*pieces, pa.scalar(b"", pa.large_binary()))
    # A large_binary array's values lie back to back in its data buffer, between the first and last offset.
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64, count=len(rows) + 1, offset=rows.offset * 8)
    return memoryview(rows.buffers()[2])[int(offsets[0]) : int(offsets[-1])]


def _to_json(value: Any) -> str:
    """JSON text for a parameters/timings mapping; numpy scalars, datetimes and paths become plain values."""

    def default(obj: Any) -> Any:
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, datetime | date):
            return obj.isoformat()
        if isinstance(obj, Path):
            return str(obj)
        if isinstance(obj, set | frozenset):
            return sorted(obj, key=str)
        raise TypeError(f"cannot store {type(obj).__name__} {obj!r} as JSON; pass a str, number, list or dict")

    return json.dumps(value, default=default, sort_keys=True)


def _from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _require_columns(frame: pd.DataFrame, required: Sequence[str], what: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} frame lacks column(s) {missing}; it has {list(frame.columns)}. Provide columns {list(required)}."
        )


def _require_no_nulls(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    for name in columns:
        bad = frame[name].isna()
        if bad.any():
            rows = frame.loc[bad].head(5)
            raise ValueError(
                f"{what} frame: column {name!r} has {int(bad.sum())} missing value(s), e.g. rows "
                f"{rows.index.tolist()}:\n{rows.to_string()}\nDrop or fill these rows before writing."
            )


def _require_unique(frame: pd.DataFrame, key: Sequence[str], what: str) -> None:
    dup = frame.duplicated(subset=list(key), keep=False)
    if dup.any():
        rows = frame.loc[dup, list(key)].head(6)
        raise ValueError(
            f"{what} frame: {int(dup.sum())} rows share a key {list(key)}, e.g.:\n{rows.to_string()}\n"
            "Each key must appear once; deduplicate before writing."
        )


def _require_fits(frame: pd.DataFrame, target: Table, columns: Sequence[str], what: str) -> None:
    """Text values must fit their ``VARCHAR(n)`` column: PostgreSQL rejects longer ones, SQLite would keep
    them, so both refuse them here, before anything is written."""
    for name in columns:
        limit = target.c[name].type.length
        lengths = frame[name].astype(str).str.len()
        bad = lengths > limit
        if bad.any():
            shown = frame.loc[bad, name].astype(str).head(3).str.slice(0, 40).tolist()
            raise ValueError(
                f"{what} frame: column {name!r} has {int(bad.sum())} value(s) longer than {limit} characters "
                f"(column {target.name}.{name} is VARCHAR({limit})), e.g. rows {frame.index[bad][:3].tolist()} "
                f"starting {shown}. Shorten these ids or map them to shorter ones."
            )


def _int_array(series: pd.Series, name: str, what: str, *, minimum: int) -> np.ndarray:
    """Integral values of ``series`` as an int64 array (floats like 3.0 accepted), ``minimum`` up to what the
    INTEGER columns hold (2**31 - 1: a rank of 1e19 was stored as -2**63 on SQLite)."""
    values = pd.to_numeric(series, errors="coerce")
    bad = values.isna() | (values != np.floor(values)) | (values < minimum) | (values > MAX_INTEGER)
    if bad.any():
        shown = series[bad].head(5).tolist()
        raise ValueError(
            f"{what} frame: column {name!r} must hold integers from {minimum} to {MAX_INTEGER}; bad values {shown} "
            f"at rows {series.index[bad][:5].tolist()}."
        )
    return values.astype("int64").to_numpy()


def _frame(rows: Sequence[Sequence[Any]], dtypes: dict[str, str]) -> pd.DataFrame:
    """A DataFrame of ``rows`` with the given column dtypes (also when there are no rows).

    Built column by column so an ``object`` column keeps ``None`` (``from_records`` would turn an all-None
    column into float NaN).
    """
    values = list(zip(*rows, strict=True)) if rows else [()] * len(dtypes)
    return pd.DataFrame(
        {name: pd.Series(list(col), dtype=dtype) for (name, dtype), col in zip(dtypes.items(), values, strict=True)}
    )


RECOMMENDATION_DTYPES = {
    "as_of": "datetime64[us, UTC]",
    "model": "str",
    "user_id": "str",
    "rank": "int64",
    "item_id": "str",
    "score": "float64",
    "run_id": "str",
    "strategy": "str",
    "reason": "str",
}
#: Optional columns of a published frame; absent ones are stored as NULL.
RECOMMENDATION_OPTIONAL_COLUMNS = ("strategy", "reason")


class Store:
    """Reads and writes recforge's tables through one SQLAlchemy engine.

    ``url`` is any SQLAlchemy URL. For SQLite the parent folder is created and every connection uses WAL mode
    (readers don't block the writer), a busy timeout, and enforced foreign keys (as PostgreSQL does).
    """

    def __init__(self, url: str = DEFAULT_URL) -> None:
        self.url_masked: str = mask_url(url)
        parsed = make_url(url)
        self.is_sqlite: bool = parsed.get_backend_name() == "sqlite"
        database = sqlite_file(url)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine: Engine = create_engine(parsed)
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                f"the database driver for {self.url_masked} is not installed ({exc.name}); install it "
                f"(e.g. `pip install psycopg[binary]` and use 'postgresql+psycopg://...') or use a sqlite URL"
            ) from exc
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_on_connect)

    def __repr__(self) -> str:
        return f"Store({self.url_masked!r})"

    def dispose(self) -> None:
        """Close pooled connections (the store stays usable; new connections open on demand)."""
        self.engine.dispose()

    # -- schema -------------------------------------------------------------------------------------------

    def create_schema(self) -> None:
        """Create or upgrade the schema to the newest revision (Alembic); safe to call on every start.

        A new database gets every table and the view; one at an older revision is migrated, keeping its rows;
        one created by recforge before it used Alembic is recognised and stamped. All in one transaction
        (PostgreSQL rolls back DDL too). See :mod:`recforge.migrations`.
        """
        from recforge import migrations  # Alembic: imported only when needed (slow import)

        with self.engine.begin() as conn:
            if self.is_sqlite:
                # pysqlite runs DDL outside any transaction, so two processes creating the schema of a new file at
                # once (a nightly run and a backfill) both found it missing and one failed on "table ... already
                # exists". BEGIN IMMEDIATE takes SQLite's write lock first: the other waits (busy timeout), then
                # finds the schema at its revision. PostgreSQL serialises upgrades with an advisory lock.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            migrations.upgrade(conn, self.url_masked)
            versions = list(conn.execute(select(schema_version_table.c.version)).scalars())
            if versions != [SCHEMA_VERSION]:
                # Rolls back the transaction: a database marked by another recforge is left as it was.
                raise RuntimeError(
                    f"database {self.url_masked} has schema version(s) {versions} in table schema_version, "
                    f"but this recforge uses version {SCHEMA_VERSION} and has no migration for it. Use a new "
                    "database URL, or upgrade/downgrade recforge to the version that wrote this database."
                )

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at, e.g. ``"0001"`` (None before ``create_schema``)."""
        from recforge import migrations

        with self.engine.connect() as conn:
            revisions = migrations.current_revisions(conn)
        return ", ".join(revisions) or None

    # -- runs -----------------------------------------------------------------------------------------------

    def start_run(
        self,
        *,
        dataset: str,
        source: str,
        as_of: datetime,
        parameters: dict[str, Any],
        flow_run_id: str | None,
    ) -> str:
        """Record a new run with status ``running``; returns its ``run_id`` (a UUID string)."""
        run_id = str(uuid.uuid4())
        with self.engine.begin() as conn:
            conn.execute(
                insert(runs_table).values(
                    run_id=run_id,
                    flow_run_id=None if flow_run_id is None else str(flow_run_id),
                    dataset=dataset,
                    source=mask_source(source),
                    as_of=to_naive_utc(as_of),
                    parameters=_to_json(parameters),
                    status="running",
                    started_at=_now(),
                    host=host_name(),
                    process=process_token(),
                )
            )
        return run_id

    def close_abandoned_runs(self) -> list[str]:
        """Close as failed the ``running`` rows of this host whose process no longer exists; returns their ids.

        Such a row was left by a run killed without a chance to close it (SIGKILL, the out-of-memory killer, a
        power cut). Rows of other hosts, of live processes (concurrent runs, this process's own) and rows
        written before revision 0006 (no process recorded) are left alone.
        """
        host = host_name()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(runs_table.c.run_id, runs_table.c.process).where(
                    runs_table.c.status == "running",
                    runs_table.c.host == host,
                    runs_table.c.process.is_not(None),
                )
            ).all()
        errors = {
            run_id: (
                f"abandoned: its process (pid {token.partition(':')[0]} on {host}) ended without closing the run — "
                f"killed by SIGKILL or the out-of-memory killer, or the machine restarted; {PUBLISHED_ALL_OR_NOTHING}"
            )
            for run_id, token in rows
            if process_alive(token) is False
        }
        return self.fail_running_runs(errors)

    def running_runs_of_other_hosts(self) -> list[tuple[str, str, str]]:
        """``(run_id, flow_run_id, host)`` of the ``running`` rows started on other hosts by a Prefect flow run.

        Their processes cannot be checked from here; the orchestrator that ran them can (``tasks.publish``).
        """
        host = host_name()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(runs_table.c.run_id, runs_table.c.flow_run_id, runs_table.c.host).where(
                    runs_table.c.status == "running",
                    runs_table.c.host != host,
                    runs_table.c.flow_run_id.is_not(None),
                )
            ).all()
        return [(str(run_id), str(flow_run_id), str(other)) for run_id, flow_run_id, other in rows]

    def fail_running_runs(self, errors: Mapping[str, str]) -> list[str]:
        """Close each run id of ``errors`` as failed with its error text if it is still ``running``; returns those
        closed (the owner may have closed one in the meantime after all)."""
        closed = []
        for run_id, error in errors.items():
            with self.engine.begin() as conn:
                result = conn.execute(
                    update(runs_table)
                    .where(runs_table.c.run_id == run_id, runs_table.c.status == "running")
                    .values(status="failed", finished_at=_now(), error=error)
                )
            if result.rowcount:
                closed.append(run_id)
        return closed

    def finish_run(
        self,
        run_id: str,
        *,
        status: str,
        timings: dict[str, float],
        error: str | None = None,
        champion: str | None = None,
    ) -> None:
        """Close a run: final ``status``, stage timings in seconds, error text and champion model if any."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, got {status!r}")
        with self.engine.begin() as conn:
            result = conn.execute(
                update(runs_table)
                .where(runs_table.c.run_id == run_id)
                .values(
                    status=status,
                    finished_at=_now(),
                    timings=_to_json({str(k): float(v) for k, v in timings.items()}),
                    error=error,
                    champion=champion,
                )
            )
            if result.rowcount == 0:
                raise LookupError(self._unknown_run_message(run_id))

    def latest_runs(self, limit: int = 10, status: str | None = None, run_id_prefix: str | None = None) -> pd.DataFrame:
        """The ``limit`` most recently started runs, newest first; ``parameters``/``timings`` as dicts.

        ``status``: only runs with that status (one of :data:`RUN_STATUSES`); ``run_id_prefix``: only runs whose
        id starts with it (the first characters people copy from a run summary).
        """
        if status is not None and status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, got {status!r}")
        names = [c.name for c in runs_table.c]
        stmt = select(runs_table)
        if status is not None:
            stmt = stmt.where(runs_table.c.status == status)
        if run_id_prefix:
            # Run ids are UUIDs: hex digits and dashes, so the prefix needs no LIKE escaping beyond refusing others.
            if not all(ch in "0123456789abcdefABCDEF-" for ch in run_id_prefix):
                raise ValueError(f"{run_id_prefix!r} is not the start of a run id (hex digits and dashes)")
            stmt = stmt.where(runs_table.c.run_id.like(f"{run_id_prefix.lower()}%"))
        with self.engine.connect() as conn:
            rows = conn.execute(stmt.order_by(runs_table.c.started_at.desc()).limit(limit)).all()
        frame = _frame(
            rows,
            {
                **dict.fromkeys(names, "object"),
                "run_id": "str",
                "dataset": "str",
                "source": "str",
                "status": "str",
                "as_of": "datetime64[us, UTC]",
                "started_at": "datetime64[us, UTC]",
                "finished_at": "datetime64[us, UTC]",
            },
        )
        frame["parameters"] = [_from_json(v) for v in frame["parameters"]]
        frame["timings"] = [_from_json(v) for v in frame["timings"]]
        return frame

    def recent_training_seconds(self, dataset: str, models: Sequence[str], runs: int = 5) -> dict[str, float]:
        """Each model's training seconds in the newest of the last ``runs`` finished runs on ``dataset`` that timed it.

        From the ``timing`` metrics the flow stores: the evaluation's ``fit_seconds``, ``score_seconds`` and
        ``rating_fit_seconds``, and the publishing refit's ``refit_fit_seconds`` and ``refit_recommend_seconds``
        (runs before those were stored: the evaluation's fit counted twice; a warm-started deep model's refit costs
        a fraction of its evaluation). Models never timed on this data set are absent.
        """
        recent = (
            select(runs_table.c.run_id, runs_table.c.started_at)
            .where(runs_table.c.dataset == dataset, runs_table.c.status.in_(("completed", "partial")))
            .order_by(runs_table.c.started_at.desc())
            .limit(runs)
            .subquery()
        )
        stmt = (
            select(metrics_table.c.run_id, metrics_table.c.model, metrics_table.c.metric, metrics_table.c.value)
            .join(recent, recent.c.run_id == metrics_table.c.run_id)
            .where(
                metrics_table.c.split == "timing",
                metrics_table.c.model.in_(list(models)),
                metrics_table.c.metric.in_(TRAINING_TIMINGS),
            )
            .order_by(recent.c.started_at.desc())
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        newest_run: dict[str, str] = {}
        newest: dict[str, dict[str, float]] = {}
        for run_id, model, metric, value in rows:  # newest run first: a model's first row names its newest run
            if newest_run.setdefault(model, run_id) == run_id and value is not None:
                newest.setdefault(model, {})[metric] = float(value)
        return {
            model: t["fit_seconds"]
            + t.get("refit_fit_seconds", t["fit_seconds"])
            + t.get("score_seconds", 0.0)
            + t.get("rating_fit_seconds", 0.0)
            + t.get("refit_recommend_seconds", 0.0)
            for model, t in newest.items()
            if "fit_seconds" in t
        }

    def previous_champion(self, as_of: datetime, dataset: str) -> ChampionDecision | None:
        """The champion chosen on ``dataset`` for the latest ``as_of`` before this one, or None.

        A rerun of the same ``as_of`` compares with the date before, not with the decision it replaces; a champion
        of another data set in the same database (the synthetic quick start, say) is no bar: its metric values
        measure something else.
        """
        return self._latest_champion(champions_table.c.as_of < to_naive_utc(as_of), dataset)

    def champion_of(self, as_of: datetime, dataset: str) -> ChampionDecision | None:
        """The champion now standing for exactly ``as_of`` on ``dataset`` (what a rerun of that date would replace)."""
        return self._latest_champion(champions_table.c.as_of == to_naive_utc(as_of), dataset)

    def _latest_champion(self, when: ColumnElement[bool], dataset: str) -> ChampionDecision | None:
        """The champion of the latest ``as_of`` matching ``when`` among the runs on ``dataset``, or None."""
        champions = champions_table
        stmt = (
            select(champions.c.model, champions.c.metric, champions.c.value, champions.c.reason)
            .join(runs_table, runs_table.c.run_id == champions.c.run_id)
            .where(when, runs_table.c.dataset == dataset)
            .order_by(champions.c.as_of.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else ChampionDecision(row.model, row.metric, float(row.value), row.reason)

    # -- metrics and features -----------------------------------------------------------------------------

    def write_metrics(self, run_id: str, metrics: pd.DataFrame, *, conn: Connection | None = None) -> int:
        """Store evaluation results (columns model, metric, k, value, split); returns the rows written.

        ``k`` is the ranking cut-off, missing for rating metrics. Rows for the same run, model and split are
        replaced, so writing a run's metrics again never duplicates them.
        """
        what = "metrics"
        _require_columns(metrics, METRIC_COLUMNS, what)
        _require_no_nulls(metrics, ["model", "metric", "split"], what)
        has_k = metrics["k"].notna()
        k_values: list[int | None] = [None] * len(metrics)
        for position, value in zip(
            np.flatnonzero(has_k.to_numpy()),
            _int_array(metrics.loc[has_k, "k"], "k", what, minimum=1).tolist(),
            strict=True,
        ):
            k_values[position] = value
        keyed = metrics.assign(_k_key=[k or 0 for k in k_values])
        _require_unique(keyed, ["model", "metric", "_k_key", "split"], what)
        _require_fits(metrics, metrics_table, ["model", "metric", "split"], what)
        numbers = pd.to_numeric(metrics["value"], errors="coerce")
        text = numbers.isna() & metrics["value"].notna()
        if text.any():
            raise ValueError(
                f"{what} frame: column 'value' must hold numbers (or missing values, stored as NULL); bad rows:\n"
                f"{metrics.loc[text].head(5).to_string()}"
            )
        values = numbers.astype("float64").tolist()
        # NaN (e.g. a metric undefined for an empty split) is stored as NULL: SQLite cannot keep NaN.
        values = [None if math.isnan(v) else v for v in values]
        models = metrics["model"].astype(str).tolist()
        metric_names = metrics["metric"].astype(str).tolist()
        splits = metrics["split"].astype(str).tolist()
        with self._transaction(conn) as conn:
            self._require_run(conn, run_id)
            for model, split in sorted(set(zip(models, splits, strict=True))):
                conn.execute(
                    delete(metrics_table).where(
                        metrics_table.c.run_id == run_id,
                        metrics_table.c.model == model,
                        metrics_table.c.split == split,
                    )
                )
            return _bulk_insert(
                conn,
                metrics_table,
                {
                    "model": models,
                    "metric": metric_names,
                    "k": k_values,
                    "k_key": [k or 0 for k in k_values],
                    "value": values,
                    "split": splits,
                },
                {"run_id": run_id},
            )

    def metrics_for_run(self, run_id: str) -> pd.DataFrame:
        """A run's metrics (model, metric, k as nullable Int64, value, split), by model/split/metric/k."""
        cols = [metrics_table.c[name] for name in METRIC_COLUMNS]
        stmt = (
            select(*cols)
            .where(metrics_table.c.run_id == run_id)
            .order_by(metrics_table.c.model, metrics_table.c.split, metrics_table.c.metric, metrics_table.c.k_key)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return _frame(
            rows, {"model": "str", "metric": "str", "k": "Int64", "value": "float64", "split": "str"}
        ).reset_index(drop=True)

    def write_features(
        self,
        run_id: str,
        as_of: datetime,
        entity: str,
        features: pd.DataFrame,
        id_column: str,
        *,
        conn: Connection | None = None,
    ) -> int:
        """Store a wide per-entity feature table in long form; returns the rows written.

        ``features`` has one row per entity (``id_column``) and one numeric or boolean column per feature;
        missing values are not stored (absent row = unknown). Rows previously written for the same ``as_of`` and
        entity are replaced, by whichever run wrote them: the features of a date are those of its latest publish, as
        its recommendations are (a rerun or ``backfill --force`` kept both runs' rows side by side).
        """
        what = f"{entity} features"
        if entity not in ENTITIES:
            raise ValueError(f"entity must be one of {ENTITIES}, got {entity!r}")
        _require_columns(features, [id_column], what)
        _require_no_nulls(features, [id_column], what)
        _require_unique(features[[id_column]].astype(str), [id_column], what)
        feature_columns = [c for c in features.columns if c != id_column]
        _require_fits(features[[id_column]].set_axis(["entity_id"], axis=1), features_table, ["entity_id"], what)
        names = pd.DataFrame({"feature": [str(c) for c in feature_columns]})
        _require_fits(names, features_table, ["feature"], f"{what} (column names)")
        _require_unique(names, ["feature"], f"{what} (column names, as stored: text)")
        non_numeric = [
            c
            for c in feature_columns
            if not (pd.api.types.is_numeric_dtype(features[c]) or pd.api.types.is_bool_dtype(features[c]))
        ]
        if non_numeric:
            dtypes = {str(c): str(features[c].dtype) for c in non_numeric}
            raise ValueError(
                f"{what} frame: feature column(s) {dtypes} are not numeric; encode them as numbers "
                "(e.g. one-hot or category codes) or drop them before writing."
            )
        naive_as_of = to_naive_utc(as_of)
        ids = features[id_column].astype(str).to_numpy(dtype=object)
        with self._transaction(conn) as conn:
            # Always first, whatever the entity: every transaction takes its locks in the same order.
            self._lock_erasures(conn, exclusive=False)
            # Two runs of one date would each delete the rows the other has not committed, and both runs' rows
            # would stay (PostgreSQL; SQLite writes one transaction at a time).
            self._lock_key(conn, f"recforge.features/{naive_as_of.isoformat()}/{entity}")
            self._require_run(conn, run_id)
            conn.execute(
                delete(features_table).where(
                    # Through the runs of this as_of: the primary key's leading run_id serves the delete, where
                    # as_of alone would scan every date's features.
                    features_table.c.run_id.in_(select(runs_table.c.run_id).where(runs_table.c.as_of == naive_as_of)),
                    features_table.c.as_of == naive_as_of,
                    features_table.c.entity == entity,
                )
            )
            if entity == "user":
                erased = self._erased_among(conn, ids)
                if erased.any():
                    features, ids = features[~erased], ids[~erased]
            return _bulk_insert(
                conn,
                features_table,
                _long_features(ids, features, feature_columns),
                {"run_id": run_id, "as_of": naive_as_of, "entity": entity},
            )

    # -- recommendations --------------------------------------------------------------------------------

    def publish(
        self,
        run_id: str,
        as_of: datetime,
        recommendations: pd.DataFrame,
        champion: ChampionDecision | None,
        *,
        conn: Connection | None = None,
    ) -> int:
        """Replace ``as_of``'s recommendations of the given models and its champion; returns rows inserted.

        ``recommendations`` has columns model, user_id, rank (1-based), item_id, score. One transaction
        deletes that ``as_of``'s rows for these models, inserts the new ones and replaces the champion row
        (when ``champion`` is given; without one, a champion row naming one of these models is deleted, as its
        rows are): a rerun never duplicates; a failure leaves the previous rows in place. Rows of users
        forgotten meanwhile (table erasures) are left out.
        On PostgreSQL the rows go in by binary COPY; publishes of the same ``as_of`` and model take turns,
        others (other dates, other models) run side by side.
        """
        what = "recommendations"
        _require_columns(recommendations, RECOMMENDATION_COLUMNS, what)
        _require_no_nulls(recommendations, RECOMMENDATION_COLUMNS, what)
        _require_fits(recommendations, recommendations_table, ["model", "user_id", "item_id"], what)
        ranks = _int_array(recommendations["rank"], "rank", what, minimum=1)
        # As stored (text ids, integer ranks): user 7 and user "7" are one key.
        stored_key = recommendations[["model", "user_id"]].astype(str).assign(rank=ranks)
        _require_unique(stored_key, ["model", "user_id", "rank"], what)
        scores = pd.to_numeric(recommendations["score"], errors="coerce").astype("float64")
        if not np.isfinite(scores.to_numpy()).all():
            bad = recommendations.loc[~np.isfinite(scores.to_numpy())].head(5)
            raise ValueError(f"{what} frame: column 'score' must be finite numbers; bad rows:\n{bad.to_string()}")
        naive_as_of = to_naive_utc(as_of)
        models = recommendations["model"].astype(str)
        published_models = sorted(models.unique().tolist())
        # Columns stay arrays: the COPY path reads them without building Python objects per value.
        columns: dict[str, ColumnValues] = {
            "model": models,
            "user_id": recommendations["user_id"].astype(str),
            "rank": ranks,
            "item_id": recommendations["item_id"].astype(str),
            "score": scores.to_numpy(),
        }
        for name in RECOMMENDATION_OPTIONAL_COLUMNS:
            if name in recommendations.columns:
                columns[name] = [None if pd.isna(v) else str(v) for v in recommendations[name].tolist()]
        _require_fits(
            recommendations,
            recommendations_table,
            [c for c in RECOMMENDATION_OPTIONAL_COLUMNS if c in recommendations.columns and c != "reason"],
            what,
        )
        if published_models and self.engine.dialect.name == "postgresql":
            # Its own short transaction (see recforge.pg_partitions): not held while the rows are written.
            with self.engine.begin() as own:
                pg_partitions.ensure_date_partition(own, naive_as_of)
        with self._transaction(conn) as conn:
            # The date's champion row vouches for the rows its run published: when these replace them and no
            # champion comes with them (none passed the guard rails), it goes too, or the view would serve rows
            # nothing chose under the old decision. (Read before the locks: they are taken in one fixed order.)
            unvouched = champion is None and self._champion_model_at(conn, naive_as_of) in published_models
            self._lock_erasures(conn, exclusive=False)
            self._lock_publication(conn, naive_as_of, published_models, champion is not None or unvouched)
            self._require_run(conn, run_id)
            constants = {"as_of": naive_as_of, "run_id": run_id}
            postgresql = conn.dialect.name == "postgresql"
            if published_models and not postgresql:
                # Row-level deletes of this as_of and these models only: publishes of other dates or models
                # proceed side by side. First, so that SQLite's write lock is held when the erasures are read.
                conn.execute(
                    delete(recommendations_table).where(
                        recommendations_table.c.as_of == naive_as_of,
                        recommendations_table.c.model.in_(published_models),
                    )
                )
            erased = self._erased_among(conn, columns["user_id"])
            if erased.any():
                # A user forgotten while this run trained (it had loaded their events): none of their rows.
                kept = np.flatnonzero(~erased)
                columns = {name: _take(values, kept) for name, values in columns.items()}
                models = pd.Series(_take(models, kept))
            if postgresql:
                inserted = _publish_partitions(conn, naive_as_of, models, columns, constants)
            else:
                inserted = _bulk_insert(conn, recommendations_table, columns, constants)
            if published_models:
                self._record_publications(conn, run_id, naive_as_of, models)
            if champion is not None:
                self._replace_champion(conn, run_id, naive_as_of, champion)
            elif unvouched:
                conn.execute(
                    delete(champions_table).where(
                        champions_table.c.as_of == naive_as_of, champions_table.c.model.in_(published_models)
                    )
                )
        return inserted

    @staticmethod
    def _champion_model_at(conn: Connection, naive_as_of: datetime) -> str | None:
        """The model of ``as_of``'s champion row, if it has one."""
        return conn.execute(select(champions_table.c.model).where(champions_table.c.as_of == naive_as_of)).scalar()

    @staticmethod
    def _record_publications(conn: Connection, run_id: str, naive_as_of: datetime, models: pd.Series) -> None:
        """Replace the publications rows of ``as_of`` for the models just written (same transaction)."""
        counts = models.value_counts()
        pub = publications_table
        conn.execute(delete(pub).where(pub.c.as_of == naive_as_of, pub.c.model.in_(counts.index.tolist())))
        now = datetime.now(UTC)
        conn.execute(
            insert(pub),
            [
                {"as_of": naive_as_of, "model": str(m), "run_id": run_id, "row_count": int(n), "published_at": now}
                for m, n in counts.items()
            ],
        )

    def publish_run(
        self,
        run_id: str,
        as_of: datetime,
        metrics: pd.DataFrame,
        features: Sequence[tuple[str, pd.DataFrame, str]],
        recommendations: pd.DataFrame,
        champion: ChampionDecision | None,
    ) -> dict[str, int]:
        """A run's metrics, features (``(entity, frame, id_column)`` each) and recommendations in ONE transaction.

        Either everything is written or nothing is: a bad feature id or a lost connection halfway through
        leaves the database exactly as it was (no metrics of a run whose recommendations never landed).
        Returns rows written per table (``features_user``, ``features_item``, ...).
        """
        with self.engine.begin() as conn:
            written = {"model_metrics": self.write_metrics(run_id, metrics, conn=conn)}
            for entity, frame, id_column in features:
                written[f"features_{entity}"] = self.write_features(run_id, as_of, entity, frame, id_column, conn=conn)
            written["recommendations"] = self.publish(run_id, as_of, recommendations, champion, conn=conn)
        return written

    def publications(self) -> pd.DataFrame:
        """What was published: one row per ``as_of`` and model (columns as_of, model, champion), newest first."""
        pub = publications_table
        stmt = (
            select(pub.c.as_of, pub.c.model, (champions_table.c.model.is_not(None)).label("champion"))
            .outerjoin(
                champions_table, and_(champions_table.c.as_of == pub.c.as_of, champions_table.c.model == pub.c.model)
            )
            .order_by(pub.c.as_of.desc(), pub.c.model)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return pd.DataFrame(rows, columns=["as_of", "model", "champion"])

    def read_recommendations(
        self,
        user_id: str,
        *,
        model: str | None = None,
        as_of: datetime | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """A user's recommendations ordered by rank (empty frame when there are none).

        ``model`` None: the champion's rows — of the latest ``as_of`` with a champion (the
        ``champion_recommendations`` view), or of ``as_of``'s champion when given. ``as_of`` None with a
        model: the latest ``as_of`` published for that model. ``limit`` keeps the top ranks.
        """
        rec = recommendations_table
        if model is None and as_of is None:
            view = champion_recommendations
            stmt = select(*view.c).where(view.c.user_id == str(user_id)).order_by(view.c.rank)
        elif model is None:
            stmt = (
                select(*rec.c)
                .join(
                    champions_table,
                    and_(rec.c.as_of == champions_table.c.as_of, rec.c.model == champions_table.c.model),
                )
                .where(rec.c.user_id == str(user_id), champions_table.c.as_of == to_naive_utc(as_of))
                .order_by(rec.c.rank)
            )
        else:
            pub = publications_table
            when: Any = (
                select(func.max(pub.c.as_of)).where(pub.c.model == model).scalar_subquery()
                if as_of is None
                else to_naive_utc(as_of)
            )
            stmt = (
                select(*rec.c)
                .where(rec.c.user_id == str(user_id), rec.c.model == model, rec.c.as_of == when)
                .order_by(rec.c.rank)
            )
        if limit is not None:
            if limit < 1:
                raise ValueError(f"limit must be at least 1 (the number of top ranks to keep), got {limit}")
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return _frame(rows, RECOMMENDATION_DTYPES)

    def counts(self) -> dict[str, int]:
        """Rows per data table (runs, model_metrics, recommendations, features, champions)."""
        with self.engine.connect() as conn:
            return {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one()) for t in DATA_TABLES}

    # -- retention ------------------------------------------------------------------------------------------

    def prune(self, before: datetime, *, dry_run: bool = False) -> PruneResult:
        """Delete what was published for every ``as_of`` before ``before``: recommendations, their publications
        rows, the date's champion and its features. Run records and metrics stay (the history of runs).

        The date the champion view serves (the latest with a champion) is kept whatever its age, so readers never
        lose their recommendations to a prune. One short transaction per date, taking the locks a publish of that
        date takes: a publish in flight finishes first; on PostgreSQL the date's partition is dropped, which
        makes readers of any date wait for that transaction's commit (milliseconds). ``dry_run``: count only.
        """
        cutoff = to_naive_utc(before)
        pub, champions = publications_table, champions_table
        with self.engine.connect() as conn:
            found = set(conn.execute(select(pub.c.as_of).where(pub.c.as_of < cutoff).distinct()).scalars())
            found |= set(conn.execute(select(champions.c.as_of).where(champions.c.as_of < cutoff)).scalars())
            served = conn.execute(select(func.max(champions.c.as_of))).scalar()
        # Naive UTC, as the lock keys and partition names of a publish spell them.
        dates = sorted(to_naive_utc(d) for d in found)
        kept = to_naive_utc(served) if served is not None and to_naive_utc(served) in dates else None
        result = PruneResult(before=cutoff.replace(tzinfo=UTC), kept_served=kept and kept.replace(tzinfo=UTC))
        for naive_as_of in (d for d in dates if d != kept):
            # A dry run only reads: a plain connection, rolled back when closed.
            with self.engine.connect() if dry_run else self.engine.begin() as conn:
                result.add(naive_as_of.replace(tzinfo=UTC), self._prune_date(conn, naive_as_of, dry_run))
        return result

    def _prune_date(self, conn: Connection, naive_as_of: datetime, dry_run: bool) -> dict[str, int]:
        """Delete one date's published rows (see :meth:`prune`); returns rows per table."""
        rec, pub, champions, feats = recommendations_table, publications_table, champions_table, features_table
        if not dry_run:
            models = sorted(conn.execute(select(pub.c.model).where(pub.c.as_of == naive_as_of)).scalars())
            stamp = naive_as_of.isoformat()
            for entity in ENTITIES:
                self._lock_key(conn, f"recforge.features/{stamp}/{entity}")
            keys = [f"recforge.champions/{stamp}", pg_partitions.date_lock_key(naive_as_of)]
            keys += [f"recforge.recommendations/{stamp}/{model}" for model in models]
            for key in sorted(keys):
                self._lock_key(conn, key)
        date_rows = rec.c.as_of == naive_as_of
        deleted = {"recommendations": conn.execute(select(func.count()).select_from(rec).where(date_rows)).scalar_one()}
        date_features = and_(
            # Through the runs of this as_of: the primary key's leading run_id serves it (see write_features).
            feats.c.run_id.in_(select(runs_table.c.run_id).where(runs_table.c.as_of == naive_as_of)),
            feats.c.as_of == naive_as_of,
        )
        if dry_run:
            deleted["features"] = conn.execute(
                select(func.count()).select_from(feats).where(date_features)
            ).scalar_one()
            return deleted
        if conn.dialect.name == "postgresql":
            pg_partitions.drop_date_partition(conn, naive_as_of)
        else:
            conn.execute(delete(rec).where(date_rows))
        deleted["features"] = conn.execute(delete(feats).where(date_features)).rowcount
        conn.execute(delete(pub).where(pub.c.as_of == naive_as_of))
        conn.execute(delete(champions).where(champions.c.as_of == naive_as_of))
        return deleted

    # -- erasure --------------------------------------------------------------------------------------------

    def forget_user(self, user_id: str, note: str | None = None) -> dict[str, int]:
        """Delete a user's published rows (recommendations, features) and record the erasure; returns rows per table.

        One transaction. The ``erasures`` row makes every later run drop the user's events on ingest
        (:meth:`erased_users`), so no model trained after this contains them, and every later publish drop their
        rows (a run that loaded the events before the forget still publishes after it). Forgetting twice is harmless.
        """
        user = str(user_id)
        if len(user) > MAX_ID_CHARS:  # PostgreSQL failed on it with a raw StringDataRightTruncation
            raise ValueError(
                f"user id of {len(user)} characters: ids are at most {MAX_ID_CHARS} (ingest refuses longer ones), so "
                "no published row or run can hold it; check the id (with --pseudonymised, the id the pseudonym is of)"
            )
        self.create_schema()
        with self.engine.begin() as conn:
            # Waits for publishes in flight (their rows are then visible to the delete); later ones see the erasure.
            self._lock_erasures(conn, exclusive=True)
            deleted = {
                name: conn.execute(delete(table).where(rows)).rowcount
                for name, (table, rows) in _user_rows(user).items()
            }
            previous = conn.execute(
                select(erasures_table.c.rows_deleted).where(erasures_table.c.user_id == user)
            ).first()
            if previous is not None:
                earlier = _from_json(previous[0]) or {}
                total = {name: deleted[name] + int(earlier.get(name, 0)) for name in deleted}
                # The first request's time stays (the audit fact); a note replaces the earlier one only when given.
                kept = {"note": note} if note is not None else {}
                conn.execute(
                    erasures_table.update()
                    .where(erasures_table.c.user_id == user)
                    .values(rows_deleted=_to_json(total), **kept)
                )
            else:
                conn.execute(
                    insert(erasures_table).values(
                        user_id=user, requested_at=_now(), rows_deleted=_to_json(deleted), note=note
                    )
                )
        return deleted

    def user_row_counts(self, user_id: str) -> dict[str, int]:
        """How many published rows hold ``user_id``, per table (what :meth:`forget_user` would delete); zeros when
        the tables do not exist yet."""
        user = str(user_id)
        with self.engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            if not {recommendations_table.name, features_table.name} <= tables:
                return {"recommendations": 0, "features": 0}
            return {
                name: conn.execute(select(func.count()).select_from(table).where(rows)).scalar_one()
                for name, (table, rows) in _user_rows(user).items()
            }

    def erased_users(self) -> set[str]:
        """Users recorded as forgotten (empty when the database or the table does not exist yet)."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table(erasures_table.name):
                return set()
            return {row[0] for row in conn.execute(select(erasures_table.c.user_id))}

    # -- helpers ------------------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, conn: Connection | None) -> Iterator[Connection]:
        """The caller's connection (its transaction commits or rolls back everything), or a new transaction."""
        if conn is not None:
            yield conn
            return
        with self.engine.begin() as new:
            yield new

    def _replace_champion(
        self, conn: Connection, run_id: str, naive_as_of: datetime, champion: ChampionDecision
    ) -> None:
        rec = recommendations_table
        # One row is enough to know (counting them all took seconds at millions of rows).
        served = conn.execute(
            select(rec.c.rank).where(rec.c.as_of == naive_as_of, rec.c.model == champion.model).limit(1)
        ).first()
        if served is None:
            # Raising here rolls back the whole publish: a champion without rows would empty the view.
            raise ValueError(
                f"champion model {champion.model!r} has no recommendations for as_of {naive_as_of} UTC in "
                f"{self.url_masked}; include its rows in the published frame or choose a published model."
            )
        conn.execute(delete(champions_table).where(champions_table.c.as_of == naive_as_of))
        conn.execute(
            insert(champions_table).values(
                as_of=naive_as_of,
                model=champion.model,
                metric=champion.metric,
                value=float(champion.value),
                run_id=run_id,
                decided_at=_now(),
                reason=champion.reason,
            )
        )

    def _require_run(self, conn: Connection, run_id: str) -> None:
        """Fail unless the run exists; on PostgreSQL also key-share-lock its row until the transaction ends,
        so it cannot be deleted while rows that reference it are written."""
        found = conn.execute(
            select(runs_table.c.run_id).where(runs_table.c.run_id == run_id).with_for_update(read=True, key_share=True)
        ).first()
        if found is None:
            raise LookupError(self._unknown_run_message(run_id))

    def other_datasets_at(self, run_id: str, as_of: datetime) -> list[tuple[str, str]]:
        """(data set, run id) of publications at ``as_of`` by runs of another data set than ``run_id``'s.

        Rows, features and the champion are keyed by ``as_of`` (and model), not by data set: a MovieLens run at a
        shop run's ``as_of`` replaces the shop's rows of the same models and the date's champion. The publish task
        names them in a warning. Not refused: a data set named after a dated export file (events-2026-12-07.csv)
        changes name from one export to the next, and a backfill from today's export must still replace a date.
        """
        runs, pub = runs_table, publications_table
        with self.engine.connect() as conn:
            dataset = conn.execute(select(runs.c.dataset).where(runs.c.run_id == run_id)).scalar_one_or_none()
            rows = conn.execute(
                select(runs.c.dataset, pub.c.run_id)
                .select_from(pub.join(runs, runs.c.run_id == pub.c.run_id))
                .where(pub.c.as_of == to_naive_utc(as_of), runs.c.dataset != dataset)
                .distinct()
            ).all()
        return [(str(name), str(other)) for name, other in rows]

    def _lock_publication(
        self, conn: Connection, naive_as_of: datetime, models: Sequence[str], with_champion: bool
    ) -> None:
        """PostgreSQL: serialise publishes of the same (as_of, model), and of the same as_of's champion.

        Two transactions replacing the same rows would otherwise both delete the old rows, then collide on
        the primary key of the new ones. Transaction-scoped advisory locks, taken in one global (sorted)
        order so two publishes never wait for each other in a cycle; other dates and models are not
        blocked. SQLite needs none: it runs one write transaction at a time.
        """
        if conn.dialect.name != "postgresql":
            return
        stamp = naive_as_of.isoformat()
        keys = [f"recforge.recommendations/{stamp}/{model}" for model in models]
        if with_champion:
            keys.append(f"recforge.champions/{stamp}")
        for key in sorted(keys):
            Store._lock_key(conn, key)

    @staticmethod
    def _lock_key(conn: Connection, key: str) -> None:
        """PostgreSQL: an exclusive transaction-scoped advisory lock named by ``key``; nothing on SQLite.

        Every transaction takes its locks in one order (the erasures lock, a date's features, then its champion
        and models in sorted key order), so no two transactions wait for each other in a cycle.
        """
        if conn.dialect.name == "postgresql":
            # A 64-bit hash of the key text; a collision only makes two writers wait for each other.
            conn.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))

    @staticmethod
    def _lock_erasures(conn: Connection, *, exclusive: bool) -> None:
        """PostgreSQL: ``forget_user`` (exclusive) and writes of user rows (shared) take turns.

        A publish that began before a forget would otherwise commit the user's rows after the forget's delete
        (which cannot see them uncommitted), and they would stay. Shared: publishes do not wait for each other.
        Taken before the publication locks, in every transaction, so no two wait in a cycle. SQLite needs none:
        a write transaction holds the database's write lock, so a forget waits for it and then sees its rows.
        """
        if conn.dialect.name != "postgresql":
            return
        lock = func.pg_advisory_xact_lock if exclusive else func.pg_advisory_xact_lock_shared
        conn.execute(select(lock(func.hashtextextended(ERASURES_LOCK, 0))))

    @staticmethod
    def _erased_among(conn: Connection, user_ids: ColumnValues) -> np.ndarray:
        """Which of ``user_ids`` (as stored: text) were forgotten (table erasures), as a boolean mask."""
        erased = list(conn.execute(select(erasures_table.c.user_id)).scalars())
        if not erased:
            return np.zeros(len(user_ids), dtype=bool)
        return np.asarray(pd.Series(user_ids, dtype=object).isin(erased), dtype=bool)

    def _unknown_run_message(self, run_id: str) -> str:
        return (
            f"run {run_id!r} is not in table runs of {self.url_masked}; call Store.start_run first and use "
            "the run_id it returns."
        )


def _publish_partitions(
    conn: Connection,
    naive_as_of: datetime,
    models: pd.Series,
    columns: Mapping[str, ColumnValues],
    constants: Mapping[str, Any],
) -> int:
    """PostgreSQL: each model's rows into a table of its own, keyed in one sorted build, then swapped in as the
    (as_of, model) partition of ``recommendations`` (:mod:`recforge.pg_partitions`); returns rows written."""
    codes, uniques = pd.factorize(models, sort=True)
    names = [str(m) for m in uniques]
    inserted = 0
    for code, model in enumerate(names):
        rows = None if len(names) == 1 else np.flatnonzero(codes == code)
        model_columns = {name: _take(values, rows) for name, values in columns.items()}

        def fill(name: str, model_columns: Mapping[str, ColumnValues] = model_columns) -> int:
            # The same columns and types, under the new table's name.
            target = recommendations_table.to_metadata(MetaData(), name=name)
            return _bulk_insert(conn, target, model_columns, constants)

        inserted += pg_partitions.build_model_partition(conn, naive_as_of, model, fill)[1]
    pg_partitions.swap_in(conn, naive_as_of, names)
    return inserted


def _take(values: ColumnValues, rows: np.ndarray | None) -> ColumnValues:
    """The values at positions ``rows`` (all of them when None) of one bulk-write column."""
    if rows is None:
        return values
    if isinstance(values, pd.Series):
        return values.iloc[rows].reset_index(drop=True)
    if isinstance(values, np.ndarray):
        return values[rows]
    return [values[i] for i in rows.tolist()]


def _long_features(ids: np.ndarray, frame: pd.DataFrame, feature_columns: Sequence[Any]) -> dict[str, list[Any]]:
    """Columns entity_id, feature, value: one row per non-missing cell of the wide feature frame."""
    values = frame[list(feature_columns)].astype("float64").to_numpy()
    row, col = np.nonzero(~np.isnan(values))
    names = np.array([str(c) for c in feature_columns], dtype=object)
    return {
        "entity_id": ids[row].tolist(),
        "feature": names[col].tolist(),
        "value": values[row, col].tolist(),
    }


def _now() -> datetime:
    return datetime.now(UTC)


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    """Per-connection SQLite settings: WAL (readers don't block the writer), busy timeout, foreign keys on."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        # Wait up to 30 s for another writer (e.g. a parallel task) instead of failing with "database is locked".
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()
