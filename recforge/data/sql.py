"""Interactions (and optional user/item tables) from a SQL database through SQLAlchemy 2.

A table is named with ``table=``: it is reflected (``sqlalchemy.Table(..., autoload_with=engine)``) and read
with a generated ``SELECT``, so the name is never pasted into SQL text. Alternatively ``query=`` runs
user-supplied SQL text *exactly as given*: it is the caller's own query against the caller's own database,
so only pass SQL you trust, and prefer a read-only database user. Everything runs on one connection that is
closed without a commit, so a query's writes are rolled back (DDL on some databases is not transactional).

Column mapping, id/rating/timestamp conversion and error messages are shared with :mod:`recforge.data.files`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url

from recforge.data.contract import ITEM, USER, DataError, Dataset
from recforge.data.files import (
    SourceUnavailableError,
    check_column_mapping,
    standardize_entities,
    standardize_interactions,
)

# user:password@ in a URL that SQLAlchemy cannot parse (then we still must not print the password).
_USERINFO = re.compile(r"(://[^:/@\s]*):[^@/\s]*@")


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe for logs and run records)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):  # ValueError: e.g. a port that is not a number
        return _USERINFO.sub(r"\1:***@", url)


def load_sql(
    url: str,
    table: str | None = None,
    query: str | None = None,
    columns: dict[str, str] | None = None,
    users_table: str | None = None,
    items_table: str | None = None,
    schema: str | None = None,
    timestamp_unit: str = "s",
) -> Dataset:
    """Load interactions from a database table or query, plus optional users/items tables.

    Args:
        url: SQLAlchemy database URL, e.g. ``postgresql+psycopg://user:pw@host/db`` or ``sqlite:///x.db``.
        table: interactions table name (reflected, never formatted into SQL). Exactly one of table/query.
        query: SQL text returning the interactions, run as is (see the module docstring).
        columns: contract name → column name mapping (as in :func:`recforge.data.files.load_files`).
        users_table: optional users table name (reflected).
        items_table: optional items table name (reflected).
        schema: database schema of the named tables (None: the default schema).
        timestamp_unit: unit of numeric epoch timestamps; datetime columns are used as they are.

    Raises:
        DataError: not exactly one of table/query, unknown table (the message lists the available ones),
            a failing connection or query, or columns that do not satisfy the contract.
    """
    if (table is None) == (query is None):
        raise DataError("give exactly one of table (a table name) or query (SQL text) for the SQL source")
    mapping = check_column_mapping(columns)
    masked = mask_url(url)
    _require_sqlite_file(url, masked)
    try:
        engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, ValueError, ImportError) as exc:
        raise DataError(f"cannot use database URL {masked}: {_scrub(str(exc), url)}") from exc
    try:
        try:
            connection = engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            # Unreachable server, refused login, ...: possibly transient, so retryable as an OSError.
            raise SourceUnavailableError(f"cannot connect to {masked}: {_scrub(str(exc), url)}") from exc
        # One connection for everything; it is closed without commit, so a query's side effects roll back.
        with connection:
            if table is not None:
                what = f"table {_qualified(table, schema)} at {masked}"
                raw = _read_table(connection, table, schema, url)
            else:
                what = f"query at {masked}"
                raw = _run(connection, sa.text(query or ""), what, url)
            interactions = standardize_interactions(raw, mapping, what, timestamp_unit)
            extra: dict[str, pd.DataFrame | None] = {"users": None, "items": None}
            for key, name, id_column in (("users", users_table, USER), ("items", items_table, ITEM)):
                if name is not None:
                    frame = _read_table(connection, name, schema, url)
                    where = f"table {_qualified(name, schema)} at {masked}"
                    extra[key] = standardize_entities(frame, id_column, mapping, where)
    finally:
        engine.dispose()
    return Dataset(
        name=table if table is not None else "sql-query",
        interactions=interactions,
        users=extra["users"],
        items=extra["items"],
        source=f"{masked} ({'table ' + _qualified(table, schema) if table is not None else 'query'})",
        rating_range=None,
        metadata={"url": masked, **({"table": table} if table is not None else {"query": query or ""})},
    )


def _read_table(connection: Connection, name: str, schema: str | None, url: str) -> pd.DataFrame:
    """All rows of a reflected table; an unknown name is a DataError listing the tables that exist."""
    masked = mask_url(url)
    try:
        reflected = sa.Table(name, sa.MetaData(), autoload_with=connection, schema=schema)
    except sa.exc.NoSuchTableError:
        try:
            inspector = sa.inspect(connection)
            available = sorted(inspector.get_table_names(schema=schema) + inspector.get_view_names(schema=schema))
        except sa.exc.SQLAlchemyError:
            available = []
        raise DataError(
            f"no table {_qualified(name, schema)} at {masked}; available tables and views: "
            f"{available or '(none)'}; check the name (and schema)"
        ) from None
    except sa.exc.SQLAlchemyError as exc:
        raise DataError(
            f"cannot reflect table {_qualified(name, schema)} at {masked}: {_scrub(str(exc), url)}"
        ) from exc
    return _run(connection, sa.select(reflected), f"table {_qualified(name, schema)} at {masked}", url)


def _run(connection: Connection, statement: sa.Executable, what: str, url: str) -> pd.DataFrame:
    try:
        result = connection.execute(statement)
        if not result.returns_rows:
            raise DataError(f"the {what} does not return rows; give a SELECT statement")
        names = list(result.keys())
        rows = result.fetchall()
    except sa.exc.SQLAlchemyError as exc:
        connection.rollback()  # leave the connection usable for the next table
        raise DataError(f"reading the {what} failed: {_scrub(str(exc), url)}") from exc
    return _frame(rows, names)


def _frame(rows: Sequence[Sequence[object]], names: list[str]) -> pd.DataFrame:
    """Rows as a DataFrame, keeping integer columns exact even when they contain NULLs.

    pandas would turn an integer column with NULLs into float64, which changes 64-bit ids (2**62 + 1
    becomes 4.611686018427388e18); such columns become nullable Int64 instead (or stay Python ints).
    """
    frame = pd.DataFrame([tuple(row) for row in rows], columns=names, dtype=object)
    for position in range(frame.shape[1]):
        column = frame.iloc[:, position]
        present = column.dropna()
        if len(present) and present.map(lambda v: isinstance(v, int) and not isinstance(v, bool)).all():
            # Beyond 64 bits the conversion fails: the Python ints stay, and ids_to_text converts them exactly.
            with contextlib.suppress(OverflowError, TypeError, ValueError):
                frame.isetitem(position, pd.Series(pd.array(column.tolist(), dtype="Int64"), index=frame.index))
        else:
            frame.isetitem(position, column.infer_objects())
    return frame


def _scrub(message: str, url: str) -> str:
    """Remove the URL's password from a driver message, in case the driver echoed it."""
    try:
        password = make_url(url).password
    except (sa.exc.ArgumentError, ValueError):
        return message
    return message.replace(str(password), "***") if password else message


def _require_sqlite_file(url: str, masked: str) -> None:
    """A SQLite source must exist: connecting to a missing file would create an empty database there."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return  # create_engine reports it
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return
    if not Path(database).is_file():
        # Like an unreachable server (retryable: a network mount may be late), but never created empty.
        raise SourceUnavailableError(
            f"cannot connect to {masked}: no SQLite database file at {Path(database).resolve()}; check the path"
        )


def _qualified(name: str | None, schema: str | None) -> str:
    return f"{schema}.{name}" if schema else str(name)
