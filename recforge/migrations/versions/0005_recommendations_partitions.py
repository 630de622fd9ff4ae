"""PostgreSQL: ``recommendations`` partitioned by as_of, then by model; each publish swaps in its partitions.

A publish COPYed its rows into the one indexed table: PostgreSQL 15 spent 3.3–3.8 µs of CPU per row (heap,
a primary-key B-tree insert per row, WAL). It now fills a new table per (as_of, model) without an index, builds
the key in one sorted pass and attaches the table as that pair's partition: 1.8–1.9 µs per row
(docs/benchmarks/publish.md). Layout and locks: :mod:`recforge.pg_partitions`.

Upgrade: the table is renamed aside, the partitioned table created, every stored (as_of, model) moved into
its partition by the same code a publish uses, the old table dropped. Downgrade: back into one plain table.
Both take time proportional to the rows, once. SQLite: nothing changes (it has no partitions).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

from recforge import pg_partitions
from recforge.migrations.views import CHAMPION_VIEW, champion_view_v2
from recforge.pg_partitions import execute_ddl
from recforge.store import DropView

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

TABLE = "recommendations"
ASIDE = "recommendations_unpartitioned"
KEY = "as_of, model, user_id, rank"


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    op.execute(DropView(CHAMPION_VIEW))
    execute_ddl(conn, f"ALTER TABLE {TABLE} RENAME TO {ASIDE}")
    execute_ddl(conn, f"ALTER TABLE {ASIDE} RENAME CONSTRAINT {TABLE}_pkey TO {ASIDE}_pkey")
    execute_ddl(conn, f"CREATE TABLE {TABLE} (LIKE {ASIDE}) PARTITION BY LIST (as_of)")
    execute_ddl(conn, f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY ({KEY})")
    pairs = conn.exec_driver_sql(f"SELECT DISTINCT as_of, model FROM {ASIDE} ORDER BY as_of, model").all()
    by_date: dict[object, list[str]] = {}
    for as_of, model in pairs:
        by_date.setdefault(as_of, []).append(model)
    for as_of, models in by_date.items():
        pg_partitions.ensure_date_partition(conn, as_of)
        for model in models:

            def fill(name: str, as_of: object = as_of, model: str = model) -> int:
                moved = conn.exec_driver_sql(
                    f"INSERT INTO {conn.dialect.identifier_preparer.quote(name)} "
                    f"SELECT * FROM {ASIDE} WHERE as_of = %(as_of)s AND model = %(model)s",
                    {"as_of": as_of, "model": model},
                )
                return int(moved.rowcount)

            pg_partitions.build_model_partition(conn, as_of, model, fill)
        pg_partitions.swap_in(conn, as_of, models)
    execute_ddl(conn, f"DROP TABLE {ASIDE}")
    op.execute(champion_view_v2())


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    op.execute(DropView(CHAMPION_VIEW))
    execute_ddl(conn, f"CREATE TABLE {ASIDE} (LIKE {TABLE})")
    execute_ddl(conn, f"INSERT INTO {ASIDE} SELECT * FROM {TABLE}")
    execute_ddl(conn, f"DROP TABLE {TABLE}")  # and every partition with it
    execute_ddl(conn, f"ALTER TABLE {ASIDE} RENAME TO {TABLE}")
    execute_ddl(conn, f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY ({KEY})")
    op.execute(champion_view_v2())
