"""recommendations: drop the per-row foreign key to runs and the redundant index on user_id, for bulk loads.

A nightly publish writes millions of rows. On PostgreSQL 15 (docs/benchmarks/publish.md) the server spent
about 9 us of CPU per COPYed row with them and 3.5 us without. The foreign key
``recommendations.run_id -> runs`` is checked by a trigger query per inserted row, although every row of a
publish references the same run. ``Store.publish`` checks that run once and holds a ``FOR KEY SHARE`` lock
on its row until it commits, which is what the per-row check did (the run cannot vanish while its rows are
written). Given up: SQL written by hand outside recforge can insert rows naming a missing run, or delete a
run whose rows remain.

``ix_recommendations_user_id`` served no query recforge makes: reads give ``as_of``, ``model`` and the user,
which the primary key (as_of, model, user_id, rank) serves.

SQLite cannot drop a foreign key in place: the table is rebuilt (copy and rename), once, in time
proportional to its rows. The view is dropped around it (SQLite checks views on a rename).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

from recforge.migrations.views import CHAMPION_VIEW, champion_view_v1
from recforge.store import DropView

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

# PostgreSQL's name for the unnamed key that revision 0001 (and create_all before it) made.
PG_FOREIGN_KEY = "recommendations_run_id_fkey"
# SQLite reflects the key without a name; batch mode names it by this convention so it can be dropped.
SQLITE_CONVENTION = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
SQLITE_FOREIGN_KEY = "fk_recommendations_run_id_runs"


def upgrade() -> None:
    op.drop_index("ix_recommendations_user_id", table_name="recommendations")
    if op.get_bind().dialect.name == "sqlite":
        op.execute(DropView(CHAMPION_VIEW))
        with op.batch_alter_table("recommendations", naming_convention=SQLITE_CONVENTION) as batch:
            batch.drop_constraint(SQLITE_FOREIGN_KEY, type_="foreignkey")
        op.execute(champion_view_v1())
    else:
        op.drop_constraint(PG_FOREIGN_KEY, "recommendations", type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(DropView(CHAMPION_VIEW))
        with op.batch_alter_table("recommendations") as batch:
            # Batch mode needs a name; SQLite does not use it (0001's key was unnamed).
            batch.create_foreign_key(SQLITE_FOREIGN_KEY, "runs", ["run_id"], ["run_id"])
        op.execute(champion_view_v1())
    else:
        op.create_foreign_key(PG_FOREIGN_KEY, "recommendations", "runs", ["run_id"], ["run_id"])
    op.create_index("ix_recommendations_user_id", "recommendations", ["user_id"])
