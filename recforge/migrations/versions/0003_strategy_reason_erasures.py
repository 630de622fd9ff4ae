"""recommendations: which strategy produced each row and why (``strategy``, ``reason``); table ``erasures``.

``strategy`` names what produced a row: ``model`` (the model itself) or a cold-start fallback
(``item_neighbours``, ``segment_popularity:<attribute>=<value>``, ``popularity``, ``content``). ``reason`` is a
short explanation ("because you rated X and Y"). Both are NULL on rows published before this revision.

``erasures`` records each ``recforge forget``: which user (as stored: the pseudonym when ids are pseudonymised),
when, and how many rows were deleted. The pipeline drops these users' events on ingest from then on.

The view is recreated to carry the new columns (SQLite checks views when a table changes).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from recforge.migrations.views import CHAMPION_VIEW, champion_view_v1, champion_view_v2
from recforge.store import DropView

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.execute(DropView(CHAMPION_VIEW))
    op.add_column("recommendations", sa.Column("strategy", sa.String(100), nullable=True))
    op.add_column("recommendations", sa.Column("reason", sa.Text, nullable=True))
    op.create_table(
        "erasures",
        sa.Column("user_id", sa.String(200), primary_key=True),
        sa.Column("requested_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("rows_deleted", sa.Text, nullable=False),
        sa.Column("note", sa.Text, nullable=True),
    )
    op.execute(champion_view_v2())


def downgrade() -> None:
    op.execute(DropView(CHAMPION_VIEW))
    op.drop_table("erasures")
    with op.batch_alter_table("recommendations") as batch:
        batch.drop_column("reason")
        batch.drop_column("strategy")
    op.execute(champion_view_v1())
