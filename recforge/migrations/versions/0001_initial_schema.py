"""Initial schema: runs, model_metrics, recommendations, features, champions, schema_version and the view
champion_recommendations.

This is the schema recforge created with ``metadata.create_all`` before it used Alembic (``schema_version`` = 1).
A database made that way has no Alembic version table; ``recforge.migrations.upgrade`` recognises it and
stamps it at this revision instead of running it. So the DDL here must stay exactly what that code created:
the same names, types, keys and indexes (PostgreSQL names the unnamed keys ``<table>_pkey``/``_fkey``).

Frozen: it declares its own tables (and takes the view from ``views.champion_view_v1``) instead of using
recforge.store's ``Table`` objects, which follow the newest revision.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from recforge.migrations.views import CHAMPION_VIEW, champion_view_v1
from recforge.store import DropView

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    schema_version = op.create_table(
        "schema_version",
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("applied_at", sa.DateTime(timezone=False), nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("dataset", sa.String(200), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=False), nullable=False),
        sa.Column("parameters", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=False), nullable=True),
        sa.Column("timings", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("champion", sa.String(200), nullable=True),
    )
    op.create_index("ix_runs_started_at", "runs", ["started_at"])
    op.create_table(
        "model_metrics",
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.run_id"), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("metric", sa.String(100), nullable=False),
        sa.Column("k", sa.Integer, nullable=True),
        sa.Column("k_key", sa.Integer, nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("split", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "model", "metric", "k_key", "split"),
    )
    op.create_table(
        "recommendations",
        sa.Column("as_of", sa.DateTime(timezone=False), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("item_id", sa.String(200), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.run_id"), nullable=False),
        sa.PrimaryKeyConstraint("as_of", "model", "user_id", "rank"),
    )
    op.create_index("ix_recommendations_user_id", "recommendations", ["user_id"])
    op.create_index("ix_recommendations_model_as_of", "recommendations", ["model", "as_of"])
    op.create_table(
        "features",
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.run_id"), nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=False), nullable=False),
        sa.Column("entity", sa.String(8), nullable=False),
        sa.Column("entity_id", sa.String(200), nullable=False),
        sa.Column("feature", sa.String(200), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "as_of", "entity", "entity_id", "feature"),
    )
    op.create_index("ix_features_entity", "features", ["entity", "entity_id"])
    op.create_table(
        "champions",
        sa.Column("as_of", sa.DateTime(timezone=False), primary_key=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("metric", sa.String(100), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.run_id"), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.execute(champion_view_v1())
    # The pre-Alembic compatibility marker: recforge versions before Alembic open a database only when it
    # holds exactly this row, so they keep working with (and refusing) the same databases as before.
    # Naive UTC, as the old code's column type stored datetimes.
    now = datetime.now(UTC).replace(tzinfo=None)
    op.bulk_insert(schema_version, [{"version": 1, "applied_at": now}])


def downgrade() -> None:
    op.execute(DropView(CHAMPION_VIEW))
    for name in ("champions", "features", "recommendations", "model_metrics", "runs", "schema_version"):
        op.drop_table(name)
