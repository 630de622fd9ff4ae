"""Versioned schema changes of recforge's database, as Alembic revisions shipped inside the package.

``Store.create_schema`` calls :func:`upgrade`, which brings any database to the newest revision (``alembic
upgrade head``) inside the caller's transaction. Revisions live in ``versions/`` (``0001`` = the schema recforge
created before it used Alembic); the revision a database is at is in its ``recforge_alembic_version`` table.

That table is recforge's own, not Alembic's default ``alembic_version``: a database recforge publishes into may hold
another application's tables and migrations too, whose revisions recforge took for its own ("a newer recforge wrote
it"), or, when the ids looked alike (``0003``), for a schema that was not there. recforge until 2026-12-08 kept its
revision in ``alembic_version``: such a database (recforge's tables present, a revision recforge knows there) has
it moved to ``recforge_alembic_version`` on the next ``create_schema``.

A database that recforge created before Alembic (all its tables, ``schema_version`` holding 1, no version
table) is stamped at ``0001`` and then upgraded: its tables and rows are kept.

Adding a schema change: write ``versions/NNNN_<what>.py`` (copy the newest one's header; set ``down_revision``
to it), change the ``Table`` objects in ``recforge/store.py`` to match, and check the two agree with the test
that compares them (``tests/test_store.py::test_migrations_match_the_table_definitions``). To draft one from
those ``Table`` objects, against a database at the current head::

    from alembic import command
    from recforge.migrations import alembic_config
    command.revision(alembic_config("sqlite:///var/recforge.db"), message="what", autogenerate=True,
                     rev_id="0002")
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, column, delete, func, inspect, select, table, text

from recforge import pg_partitions

SCRIPT_LOCATION = Path(__file__).resolve().parent
VERSION_TABLE = "recforge_alembic_version"
# Where recforge kept its revision until 2026-12-08 (Alembic's default), and other applications keep theirs.
SHARED_VERSION_TABLE = "alembic_version"
BASELINE_REVISION = "0001"
# What a database made before Alembic holds: these tables, this view, and this row in schema_version.
LEGACY_TABLES = ("runs", "model_metrics", "recommendations", "features", "champions", "schema_version")
LEGACY_VIEW = "champion_recommendations"
LEGACY_SCHEMA_VERSION = 1
# Key of the PostgreSQL advisory lock that serialises migrations (two pipelines starting at once); an
# arbitrary constant ("recforge" in ASCII), only compared with other advisory locks of the same database.
MIGRATION_LOCK_KEY = 0x7265_6366_6F72_6765


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Alembic's filter for schema comparisons: leave out the partitions of ``recommendations`` that publishes
    create on PostgreSQL (``recforge.pg_partitions``); the ``Table`` objects describe only their parent."""
    return not (type_ == "table" and name is not None and pg_partitions.is_partition_name(name))


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` for recforge's revisions, built in code (no alembic.ini needed).

    Give ``connection`` to run inside that connection's transaction, or ``url`` for a connection of Alembic's
    own (command line use). ``%`` in the URL is escaped for the config parser.
    """
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this recforge knows."""
    head = ScriptDirectory(str(SCRIPT_LOCATION)).get_current_head()
    assert head is not None, f"no revisions in {SCRIPT_LOCATION / 'versions'}"
    return head


def current_revisions(connection: Connection) -> tuple[str, ...]:
    """The revision(s) the database is at; empty when it has no recforge revision.

    Read from ``recforge_alembic_version``, or from ``alembic_version`` where recforge kept it until 2026-12-08
    (recforge's tables and a revision it knows there; moved by the next :func:`upgrade`), so the read-only
    commands still read such a database.
    """
    own = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_heads()
    if own:
        return tuple(own)
    tables = set(inspect(connection).get_table_names())
    if SHARED_VERSION_TABLE in tables and "runs" in tables:
        return tuple(_recforge_revisions_shared(connection))
    return ()


def upgrade(connection: Connection, where: str) -> str:
    """Bring the database of ``connection`` to the newest revision, in the caller's transaction; returns it.

    ``where`` names the database in error messages (a password-masked URL). Raises ``RuntimeError``, changing
    nothing, when the database holds a revision this recforge does not know (a newer recforge wrote it) or
    recforge tables without a version table that are not the complete pre-Alembic schema.
    """
    config = alembic_config(connection=connection)
    if connection.dialect.name == "postgresql":
        # Two processes upgrading one database at once would both try to create the same tables.
        connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
    inspector = inspect(connection)
    tables = set(inspector.get_table_names())
    if VERSION_TABLE in tables:
        _require_known_revisions(connection, where)
    elif ours := current_revisions(connection):  # kept in alembic_version by recforge until 2026-12-08
        _move_shared_revisions(connection, config, list(ours))
    elif tables & set(LEGACY_TABLES):
        _require_legacy_schema(connection, tables, set(inspector.get_view_names()), where)
        command.stamp(config, BASELINE_REVISION)
    command.upgrade(config, "head")
    return head_revision()


def _recforge_revisions_shared(connection: Connection) -> list[str]:
    """The revisions in ``alembic_version`` that are recforge's (empty when any is not: another application's)."""
    shared = table(SHARED_VERSION_TABLE, column("version_num"))
    found = list(connection.execute(select(shared.c.version_num)).scalars())
    script = ScriptDirectory(str(SCRIPT_LOCATION))
    for revision in found:
        try:
            script.get_revision(revision)
        except CommandError:
            return []
    return found


def _move_shared_revisions(connection: Connection, config: Config, revisions: list[str]) -> None:
    """Record ``revisions`` in recforge's own version table and take them out of ``alembic_version``, which is
    dropped when nothing else is left in it."""
    for revision in revisions:
        command.stamp(config, revision)
    shared = table(SHARED_VERSION_TABLE, column("version_num"))
    connection.execute(delete(shared).where(shared.c.version_num.in_(revisions)))
    if connection.execute(select(func.count()).select_from(shared)).scalar_one() == 0:
        connection.execute(text(f"DROP TABLE {SHARED_VERSION_TABLE}"))


def _require_known_revisions(connection: Connection, where: str) -> None:
    script = ScriptDirectory(str(SCRIPT_LOCATION))
    unknown = []
    for revision in current_revisions(connection):
        try:
            script.get_revision(revision)
        except CommandError:
            unknown.append(revision)
    if unknown:
        raise RuntimeError(
            f"database {where} is at schema revision {unknown} (table {VERSION_TABLE}), which this recforge "
            f"does not know (its newest is {head_revision()!r}): a newer recforge wrote it. Upgrade recforge, "
            "or use another database URL."
        )


def _require_legacy_schema(connection: Connection, tables: set[str], views: set[str], where: str) -> None:
    """Refuse to stamp a database that is not exactly what recforge created before Alembic."""
    missing = [name for name in LEGACY_TABLES if name not in tables]
    if LEGACY_VIEW not in views:
        missing.append(f"view {LEGACY_VIEW}")
    if missing:
        present = sorted(tables & set(LEGACY_TABLES))
        raise RuntimeError(
            f"database {where} has recforge table(s) {present} but lacks {missing} and has no "
            f"{VERSION_TABLE} table, so its schema version is unknown. Use a new database URL, or drop "
            "these tables if their data is not needed."
        )
    versions = list(connection.execute(text("SELECT version FROM schema_version")).scalars())
    if versions != [LEGACY_SCHEMA_VERSION]:
        raise RuntimeError(
            f"database {where} has schema version(s) {versions} in table schema_version, but this recforge "
            f"can only adopt version {LEGACY_SCHEMA_VERSION} (it has no migration for others). Use a new "
            "database URL, or upgrade/downgrade recforge to the version that wrote this database."
        )
