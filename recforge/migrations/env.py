"""Alembic environment for recforge's schema.

Runs the migrations on the connection that :func:`recforge.migrations.upgrade` hands over in
``config.attributes["connection"]`` (inside the caller's transaction), or, for the ``alembic`` command line,
on ``sqlalchemy.url`` of the config (see :func:`recforge.migrations.alembic_config`). ``target_metadata`` is
recforge's ``Table`` objects, so ``alembic revision --autogenerate`` and ``compare_metadata`` can compare
them with a database.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from recforge.migrations import VERSION_TABLE, include_name
from recforge.store import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_name=include_name,
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things: autogenerate should write batch (copy-and-move) operations for it.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    """``alembic upgrade --sql``: print the SQL instead of running it."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run on the handed-over connection, or on a connection of our own to ``sqlalchemy.url``."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError(
            "no database to migrate: pass a connection in config.attributes['connection'] or set "
            "sqlalchemy.url (recforge.migrations.alembic_config(url))"
        )
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as own:
            _run(own)
            own.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
