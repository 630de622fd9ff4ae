"""PostgreSQL: ``recommendations`` as one partition per published (as_of, model), built aside and swapped in.

Why: a nightly publish writes millions of rows. COPYed into the indexed table, PostgreSQL 15 spent 3.3–3.8 µs
of CPU per row (heap, primary-key B-tree insert per row, WAL); COPYed into a new table without an index and
then indexed in one sorted build, 1.8–1.9 µs (docs/benchmarks/publish.md). A publish therefore builds each
model's rows in a table of its own and swaps it in at the end, in the same transaction: readers see the old
rows or the new ones, never a mix, and a failure leaves nothing behind (PostgreSQL's DDL is transactional).

Layout (revision 0005; SQLite keeps one plain table)::

    recommendations                                  PARTITION BY LIST (as_of); key (as_of, model, user_id, rank)
      recommendations_<as_of digits>                 one per as_of, PARTITION BY LIST (model)
        recommendations_<as_of digits>_<model hash>  one per (as_of, model): the rows

``<as_of digits>`` are the naive UTC ``as_of`` as ``YYYYMMDDhhmmssffffff``; ``<model hash>`` the first 16 hex
digits of the SHA-256 of the model name (names may be 200 characters of anything; identifiers stop at 63).

Locks, in a publish: a new as_of's partition is created and attached to ``recommendations`` first, in a short
transaction of its own (under a per-as_of advisory lock), so publishes of other dates never wait for this one.
Building the model's table takes no lock anyone else wants. The swap at the end drops the replaced partition
(ACCESS EXCLUSIVE on that as_of's partition: readers of that as_of wait until the commit) and attaches the new
one (SHARE UPDATE EXCLUSIVE on the as_of's partition: readers go on). Needs PostgreSQL 12 or newer (ATTACH
PARTITION without blocking readers).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import Connection, func, select, text

PARENT = "recommendations"
KEY_COLUMNS = ("as_of", "model", "user_id", "rank")
# Names this module gives: a date partition, a model's partition, and the latter while it is being built.
PARTITION_NAME = re.compile(rf"^{PARENT}_\d{{20}}(_[0-9a-f]{{16}}(_new)?)?$")
# What the CHECK constraint on every model partition is called (per table; proves the partition bound, so
# ATTACH PARTITION skips its validation scan under the parent's lock).
BOUND_CHECK = "partition_bound"


def is_partition_name(name: str) -> bool:
    """Whether ``name`` is a partition of ``recommendations`` made by recforge (for schema comparisons)."""
    return PARTITION_NAME.match(name) is not None


def date_partition_name(naive_as_of: datetime) -> str:
    return f"{PARENT}_{naive_as_of:%Y%m%d%H%M%S%f}"


def model_partition_name(naive_as_of: datetime, model: str) -> str:
    digest = hashlib.sha256(model.encode("utf-8")).hexdigest()[:16]
    return f"{date_partition_name(naive_as_of)}_{digest}"


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _text_literal(value: str) -> str:
    """``value`` as a PostgreSQL escape-string literal (model names may hold quotes, backslashes or SQL).

    ``E'...'`` reads backslashes the same whatever ``standard_conforming_strings`` is; statements go to the
    driver without parameters, so '%' needs no doubling.
    """
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _timestamp_literal(naive_as_of: datetime) -> str:
    # isoformat of a datetime holds only digits, '-', ':', '.' and the space: nothing to escape.
    return f"'{naive_as_of.isoformat(sep=' ')}'"


def execute_ddl(conn: Connection, statement: str) -> None:
    # No parameters at all: the driver must not read '%' in a model name literal as a placeholder.
    conn.exec_driver_sql(statement, execution_options={"no_parameters": True})


def _exists(conn: Connection, name: str) -> bool:
    return conn.execute(select(func.to_regclass(_quote(conn, name)))).scalar() is not None


def _add_key(conn: Connection, table_name: str, index_name: str) -> None:
    columns = ", ".join(KEY_COLUMNS)
    execute_ddl(
        conn,
        f"ALTER TABLE {_quote(conn, table_name)} ADD CONSTRAINT {_quote(conn, index_name)} PRIMARY KEY ({columns})",
    )


def create_date_partition(conn: Connection, naive_as_of: datetime) -> str:
    """A new, unattached, empty partition for ``as_of`` (partitioned by model, keyed); returns its name."""
    name = date_partition_name(naive_as_of)
    execute_ddl(conn, f"CREATE TABLE {_quote(conn, name)} (LIKE {PARENT}) PARTITION BY LIST (model)")
    _add_key(conn, name, f"{name}_pk")
    return name


def attach_date_partition(conn: Connection, naive_as_of: datetime) -> None:
    name = date_partition_name(naive_as_of)
    execute_ddl(
        conn,
        f"ALTER TABLE {PARENT} ATTACH PARTITION {_quote(conn, name)} FOR VALUES IN ({_timestamp_literal(naive_as_of)})",
    )


def build_model_partition(
    conn: Connection, naive_as_of: datetime, model: str, fill: Callable[[str], int]
) -> tuple[str, int]:
    """Create the stand-alone table ``<partition>_new``, let ``fill(name)`` write its rows, then build its
    primary key in one sorted pass and prove the partition bound with a CHECK constraint.

    Returns the table's name and ``fill``'s row count. Nothing else sees the table until :func:`swap_in`.
    """
    name = f"{model_partition_name(naive_as_of, model)}_new"
    execute_ddl(conn, f"CREATE TABLE {_quote(conn, name)} (LIKE {PARENT})")
    rows = fill(name)
    _add_key(conn, name, f"{name}_pk")
    bound = f"as_of = {_timestamp_literal(naive_as_of)} AND model = {_text_literal(model)}"
    execute_ddl(conn, f"ALTER TABLE {_quote(conn, name)} ADD CONSTRAINT {BOUND_CHECK} CHECK ({bound})")
    return name, rows


def ensure_date_partition(conn: Connection, naive_as_of: datetime) -> None:
    """Create and attach the partition of ``as_of`` unless it exists.

    A publish calls this in a short transaction of its own before it starts: attaching to ``recommendations``
    takes a lock that publishes of other new dates also need, so it must not be held while rows are written.
    An empty partition left by a publish that failed afterwards is harmless (and reused by the next).
    """
    # Two publishes of one new as_of (other models) would both create it: one at a time.
    conn.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(date_lock_key(naive_as_of), 0))))
    if not _exists(conn, date_partition_name(naive_as_of)):
        create_date_partition(conn, naive_as_of)
        attach_date_partition(conn, naive_as_of)


def date_lock_key(naive_as_of: datetime) -> str:
    """The advisory lock key under which ``as_of``'s partition is created or dropped."""
    return f"recforge.{PARENT}/{naive_as_of.isoformat()}"


def drop_date_partition(conn: Connection, naive_as_of: datetime) -> None:
    """Drop ``as_of``'s partition with every model's rows in it (``Store.prune``), if it exists.

    Takes an ACCESS EXCLUSIVE lock on ``recommendations`` until the transaction ends: readers of every date wait
    for the commit (keep the transaction short). The caller holds :func:`date_lock_key`'s lock.
    """
    execute_ddl(conn, f"DROP TABLE IF EXISTS {_quote(conn, date_partition_name(naive_as_of))}")


def swap_in(conn: Connection, naive_as_of: datetime, models: Sequence[str]) -> None:
    """Replace the partitions of (``as_of``, each model) by the tables :func:`build_model_partition` made.

    The partition a model had for that ``as_of`` (a republish) is dropped. ``as_of``'s own partition must exist
    (:func:`ensure_date_partition`). Call in the transaction that built the tables, last.
    """
    date_name = date_partition_name(naive_as_of)
    for model in models:
        name = model_partition_name(naive_as_of, model)
        if _exists(conn, name):
            _require_partition_of(conn, name, model)
            execute_ddl(conn, f"DROP TABLE {_quote(conn, name)}")
        execute_ddl(conn, f"ALTER TABLE {_quote(conn, name + '_new')} RENAME TO {_quote(conn, name)}")
        execute_ddl(conn, f"ALTER INDEX {_quote(conn, name + '_new_pk')} RENAME TO {_quote(conn, name + '_pk')}")
        execute_ddl(
            conn,
            f"ALTER TABLE {_quote(conn, date_name)} ATTACH PARTITION {_quote(conn, name)} "
            f"FOR VALUES IN ({_text_literal(model)})",
        )


def _require_partition_of(conn: Connection, name: str, model: str) -> None:
    """Refuse to drop a partition that holds another model's rows (two names with one 64-bit hash)."""
    found = conn.execute(text(f"SELECT model FROM {_quote(conn, name)} LIMIT 1")).scalar()
    if found is not None and found != model:
        raise RuntimeError(
            f"partition {name} holds rows of model {found!r}, not {model!r}: their names share a hash prefix. "
            "Publish one of them under another model name."
        )
