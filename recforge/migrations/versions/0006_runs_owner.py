"""Columns ``runs.host`` and ``runs.process``: which process owns a running run.

A run killed with SIGKILL or by the out-of-memory killer cannot close its ``runs`` row. With its host and
process token recorded (:mod:`recforge.processes`), the next run on the same host closes such rows as failed
(``Store.close_abandoned_runs``). Rows written before this revision have neither and are left as they are.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Plain ALTER TABLE, not Alembic's batch mode: batch mode rebuilds the table on SQLite, which other tables'
    # foreign keys to runs forbid; SQLite has added and dropped plain columns in place since 3.35.
    op.add_column("runs", sa.Column("host", sa.String(255), nullable=True))
    op.add_column("runs", sa.Column("process", sa.String(100), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "process")
    op.drop_column("runs", "host")
