"""Tests for recforge.store and its Alembic migrations.

Every test that takes the ``store`` fixture runs twice: on a file-backed SQLite database (the embedded
default) and on a new database in a throwaway PostgreSQL cluster (``tests/pg.py``; it fails, not skips,
where PostgreSQL is not installed).
"""

from __future__ import annotations

import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from alembic import command as alembic_command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    Column,
    Connection,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    Table,
    column,
    insert,
    inspect,
    select,
    table,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError

import recforge.store as store_module
from recforge import migrations, pg_partitions
from recforge.migrations.views import champion_view_v1
from recforge.processes import host_name, process_alive, process_token
from recforge.store import (
    SCHEMA_VERSION,
    ChampionDecision,
    Store,
    champion_recommendations,
    features_table,
    mask_source,
    mask_url,
    recommendations_table,
    schema_version_table,
    to_naive_utc,
)

AS_OF_1 = datetime(2024, 1, 1, tzinfo=UTC)
AS_OF_2 = datetime(2024, 2, 1, tzinfo=UTC)
AS_OF_3 = datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database: a SQLite file in a not-yet-existing sub-folder (the store must create
    it), or a new PostgreSQL database (with a password in the URL)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sub' / 'recforge.db'}"
    # Looked up only here, so running just the SQLite cases never starts PostgreSQL.
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An empty store with its schema."""
    s = Store(store_url)
    s.create_schema()
    yield s
    s.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    """An empty SQLite store with its schema, for SQLite-only behaviour."""
    s = Store(f"sqlite:///{tmp_path / 'recforge.db'}")
    s.create_schema()
    yield s
    s.dispose()


@pytest.fixture
def run_id(store: Store) -> str:
    return store.start_run(dataset="toy", source="toy.csv", as_of=AS_OF_1, parameters={}, flow_run_id=None)


def recs(model: str, per_user: dict[str, list[str]], score_offset: float = 0.0) -> pd.DataFrame:
    """A recommendations frame: items listed best first; score = offset + 1/rank."""
    rows = [
        (model, user, rank, item, score_offset + 1.0 / rank)
        for user, items in per_user.items()
        for rank, item in enumerate(items, start=1)
    ]
    return pd.DataFrame(rows, columns=["model", "user_id", "rank", "item_id", "score"])


def all_recommendations(store: Store) -> pd.DataFrame:
    """Every stored recommendation row (the columns every revision has), in primary-key order."""
    t = recommendations_table
    kept = [c for c in t.c if c.name not in ("strategy", "reason")]  # added by revision 0003
    with store.engine.connect() as conn:
        rows = conn.execute(select(*kept).order_by(t.c.as_of, t.c.model, t.c.user_id, t.c.rank)).all()
    return pd.DataFrame(rows, columns=[c.name for c in kept])


def champions_rows(store: Store) -> list[tuple[Any, ...]]:
    t = store_module.champions_table
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(t.c.as_of, t.c.model, t.c.metric, t.c.value, t.c.reason))]


# -- URL masking ----------------------------------------------------------------------------------------------


def test_mask_url_hides_the_password() -> None:
    masked = mask_url("postgresql://u:secret@h/db")
    assert "secret" not in masked
    assert masked == "postgresql://u:***@h/db"
    assert mask_url("sqlite:///var/recforge.db") == "sqlite:///var/recforge.db"


def test_unparsable_url_error_does_not_echo_it() -> None:
    with pytest.raises(ValueError) as info:
        mask_url("definitely not a url, password=secret")
    assert "secret" not in str(info.value)


def test_store_for_postgres_never_shows_the_password() -> None:
    # The PostgreSQL driver may or may not be installed here; either way the password must not leak.
    try:
        s = Store("postgresql://u:secret@h/db")
    except ModuleNotFoundError as exc:
        assert "secret" not in str(exc)
        assert "u:***@h/db" in str(exc)
    else:
        assert s.url_masked == "postgresql://u:***@h/db"
        assert "secret" not in repr(s)


def test_mask_source_masks_urls_only() -> None:
    assert mask_source("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert mask_source("/data/ml-100k/u.data") == "/data/ml-100k/u.data"
    assert mask_source("s3://bucket/key.csv") == "s3://bucket/key.csv"


# -- datetimes -----------------------------------------------------------------------------------------------


def test_to_naive_utc_converts_aware_and_keeps_naive() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert to_naive_utc(datetime(2024, 1, 1, 2, 30, tzinfo=plus2)) == datetime(2024, 1, 1, 0, 30)
    assert to_naive_utc(datetime(2024, 1, 1, 2, 30)) == datetime(2024, 1, 1, 2, 30)
    assert to_naive_utc(pd.Timestamp("2024-01-01 02:30", tz="Europe/Paris")) == datetime(2024, 1, 1, 1, 30)
    with pytest.raises(TypeError, match="a date"):
        to_naive_utc(date(2024, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        to_naive_utc(pd.NaT)  # type: ignore[arg-type]


# -- schema ----------------------------------------------------------------------------------------------------


def test_create_schema_is_idempotent_and_keeps_data(store: Store, run_id: str) -> None:
    store.publish(run_id, AS_OF_1, recs("pop", {"u1": ["a", "b"]}), ChampionDecision("pop", "ndcg", 0.5, "only"))
    before = all_recommendations(store)
    store.create_schema()
    store.create_schema()
    names = set(inspect(store.engine).get_table_names())
    assert {"runs", "model_metrics", "recommendations", "features", "champions", "schema_version"} <= names
    assert "champion_recommendations" in inspect(store.engine).get_view_names()
    with store.engine.connect() as conn:
        assert list(conn.execute(select(schema_version_table.c.version)).scalars()) == [SCHEMA_VERSION]
    pd.testing.assert_frame_equal(all_recommendations(store), before)
    assert store.read_recommendations("u1")["item_id"].tolist() == ["a", "b"]


ROOT = Path(__file__).resolve().parents[1]


def test_processes_creating_a_new_sqlite_schema_at_once_all_succeed(tmp_path: Path) -> None:
    # A nightly run and a backfill starting together on a new file: pysqlite ran the DDL outside a transaction, so
    # both found no schema and one failed on "table ... already exists" (in 5 of 5 tries with two processes).
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    script = (
        "import sys, time\n"
        "from recforge.store import Store\n"
        "store = Store(sys.argv[1])\n"
        "while time.time() < float(sys.argv[2]):\n"
        "    time.sleep(0.001)\n"
        "store.create_schema()\n"
    )
    start = time.time() + 4.0  # after the interpreters and imports, all at once
    processes = [
        subprocess.Popen([sys.executable, "-c", script, url, str(start)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], "\n".join(errors)
    store = Store(url)
    assert store.schema_revision() is not None
    with store.engine.connect() as conn:
        assert list(conn.execute(select(schema_version_table.c.version)).scalars()) == [SCHEMA_VERSION]


def test_create_schema_refuses_another_schema_version(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(schema_version_table).values(version=SCHEMA_VERSION + 98))
    with pytest.raises(RuntimeError, match=f"schema version.*{SCHEMA_VERSION + 98}"):
        store.create_schema()


def legacy_metadata() -> MetaData:
    """The schema recforge created before Alembic, which revision 0001 reproduces: today's ``Table``
    objects plus what revisions 0002 and 0004 dropped (the foreign key and indexes below), less what revisions
    0003, 0004 and 0006 added (tables erasures and publications, columns strategy, reason, runs.host and
    runs.process). A later revision that changes the tables must add its undo here too."""
    legacy = MetaData()
    added_by_0003 = {"strategy", "reason"}
    for t in store_module.metadata.sorted_tables:
        if t.name in ("erasures", "publications"):  # added by revisions 0003 and 0004
            continue
        if t.name == "runs":  # revision 0006 added host and process
            Table(t.name, legacy, *(c._copy() for c in t.columns if c.name not in ("host", "process")))
            Index("ix_runs_started_at", legacy.tables[t.name].c.started_at)
            continue
        if t.name == "recommendations":
            Table(t.name, legacy, *(c._copy() for c in t.columns if c.name not in added_by_0003))
            Index("ix_recommendations_model_as_of", legacy.tables[t.name].c.model, legacy.tables[t.name].c.as_of)
            continue
        t.to_metadata(legacy)
    rec = legacy.tables["recommendations"]
    rec.append_constraint(ForeignKeyConstraint(["run_id"], ["runs.run_id"]))
    Index("ix_recommendations_user_id", rec.c.user_id)
    return legacy


def create_pre_alembic_schema(store: Store) -> None:
    """What ``Store.create_schema`` did before Alembic: ``create_all``, the view, and schema_version = 1."""
    with store.engine.begin() as conn:
        legacy_metadata().create_all(conn)
        conn.execute(champion_view_v1())
        conn.execute(insert(schema_version_table).values(version=1, applied_at=datetime.now(UTC)))


def schema_diff(store: Store, target: MetaData) -> list[Any]:
    """Alembic's autogenerate comparison of the database with ``target`` (empty: they agree)."""
    with store.engine.connect() as conn:
        opts = {"include_name": migrations.include_name, "version_table": migrations.VERSION_TABLE}
        context = MigrationContext.configure(conn, opts=opts)
        return list(compare_metadata(context, target))


def migrate(store: Store, action: str, revision: str) -> None:
    """Run ``alembic upgrade|downgrade <revision>`` on the store's database."""
    with store.engine.begin() as conn:
        getattr(alembic_command, action)(migrations.alembic_config(connection=conn), revision)


def table_names(store: Store) -> set[str]:
    return set(inspect(store.engine).get_table_names())


def test_migrations_match_the_table_definitions(store: Store) -> None:
    assert schema_diff(store, store_module.metadata) == []
    assert store.schema_revision() == migrations.head_revision() == "0006"


def test_revision_0001_is_the_pre_alembic_schema(store_url: str) -> None:
    store = Store(store_url)
    migrate(store, "upgrade", "0001")
    assert schema_diff(store, legacy_metadata()) == []
    assert schema_diff(store, store_module.metadata) != []  # 0002 changed something
    store.dispose()


def test_revision_0002_downgrades_and_upgrades_keeping_rows(store: Store, run_id: str) -> None:
    store.publish(run_id, AS_OF_1, recs("pop", {"u1": ["a", "b"]}), ChampionDecision("pop", "ndcg", 0.5, "x"))
    before = all_recommendations(store)
    migrate(store, "downgrade", "0001")
    assert store.schema_revision() == "0001"
    assert schema_diff(store, legacy_metadata()) == []
    pd.testing.assert_frame_equal(all_recommendations(store), before)
    store.create_schema()
    assert store.schema_revision() == "0006"
    assert schema_diff(store, store_module.metadata) == []
    pd.testing.assert_frame_equal(all_recommendations(store), before)
    assert store.read_recommendations("u1")["item_id"].tolist() == ["a", "b"]


def test_revision_0005_downgrades_and_upgrades_keeping_rows(store: Store, run_id: str) -> None:
    odd = 'it\'s 100% \\ "odd"; DROP TABLE runs; --'  # quotes, percent, backslash and SQL in a model name
    store.publish(run_id, AS_OF_1, recs("pop", {"u1": ["a", "b"], "u2": ["c"]}), None)
    store.publish(run_id, AS_OF_1, recs(odd, {"u1": ["d"]}), None)
    store.publish(run_id, AS_OF_2, recs("pop", {"u1": ["e"]}), ChampionDecision("pop", "ndcg", 0.5, "x"))
    before = all_recommendations(store)
    migrate(store, "downgrade", "0004")
    assert store.schema_revision() == "0004"
    assert partitions(store) == []  # one plain table again
    pd.testing.assert_frame_equal(all_recommendations(store), before)
    store.create_schema()
    assert store.schema_revision() == "0006"
    assert schema_diff(store, store_module.metadata) == []
    pd.testing.assert_frame_equal(all_recommendations(store), before)
    assert store.read_recommendations("u1", model=odd, as_of=AS_OF_1)["item_id"].tolist() == ["d"]
    assert store.read_recommendations("u1")["item_id"].tolist() == ["e"]  # the view, AS_OF_2's champion
    if not store.is_sqlite:
        assert len(partitions(store)) == 2 + 3  # two dates, three (as_of, model) pairs


def partitions(store: Store) -> list[str]:
    """Names of the tables that are partitions of ``recommendations`` or of its partitions (PostgreSQL)."""
    if store.is_sqlite:
        return []
    query = text(
        "WITH RECURSIVE tree(oid) AS (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'recommendations'::regclass "
        "UNION ALL SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.oid) "
        "SELECT c.relname FROM tree JOIN pg_class c ON c.oid = tree.oid ORDER BY c.relname"
    )
    with store.engine.connect() as conn:
        return list(conn.execute(query).scalars())


def test_postgresql_publishes_swap_in_one_partition_per_as_of_and_model(pg_url: str) -> None:
    store = Store(pg_url)
    store.create_schema()
    run_id = store.start_run(dataset="toy", source="toy.csv", as_of=AS_OF_1, parameters={}, flow_run_id=None)
    both = pd.concat([recs("pop", {"u1": ["a", "b"], "u2": ["c"]}), recs("knn", {"u1": ["x"]})], ignore_index=True)
    assert store.publish(run_id, AS_OF_1, both, None) == 4
    date = pg_partitions.date_partition_name(to_naive_utc(AS_OF_1))
    pop = pg_partitions.model_partition_name(to_naive_utc(AS_OF_1), "pop")
    knn = pg_partitions.model_partition_name(to_naive_utc(AS_OF_1), "knn")
    assert partitions(store) == sorted([date, pop, knn])
    with store.engine.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {pop}")).scalar_one() == 3  # only its own rows
        assert conn.execute(text(f"SELECT count(*) FROM {knn}")).scalar_one() == 1

    # A republish of one model replaces its partition; the other model's stays as it was.
    assert store.publish(run_id, AS_OF_1, recs("pop", {"u3": ["z"]}), None) == 1
    assert partitions(store) == sorted([date, pop, knn])
    assert store.read_recommendations("u1", model="pop", as_of=AS_OF_1).empty
    assert store.read_recommendations("u3", model="pop", as_of=AS_OF_1)["item_id"].tolist() == ["z"]
    assert store.read_recommendations("u1", model="knn", as_of=AS_OF_1)["item_id"].tolist() == ["x"]
    assert store.counts()["recommendations"] == 2

    # A failed publish (a duplicate key in a model's rows only shows when its key is built) leaves nothing:
    # neither the half-built table nor a change to the published rows.
    real = store_module._bulk_insert

    def duplicating(conn: Any, target: Any, columns: Any, constants: Any = None) -> int:
        real(conn, target, columns, constants)
        return real(conn, target, columns, constants)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module, "_bulk_insert", duplicating)
        with pytest.raises(IntegrityError):
            store.publish(run_id, AS_OF_1, recs("pop", {"u4": ["q"]}), None)
    assert partitions(store) == sorted([date, pop, knn])
    assert store.read_recommendations("u3", model="pop", as_of=AS_OF_1)["item_id"].tolist() == ["z"]
    with store.engine.connect() as conn:
        leftovers = conn.execute(text("SELECT relname FROM pg_class WHERE relname LIKE '%\\_new%'")).scalars().all()
    assert leftovers == []
    store.dispose()


def test_create_schema_stamps_a_pre_alembic_database_and_keeps_its_rows(store_url: str) -> None:
    store = Store(store_url)
    create_pre_alembic_schema(store)
    # Rows as the old code wrote them (today's start_run and publish also write columns and tables it lacks).
    legacy = legacy_metadata()
    run_id = "00000000-0000-0000-0000-000000000001"
    with store.engine.begin() as conn:
        conn.execute(
            insert(legacy.tables["runs"]).values(
                run_id=run_id, dataset="toy", source="toy.csv", as_of=to_naive_utc(AS_OF_1), parameters='{"k": 1}',
                status="running", started_at=datetime.now(UTC),
            )
        )  # fmt: skip
        for rank, item in enumerate(["a", "b"], start=1):
            conn.execute(
                insert(legacy.tables["recommendations"]).values(
                    as_of=to_naive_utc(AS_OF_1), model="pop", user_id="u1", rank=rank, item_id=item,
                    score=1.0 / rank, run_id=run_id,
                )
            )  # fmt: skip
        conn.execute(
            insert(legacy.tables["champions"]).values(
                as_of=to_naive_utc(AS_OF_1), model="pop", metric="ndcg", value=0.5, reason="old", run_id=run_id,
                decided_at=datetime.now(UTC),
            )
        )  # fmt: skip
    before = all_recommendations(store)
    with store.engine.connect() as conn:
        before_runs = conn.execute(select(legacy.tables["runs"])).all()
    assert store.schema_revision() is None
    assert migrations.VERSION_TABLE not in table_names(store)

    store.create_schema()

    assert store.schema_revision() == migrations.head_revision()
    pd.testing.assert_frame_equal(all_recommendations(store), before)
    with store.engine.connect() as conn:
        legacy_columns = [store_module.runs_table.c[c.name] for c in legacy.tables["runs"].columns]
        assert conn.execute(select(*legacy_columns)).all() == before_runs
    assert store.latest_runs()[["host", "process"]].isna().all().all()  # unknown for rows of old versions
    assert store.read_recommendations("u1")["item_id"].tolist() == ["a", "b"]  # the view still works
    # Revision 0004 recovered the publication from the stored rows: "the latest as_of of a model" finds it.
    assert store.read_recommendations("u1", model="pop")["item_id"].tolist() == ["a", "b"]
    with store.engine.connect() as conn:
        assert list(conn.execute(select(schema_version_table.c.version)).scalars()) == [1]
    assert schema_diff(store, store_module.metadata) == []  # stamped 0001, then upgraded to 0002
    store.create_schema()  # and from now on an ordinary versioned database
    assert store.counts()["recommendations"] == 2
    store.dispose()


def test_create_schema_refuses_a_revision_it_does_not_know(store: Store) -> None:
    version = table(migrations.VERSION_TABLE, column("version_num"))
    with store.engine.begin() as conn:
        conn.execute(update(version).values(version_num="9999"))
    with pytest.raises(RuntimeError, match=r"revision \['9999'\].*newer recforge"):
        store.create_schema()
    assert store.schema_revision() == "9999"


def test_create_schema_refuses_an_incomplete_pre_alembic_database(store_url: str) -> None:
    store = Store(store_url)
    with store.engine.begin() as conn:
        store_module.runs_table.create(conn)
    with pytest.raises(RuntimeError, match=r"has recforge table\(s\) \['runs'\] but lacks") as info:
        store.create_schema()
    assert "'model_metrics'" in str(info.value)
    assert "view champion_recommendations" in str(info.value)
    assert table_names(store) == {"runs"}  # nothing created, nothing stamped
    store.dispose()


def test_create_schema_refuses_a_pre_alembic_database_of_another_version(store_url: str) -> None:
    store = Store(store_url)
    create_pre_alembic_schema(store)
    with store.engine.begin() as conn:
        conn.execute(update(schema_version_table).values(version=2))
    with pytest.raises(RuntimeError, match=r"schema version\(s\) \[2\]"):
        store.create_schema()
    assert migrations.VERSION_TABLE not in table_names(store)
    store.dispose()


def test_create_schema_leaves_unrelated_tables_alone(store_url: str) -> None:
    store = Store(store_url)
    other = Table("other_app_events", MetaData(), Column("id", Integer, primary_key=True))
    with store.engine.begin() as conn:
        other.create(conn)
        conn.execute(insert(other).values(id=7))
    store.create_schema()
    assert store.schema_revision() == migrations.head_revision()
    with store.engine.connect() as conn:
        assert conn.execute(select(other.c.id)).scalars().all() == [7]
    store.dispose()


def other_apps_alembic_version(store: Store, revision: str) -> None:
    """Another application's Alembic version table (Alembic's default name) at ``revision``."""
    with store.engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": revision})


@pytest.mark.parametrize("revision", ["3f2a9c1d7b4e", "0003", "0006"])
def test_create_schema_shares_a_database_with_another_alembic_application(store_url: str, revision: str) -> None:
    # Its revisions were taken for recforge's: "a newer recforge wrote it", or, for ids like recforge's, a schema
    # assumed to be there ("no such table: recommendations").
    store = Store(store_url)
    other_apps_alembic_version(store, revision)
    store.create_schema()
    assert store.schema_revision() == migrations.head_revision()
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [revision]
    assert [(op, t.name) for op, t in schema_diff(store, store_module.metadata)] == [
        ("remove_table", "alembic_version")
    ]
    store.dispose()


def test_create_schema_moves_the_revision_recforge_kept_in_alembic_version(store_url: str) -> None:
    # recforge until 2026-12-08 kept its revision in Alembic's default table: such a database is upgraded in place.
    store = Store(store_url)
    migrate(store, "upgrade", "0005")
    with store.engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {migrations.VERSION_TABLE}"))
    other_apps_alembic_version(store, "0005")
    assert store.schema_revision() == "0005"  # the read-only commands still see where it is
    store.create_schema()  # moved, then upgraded from 0005 in place
    assert store.schema_revision() == migrations.head_revision()
    assert "alembic_version" not in table_names(store)
    assert schema_diff(store, store_module.metadata) == []
    run_id = store.start_run(dataset="toy", source="toy.csv", as_of=AS_OF_1, parameters={}, flow_run_id=None)
    assert store.latest_runs()["run_id"].tolist() == [run_id]
    store.dispose()


def test_concurrent_create_schema_on_postgresql(pg_url: str) -> None:
    # Two pipelines starting at once on an empty database: the migration lock makes the second wait, then
    # find the schema at head.
    stores = [Store(pg_url), Store(pg_url)]
    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(s.create_schema) for s in stores]:
            done.result(timeout=60)
    assert stores[0].schema_revision() == migrations.head_revision()
    for s in stores:
        s.dispose()


def test_sqlite_connections_use_wal_and_foreign_keys(sqlite_store: Store) -> None:
    with sqlite_store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


# -- runs ------------------------------------------------------------------------------------------------------


def test_run_lifecycle(store: Store) -> None:
    plus2 = timezone(timedelta(hours=2))
    first = store.start_run(
        dataset="ml-100k",
        source="postgresql://reader:hunter2@db/events",
        as_of=datetime(2024, 5, 1, 2, 0, tzinfo=plus2),
        parameters={"k": np.int64(10), "models": ["pop", "itemknn"], "cutoff": datetime(2024, 1, 1)},
        flow_run_id="flow-123",
    )
    second = store.start_run(dataset="toy", source="x.csv", as_of=AS_OF_1, parameters={}, flow_run_id=None)
    runs = store.latest_runs()
    assert runs["run_id"].tolist() == [second, first]  # newest first
    row = runs.set_index("run_id").loc[first]
    assert row["status"] == "running"
    assert row["source"] == "postgresql://reader:***@db/events"
    assert row["as_of"] == pd.Timestamp("2024-05-01 00:00", tz="UTC")
    assert row["parameters"] == {"k": 10, "models": ["pop", "itemknn"], "cutoff": "2024-01-01T00:00:00"}
    assert row["flow_run_id"] == "flow-123"
    assert pd.isna(row["finished_at"])

    store.finish_run(first, status="completed", timings={"ingest": np.float64(1.5), "train": 2}, champion="itemknn")
    row = store.latest_runs().set_index("run_id").loc[first]
    assert row["status"] == "completed"
    assert row["timings"] == {"ingest": 1.5, "train": 2.0}
    assert row["champion"] == "itemknn"
    assert row["error"] is None
    assert row["finished_at"] >= row["started_at"]
    assert str(store.latest_runs()["as_of"].dtype) == "datetime64[us, UTC]"
    assert store.latest_runs(limit=1)["run_id"].tolist() == [second]

    store.finish_run(second, status="failed", timings={}, error="boom")
    assert store.latest_runs().set_index("run_id").loc[second, "error"] == "boom"


def test_finish_run_rejects_bad_status_and_unknown_run(store: Store, run_id: str) -> None:
    with pytest.raises(ValueError, match="'done'"):
        store.finish_run(run_id, status="done", timings={})
    with pytest.raises(LookupError, match="no-such-run"):
        store.finish_run("no-such-run", status="completed", timings={})


# -- metrics and features -------------------------------------------------------------------------------------


def test_write_and_read_metrics(store: Store, run_id: str) -> None:
    metrics = pd.DataFrame(
        {
            "model": ["pop", "pop", "itemknn", "pop"],
            "metric": ["ndcg", "rmse", "ndcg", "ndcg"],
            "k": [10, None, 10.0, 5],
            "value": [0.25, 0.9, 0.31, np.float32(0.5)],
            "split": ["temporal_holdout"] * 4,
        }
    )
    assert store.write_metrics(run_id, metrics) == 4
    expected = pd.DataFrame(
        {
            "model": ["itemknn", "pop", "pop", "pop"],
            "metric": ["ndcg", "ndcg", "ndcg", "rmse"],
            "k": pd.array([10, 5, 10, pd.NA], dtype="Int64"),
            "value": [0.31, 0.5, 0.25, 0.9],
            "split": ["temporal_holdout"] * 4,
        }
    ).astype({"model": "str", "metric": "str", "split": "str"})
    got = store.metrics_for_run(run_id)
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-6)

    # Writing again replaces (no duplicate keys), and another split is kept separately.
    store.write_metrics(run_id, metrics.assign(value=metrics["value"] * 2))
    store.write_metrics(run_id, metrics.iloc[:1].assign(split="random_80_20"))
    got = store.metrics_for_run(run_id)
    assert len(got) == 5
    temporal = got[got["split"] == "temporal_holdout"]
    assert temporal["value"].tolist() == pytest.approx([0.62, 1.0, 0.5, 1.8])
    assert store.counts()["model_metrics"] == 5


def test_write_metrics_rejects_bad_input(store: Store, run_id: str) -> None:
    good = pd.DataFrame({"model": ["m"], "metric": ["ndcg"], "k": [10], "value": [0.1], "split": ["s"]})
    with pytest.raises(ValueError, match="split"):
        store.write_metrics(run_id, good.drop(columns="split"))
    with pytest.raises(ValueError, match="'k'"):
        store.write_metrics(run_id, good.assign(k=0))
    with pytest.raises(ValueError, match="share a key"):
        store.write_metrics(run_id, pd.concat([good, good]))
    with pytest.raises(LookupError, match="start_run"):
        store.write_metrics("missing-run", good)
    assert store.counts()["model_metrics"] == 0


def test_write_features_wide_to_long(store: Store, run_id: str) -> None:
    wide = pd.DataFrame(
        {"user_id": ["u2", "u1"], "age": [31, np.nan], "is_new": [True, False], "share_drama": [0.25, 0.5]}
    )
    assert store.write_features(run_id, AS_OF_1, "user", wide, "user_id") == 5  # u1's missing age is skipped
    t = features_table
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(t.c.as_of, t.c.entity, t.c.entity_id, t.c.feature, t.c.value).order_by(t.c.entity_id, t.c.feature)
        ).all()
    assert [tuple(r) for r in rows] == [
        (AS_OF_1, "user", "u1", "is_new", 0.0),
        (AS_OF_1, "user", "u1", "share_drama", 0.5),
        (AS_OF_1, "user", "u2", "age", 31.0),
        (AS_OF_1, "user", "u2", "is_new", 1.0),
        (AS_OF_1, "user", "u2", "share_drama", 0.25),
    ]
    # Rewriting the same run/as_of/entity replaces; item features live beside user features.
    assert store.write_features(run_id, AS_OF_1, "user", wide[["user_id", "age"]], "user_id") == 1
    items = pd.DataFrame({"item_id": ["i1"], "popularity": [3]})
    assert store.write_features(run_id, AS_OF_1, "item", items, "item_id") == 1
    assert store.counts()["features"] == 2
    # A rerun of the date (another run) replaces them too; another as_of keeps its own.
    rerun = store.start_run(dataset="toy", source="toy.csv", as_of=AS_OF_1, parameters={}, flow_run_id=None)
    later = store.start_run(dataset="toy", source="toy.csv", as_of=AS_OF_2, parameters={}, flow_run_id=None)
    assert store.write_features(later, AS_OF_2, "user", wide, "user_id") == 5
    assert store.write_features(rerun, AS_OF_1, "user", wide, "user_id") == 5
    with store.engine.connect() as conn:
        rows = conn.execute(select(t.c.run_id, t.c.as_of, t.c.entity).distinct()).all()
    assert sorted((r.as_of, r.entity, r.run_id) for r in rows) == sorted(
        [(AS_OF_1, "user", rerun), (AS_OF_1, "item", run_id), (AS_OF_2, "user", later)]
    )


def test_write_features_rejects_bad_input(store: Store, run_id: str) -> None:
    wide = pd.DataFrame({"user_id": ["u1", "u2"], "gender": ["F", "M"], "age": [1, 2]})
    with pytest.raises(ValueError, match="gender"):
        store.write_features(run_id, AS_OF_1, "user", wide, "user_id")
    with pytest.raises(ValueError, match="entity"):
        store.write_features(run_id, AS_OF_1, "movie", wide[["user_id", "age"]], "user_id")
    with pytest.raises(ValueError, match="share a key"):
        store.write_features(run_id, AS_OF_1, "user", pd.DataFrame({"user_id": ["u1", "u1"], "a": [1, 2]}), "user_id")
    assert store.counts()["features"] == 0


# -- publish and read --------------------------------------------------------------------------------------------


def test_publish_then_read_back_ordered_by_rank(store: Store, run_id: str) -> None:
    frame = pd.concat([recs("pop", {"u1": ["a", "b", "c"], "u2": ["b", "a"]}), recs("knn", {"u1": ["c", "d"]})])
    shuffled = frame.sample(frac=1.0, random_state=0)  # stored order must not depend on input order
    assert store.publish(run_id, AS_OF_1, shuffled, None) == 7

    got = store.read_recommendations("u1", model="pop")
    assert got.columns.tolist() == [
        "as_of",
        "model",
        "user_id",
        "rank",
        "item_id",
        "score",
        "run_id",
        "strategy",
        "reason",
    ]
    assert got["item_id"].tolist() == ["a", "b", "c"]
    assert got["rank"].tolist() == [1, 2, 3]
    assert got["score"].tolist() == pytest.approx([1.0, 0.5, 1 / 3])
    assert (got["as_of"] == pd.Timestamp(AS_OF_1)).all()
    assert set(got["run_id"]) == {run_id}
    assert str(got["as_of"].dtype) == "datetime64[us, UTC]"
    assert store.read_recommendations("u1", model="pop", limit=2)["item_id"].tolist() == ["a", "b"]
    assert store.read_recommendations("u1", model="knn", as_of=AS_OF_1)["item_id"].tolist() == ["c", "d"]
    # A naive as_of means UTC, and an aware one in another zone denotes the same instant.
    same_instant = AS_OF_1.astimezone(timezone(timedelta(hours=-5)))
    assert len(store.read_recommendations("u2", model="pop", as_of=same_instant)) == 2
    assert len(store.read_recommendations("u2", model="pop", as_of=AS_OF_1.replace(tzinfo=None))) == 2
    # No champion yet: the default (champion) read is empty.
    assert store.read_recommendations("u1").empty


def test_read_for_unknown_user_is_an_empty_typed_frame(store: Store, run_id: str) -> None:
    store.publish(run_id, AS_OF_1, recs("pop", {"u1": ["a"]}), ChampionDecision("pop", "ndcg", 0.1, "only"))
    for got in (
        store.read_recommendations("nobody"),
        store.read_recommendations("nobody", model="pop"),
        store.read_recommendations("u1", model="unknown-model"),
    ):
        assert got.empty
        assert got.columns.tolist() == [
            "as_of",
            "model",
            "user_id",
            "rank",
            "item_id",
            "score",
            "run_id",
            "strategy",
            "reason",
        ]
        assert str(got["rank"].dtype) == "int64"
        assert str(got["as_of"].dtype) == "datetime64[us, UTC]"


def test_republishing_the_same_as_of_replaces_rows(store: Store, run_id: str) -> None:
    champion = ChampionDecision("pop", "ndcg", 0.4, "best ndcg@10")
    frame = pd.concat([recs("pop", {"u1": ["a", "b"], "u2": ["c"]}), recs("knn", {"u1": ["d"]})])
    store.publish(run_id, AS_OF_1, frame, champion)
    counts = store.counts()
    rerun = store.start_run(dataset="toy", source="toy.csv", as_of=AS_OF_1, parameters={}, flow_run_id=None)
    store.publish(
        rerun,
        AS_OF_1,
        recs("pop", {"u1": ["b", "a"], "u2": ["c"]}, 10.0).pipe(
            lambda f: pd.concat([f, recs("knn", {"u1": ["d"]}, 10.0)])
        ),
        ChampionDecision("knn", "ndcg", 0.6, "rerun"),
    )
    after = store.counts()
    assert after["recommendations"] == counts["recommendations"] == 4
    assert after["champions"] == counts["champions"] == 1
    got = store.read_recommendations("u1", model="pop")
    assert got["item_id"].tolist() == ["b", "a"]
    assert got["score"].tolist() == pytest.approx([11.0, 10.5])
    assert set(got["run_id"]) == {rerun}
    assert champions_rows(store) == [(AS_OF_1, "knn", "ndcg", 0.6, "rerun")]


def test_publishing_one_model_keeps_the_others(store: Store, run_id: str) -> None:
    store.publish(run_id, AS_OF_1, pd.concat([recs("pop", {"u1": ["a"]}), recs("knn", {"u1": ["b"]})]), None)
    store.publish(run_id, AS_OF_1, recs("pop", {"u1": ["z"]}), None)
    assert store.read_recommendations("u1", model="pop")["item_id"].tolist() == ["z"]
    assert store.read_recommendations("u1", model="knn")["item_id"].tolist() == ["b"]


def test_publishing_another_as_of_keeps_the_first(store: Store, run_id: str) -> None:
    store.publish(run_id, AS_OF_1, recs("pop", {"u1": ["a", "b"]}), None)
    first = all_recommendations(store)
    store.publish(run_id, AS_OF_2, recs("pop", {"u1": ["c", "d"]}), None)
    assert store.counts()["recommendations"] == 4
    pd.testing.assert_frame_equal(
        all_recommendations(store).iloc[:2].reset_index(drop=True), first.reset_index(drop=True)
    )
    assert store.read_recommendations("u1", model="pop", as_of=AS_OF_1)["item_id"].tolist() == ["a", "b"]
    # as_of None: the latest as_of published for that model.
    assert store.read_recommendations("u1", model="pop")["item_id"].tolist() == ["c", "d"]


def test_publications_record_each_as_of_and_model_once(store: Store, run_id: str) -> None:
    pub = store_module.publications_table
    store.publish(run_id, AS_OF_2, recs("pop", {"u1": ["a", "b"], "u2": ["c"]}), None)
    store.publish(run_id, AS_OF_1, pd.concat([recs("pop", {"u1": ["x"]}), recs("knn", {"u1": ["y"]})]), None)
    store.publish(run_id, AS_OF_2, recs("pop", {"u1": ["e"]}), None)  # a rerun replaces the record
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(pub.c.as_of, pub.c.model, pub.c.run_id, pub.c.row_count).order_by(pub.c.as_of, pub.c.model)
        ).all()
    assert [(m, n) for _, m, _, n in rows] == [("knn", 1), ("pop", 1), ("pop", 1)]
    assert {r for _, _, r, _ in rows} == {run_id}
    # The latest as_of is per model: knn's is AS_OF_1 although pop has a later one.
    assert store.read_recommendations("u1", model="knn")["item_id"].tolist() == ["y"]
    assert store.read_recommendations("u1", model="pop")["item_id"].tolist() == ["e"]
    assert store.read_recommendations("u1", model="none").empty


def test_champion_view_serves_the_latest_as_of_with_a_champion(store: Store, run_id: str) -> None:
    both = {"u1": ["a", "b"]}
    store.publish(
        run_id,
        AS_OF_1,
        pd.concat([recs("pop", both), recs("knn", {"u1": ["c"]})]),
        ChampionDecision("pop", "ndcg", 0.3, "first"),
    )
    store.publish(
        run_id,
        AS_OF_2,
        pd.concat([recs("pop", {"u1": ["d"]}), recs("knn", {"u1": ["e", "f"]})]),
        ChampionDecision("knn", "ndcg", 0.4, "knn wins"),
    )
    # A later as_of without a champion does not change what the view serves.
    store.publish(run_id, AS_OF_3, recs("pop", {"u1": ["g"]}), None)

    got = store.read_recommendations("u1")
    assert got["model"].tolist() == ["knn", "knn"]
    assert got["item_id"].tolist() == ["e", "f"]
    assert (got["as_of"] == pd.Timestamp(AS_OF_2)).all()
    assert store.read_recommendations("u1", limit=1)["item_id"].tolist() == ["e"]
    # The view itself, as other SQL clients see it.
    v = champion_recommendations
    with store.engine.connect() as conn:
        rows = conn.execute(select(v.c.model, v.c.item_id).order_by(v.c.rank)).all()
    assert [tuple(r) for r in rows] == [("knn", "e"), ("knn", "f")]
    # model None with an as_of: that as_of's champion.
    assert store.read_recommendations("u1", as_of=AS_OF_1)["item_id"].tolist() == ["a", "b"]
    assert store.read_recommendations("u1", as_of=AS_OF_3).empty


def test_champion_without_rows_is_refused_and_rolled_back(store: Store, run_id: str) -> None:
    store.publish(run_id, AS_OF_1, recs("pop", {"u1": ["a"]}), ChampionDecision("pop", "ndcg", 0.3, "first"))
    before, before_champions = all_recommendations(store), champions_rows(store)
    with pytest.raises(ValueError, match="'knn' has no recommendations"):
        store.publish(run_id, AS_OF_1, recs("pop", {"u1": ["x"]}), ChampionDecision("knn", "ndcg", 0.9, "?"))
    pd.testing.assert_frame_equal(all_recommendations(store), before)
    assert champions_rows(store) == before_champions


def test_failure_mid_publish_leaves_previous_rows(store: Store, run_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store.publish(
        run_id,
        AS_OF_1,
        recs("pop", {"u1": ["a", "b", "c"], "u2": ["d"]}),
        ChampionDecision("pop", "ndcg", 0.3, "first"),
    )
    before, before_champions = all_recommendations(store), champions_rows(store)

    # Small chunks, and the driver-level write fails on the second chunk: by then the old rows are deleted
    # and the first new chunk is sent, all in the open transaction.
    monkeypatch.setattr(store_module, "CHUNK_ROWS", 2)
    calls: list[Any] = []
    if store.is_sqlite:
        real = Connection.exec_driver_sql

        def flaky(self: Connection, statement: str, parameters: Any = None, **kw: Any) -> Any:
            if statement.startswith("INSERT INTO recommendations"):
                calls.append(statement)
                if len(calls) == 2:
                    raise RuntimeError("disk full (injected)")
            return real(self, statement, parameters, **kw)

        monkeypatch.setattr(Connection, "exec_driver_sql", flaky)
    else:
        import psycopg

        real_write = psycopg.Copy.write

        def flaky_write(self: psycopg.Copy, buffer: Any) -> None:
            calls.append(bytes(buffer))
            if len(calls) == 3:  # the COPY signature, the first chunk, then the second chunk
                raise RuntimeError("disk full (injected)")
            real_write(self, buffer)

        monkeypatch.setattr(psycopg.Copy, "write", flaky_write)
    new = recs("pop", {"u1": ["x", "y", "z"], "u2": ["w"]}, 5.0)
    with pytest.raises(RuntimeError, match="injected"):
        store.publish(run_id, AS_OF_1, new, ChampionDecision("pop", "ndcg", 0.9, "second"))
    assert len(calls) == (2 if store.is_sqlite else 3)
    monkeypatch.undo()

    pd.testing.assert_frame_equal(all_recommendations(store), before)
    assert champions_rows(store) == before_champions
    assert store.read_recommendations("u1")["item_id"].tolist() == ["a", "b", "c"]

    # With the fault gone, the same publish goes through in chunks.
    monkeypatch.setattr(store_module, "CHUNK_ROWS", 2)
    assert store.publish(run_id, AS_OF_1, new, ChampionDecision("pop", "ndcg", 0.9, "second")) == 4
    assert store.read_recommendations("u1")["item_id"].tolist() == ["x", "y", "z"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns="score"), "score"),
        (lambda f: f.assign(user_id=["u1", None, "u2"]), "user_id"),
        (lambda f: f.assign(rank=[1, 1, 1]), "share a key"),
        (lambda f: f.assign(rank=[0, 1, 1]), "rank"),
        (lambda f: f.assign(rank=[1.5, 2, 1]), "rank"),
        (lambda f: f.assign(score=[1.0, np.nan, 1.0]), "score"),
        (lambda f: f.assign(score=[1.0, np.inf, 1.0]), "score"),
        (lambda f: f.assign(item_id=["x" * 201, "y", "z"]), "longer than 200 characters"),
        # Stored as text, 7 and "7" are one user: a raw IntegrityError before.
        (lambda f: f.assign(user_id=pd.Series([7, 8, "7"], dtype=object), rank=[1, 1, 1]), "share a key"),
        (lambda f: f.assign(rank=[1, 2, 1e19]), "integers from 1 to 2147483647"),  # stored as -2**63 on SQLite
    ],
)
def test_publish_rejects_bad_frames_without_touching_rows(store: Store, run_id: str, change: Any, message: str) -> None:
    store.publish(run_id, AS_OF_1, recs("pop", {"u1": ["a"]}), None)
    before = all_recommendations(store)
    bad = change(recs("pop", {"u1": ["x", "y"], "u2": ["z"]}))
    with pytest.raises(ValueError, match=message):
        store.publish(run_id, AS_OF_1, bad, None)
    pd.testing.assert_frame_equal(all_recommendations(store), before)


def test_publish_run_that_fails_at_its_last_table_writes_nothing(store: Store, run_id: str) -> None:
    # One transaction: metrics and features are written before the recommendations are refused, and must go too
    # (the bad-input case csv_long_ids checked this until ingest began to refuse long ids).
    metrics = pd.DataFrame({"model": ["pop"], "metric": ["ndcg"], "k": [10], "value": [0.1], "split": ["s"]})
    features = [("user", pd.DataFrame({"user_id": ["u1"], "age": [30.0]}), "user_id")]
    store.publish_run(run_id, AS_OF_1, metrics, features, recs("pop", {"u1": ["a"]}), None)
    before = store.counts(), all_recommendations(store)
    later = datetime(2024, 2, 1, tzinfo=UTC)
    bad = recs("pop", {"u1": ["x" * 201]})
    with pytest.raises(ValueError, match="longer than 200 characters"):
        store.publish_run(run_id, later, metrics.assign(value=0.9), features, bad, None)
    assert store.counts() == before[0]
    pd.testing.assert_frame_equal(all_recommendations(store), before[1])
    assert store.metrics_for_run(run_id)["value"].tolist() == [0.1]


def test_publications_of_another_data_set_at_an_as_of_are_named(store: Store) -> None:
    # Rows and champions are keyed by as_of and model: a MovieLens run at a shop run's as_of replaced the shop's
    # rows and champion without a word. The publish task now names them (a warning: a data set named after a dated
    # export file changes name between exports, and its backfills must still replace a date).
    shop = store.start_run(dataset="shop", source="s", as_of=AS_OF_1, parameters={}, flow_run_id=None)
    store.publish(shop, AS_OF_1, recs("pop", {"u1": ["a"]}), ChampionDecision("pop", "ndcg", 0.1, "r"))
    movies = store.start_run(dataset="movielens-100k", source="m", as_of=AS_OF_1, parameters={}, flow_run_id=None)
    assert store.other_datasets_at(movies, AS_OF_1) == [("shop", shop)]
    assert store.other_datasets_at(movies, datetime(2024, 2, 1, tzinfo=UTC)) == []
    again = store.start_run(dataset="shop", source="s", as_of=AS_OF_1, parameters={}, flow_run_id=None)
    assert store.other_datasets_at(again, AS_OF_1) == []


def test_publish_needs_a_started_run(store: Store) -> None:
    with pytest.raises(LookupError, match="start_run"):
        store.publish("missing-run", AS_OF_1, recs("pop", {"u1": ["a"]}), None)
    assert store.counts()["recommendations"] == 0


def test_counts(store: Store, run_id: str) -> None:
    store.publish(run_id, AS_OF_1, recs("pop", {"u1": ["a", "b"], "u2": ["c"]}), ChampionDecision("pop", "m", 1, "r"))
    assert store.counts() == {"runs": 1, "model_metrics": 0, "recommendations": 3, "features": 0, "champions": 1}


def test_bulk_publish_rate(store: Store, run_id: str) -> None:
    users, per_user, models = 943, 50, ("pop", "itemknn")
    rng = np.random.default_rng(0)
    n = users * per_user * len(models)
    frame = pd.DataFrame(
        {
            "model": np.repeat(models, users * per_user),
            "user_id": np.tile(np.repeat([str(u) for u in range(1, users + 1)], per_user), len(models)),
            "rank": np.tile(np.arange(1, per_user + 1), users * len(models)),
            "item_id": rng.integers(1, 1683, n).astype(str),
            "score": rng.random(n),
        }
    )
    started = time.perf_counter()
    written = store.publish(run_id, AS_OF_1, frame, ChampionDecision("itemknn", "ndcg", 0.3, "bench"))
    elapsed = time.perf_counter() - started
    rate = written / elapsed
    print(f"\npublish: {written} rows in {elapsed:.2f} s = {rate:,.0f} rows/s (SQLite)")
    assert written == n == store.counts()["recommendations"]
    assert rate > 20_000
    got = store.read_recommendations("943")
    expected = frame[(frame["model"] == "itemknn") & (frame["user_id"] == "943")]
    assert got["item_id"].tolist() == expected["item_id"].tolist()
    assert got["score"].to_numpy() == pytest.approx(expected["score"].to_numpy())


def test_ids_with_special_characters_round_trip(store: Store, run_id: str) -> None:
    # COPY's text escapes, multi-byte UTF-8 and the empty string must all come back unchanged.
    odd = ["tab\tid", "new\nline\r", "back\\slash", "quote'\"", "é ü 日本 🙂", "", "comma,semi;", "\\N", "NULL"]
    frame = recs("pop", {user: [f"item-{user}", "x" * 200] for user in odd})
    assert store.publish(run_id, AS_OF_1, frame, ChampionDecision("pop", "ndcg", 0.1, "ok")) == 2 * len(odd)
    for user in odd:
        got = store.read_recommendations(user)
        assert got["user_id"].tolist() == [user, user]
        assert got["item_id"].tolist() == [f"item-{user}", "x" * 200]
        assert got["score"].tolist() == [1.0, 0.5]


def test_binary_copy_rows_hand_computed() -> None:
    # Per row: field count, then per field a 32-bit length (-1 = NULL) and big-endian bytes; the tail is the
    # constants' fields, appended to every row.
    arrays = {
        "a": pa.array(["ab", None, "é"], pa.large_string()),
        "n": pa.array([3, None, -2], pa.int32()),
        "x": pa.array([1.5, 2.0, None], pa.float64()),
    }
    kinds = {"a": "text", "n": "int4", "x": "float8"}
    tail = store_module._copy_constant("r", "text") + store_module._copy_constant(None, "int4")
    assert tail == struct.pack(">i", 1) + b"r" + struct.pack(">i", -1)
    got = bytes(store_module._copy_rows(arrays, kinds, 5, tail))
    count = struct.pack(">h", 5)
    null = struct.pack(">i", -1)
    expected = (count + struct.pack(">i", 2) + b"ab" + struct.pack(">ii", 4, 3) + struct.pack(">id", 8, 1.5) + tail) + (
        count + null + null + struct.pack(">id", 8, 2.0) + tail
    )
    expected += count + struct.pack(">i", 2) + "é".encode() + struct.pack(">ii", 4, -2) + null + tail
    assert got == expected
    # timestamp: microseconds since 2000-01-01, also before it.
    assert store_module._copy_constant(datetime(2000, 1, 2), "timestamp") == struct.pack(">iq", 8, 86_400_000_000)
    before_epoch = pa.array([datetime(1999, 12, 31, 23, 59, 59, 999999), None], pa.timestamp("us"))
    assert store_module._copy_fields(before_epoch, "timestamp").to_pylist() == [struct.pack(">iq", 8, -1), null]


def test_postgresql_store_never_shows_its_password(pg_url: str) -> None:
    password = make_url(pg_url).password
    assert password
    store = Store(pg_url)
    store.create_schema()
    assert password not in store.url_masked
    assert password not in repr(store)
    assert ":***@127.0.0.1" in store.url_masked
    with pytest.raises(LookupError) as info:
        store.publish("missing-run", AS_OF_1, recs("pop", {"u1": ["a"]}), None)
    assert password not in str(info.value)
    assert store.url_masked in str(info.value)
    wrong = Store(make_url(pg_url).set(password="not-the-password-42").render_as_string(hide_password=False))
    with pytest.raises(OperationalError) as failed:
        wrong.create_schema()
    assert "not-the-password-42" not in str(failed.value)
    assert "password authentication failed" in str(failed.value)
    store.dispose()
    wrong.dispose()


def hold_publish_open(monkeypatch: pytest.MonkeyPatch, as_of: datetime) -> tuple[threading.Event, threading.Event]:
    """Make a publish of ``as_of`` pause, transaction open, once its rows are in place (on PostgreSQL: written,
    keyed and swapped in as partitions), holding every lock it takes.

    Returns (holding, release): ``holding`` is set once it paused; setting ``release`` lets it commit.
    """
    holding, release = threading.Event(), threading.Event()
    real = store_module.Store._record_publications

    def pausing(conn: Connection, run_id: str, naive_as_of: datetime, models: Any) -> None:
        real(conn, run_id, naive_as_of, models)
        if naive_as_of == to_naive_utc(as_of):
            holding.set()
            assert release.wait(60), "the test never released the paused publish"

    monkeypatch.setattr(store_module.Store, "_record_publications", staticmethod(pausing))
    return holding, release


def test_publishes_of_different_dates_do_not_wait_for_each_other(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(pg_url)
    store.create_schema()
    run_id = store.start_run(dataset="toy", source="toy.csv", as_of=AS_OF_1, parameters={}, flow_run_id=None)
    holding, release = hold_publish_open(monkeypatch, AS_OF_1)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(
            store.publish, run_id, AS_OF_1, recs("pop", {"u1": ["a", "b"]}), ChampionDecision("pop", "m", 1, "1")
        )
        assert holding.wait(30)
        started = time.perf_counter()
        second = pool.submit(
            store.publish, run_id, AS_OF_2, recs("pop", {"u1": ["c"]}), ChampionDecision("pop", "m", 2, "2")
        )
        # The second date commits while the first still holds its transaction (and its row locks) open.
        assert second.result(timeout=20) == 1
        elapsed = time.perf_counter() - started
        assert not first.done()
        release.set()
        assert first.result(timeout=30) == 2
    assert elapsed < 10
    assert store.read_recommendations("u1", model="pop", as_of=AS_OF_1)["item_id"].tolist() == ["a", "b"]
    assert store.read_recommendations("u1")["item_id"].tolist() == ["c"]  # AS_OF_2's champion
    store.dispose()


def test_concurrent_publishes_of_the_same_date_take_turns(
    store: Store, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without serialisation the second would find none of the first's (uncommitted) rows to delete, then
    # collide with them on the primary key.
    holding, release = hold_publish_open(monkeypatch, AS_OF_1)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(
            store.publish, run_id, AS_OF_1, recs("pop", {"u1": ["a", "b"]}), ChampionDecision("pop", "m", 1, "1")
        )
        assert holding.wait(30)
        second = pool.submit(
            store.publish, run_id, AS_OF_1, recs("pop", {"u1": ["c"]}), ChampionDecision("pop", "m", 2, "2")
        )
        time.sleep(1.0)
        assert not second.done()  # waits for the first to commit
        release.set()
        assert first.result(timeout=30) == 2
        assert second.result(timeout=30) == 1
    assert store.read_recommendations("u1")["item_id"].tolist() == ["c"]
    assert champions_rows(store) == [(AS_OF_1, "pop", "m", 2.0, "2")]


def test_schema_and_view_compile_for_postgresql_without_a_server() -> None:
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateTable

    dialect = postgresql.dialect()
    view = str(
        store_module.CreateView("champion_recommendations", store_module._champion_view_select()).compile(
            dialect=dialect
        )
    )
    assert view.startswith("CREATE VIEW champion_recommendations AS SELECT recommendations.as_of")
    assert "max(champions.as_of)" in view
    ddl = str(CreateTable(recommendations_table).compile(dialect=dialect))
    assert "as_of TIMESTAMP WITHOUT TIME ZONE NOT NULL" in ddl
    assert "PRIMARY KEY (as_of, model, user_id, rank)" in ddl


# ---- runs left 'running' by a killed process -----------------------------------------------------------------


def _dead_process_token() -> str:
    """The token of a process that has just exited (its pid is not reused within the test)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    token = process_token(child.pid)
    child.kill()
    child.wait()
    return token


def _set_owner(store: Store, run_id: str, host: str, process: str | None) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            update(store_module.runs_table)
            .where(store_module.runs_table.c.run_id == run_id)
            .values(host=host, process=process)
        )


def _run(store: Store, run_id: str) -> pd.Series:
    runs = store.latest_runs(limit=100)
    return runs[runs["run_id"] == run_id].iloc[0]


def test_a_run_whose_process_is_gone_is_closed_by_the_next_start(store: Store) -> None:
    def start() -> str:
        return store.start_run(dataset="toy", source="toy.csv", as_of=AS_OF_1, parameters={}, flow_run_id=None)

    mine, killed, elsewhere, legacy, done = start(), start(), start(), start(), start()
    assert _run(store, mine)[["host", "process"]].tolist() == [host_name(), process_token()]
    dead = _dead_process_token()
    assert process_alive(dead) is False and process_alive(process_token()) is True
    _set_owner(store, killed, host_name(), dead)
    _set_owner(store, elsewhere, "another-host", dead)  # cannot be checked from here
    _set_owner(store, legacy, host_name(), None)  # written before revision 0006
    _set_owner(store, done, host_name(), dead)
    store.finish_run(done, status="completed", timings={})

    assert store.close_abandoned_runs() == [killed]
    closed = _run(store, killed)
    assert closed["status"] == "failed" and closed["finished_at"] is not None
    assert closed["error"].startswith(f"abandoned: its process (pid {dead.split(':')[0]} on {host_name()})")
    for untouched in (mine, elsewhere, legacy):
        assert _run(store, untouched)["status"] == "running"
    assert _run(store, done)["status"] == "completed" and _run(store, done)["error"] is None
    assert store.close_abandoned_runs() == []  # nothing left to close


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_of_another_host_whose_flow_run_ended_is_closed_by_the_next_start(sqlite_store: Store) -> None:
    """Rows of other hosts are judged by their Prefect flow run: over (crashed) → closed; running, or unknown to
    this API → left alone."""
    from uuid import uuid4

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed, Running

    from tasks.publish import close_runs_whose_flow_run_ended

    @flow(name="elsewhere")
    def elsewhere() -> None:
        """Never called: only registered, to own the flow runs below."""

    with get_client(sync_client=True) as client:
        crashed = client.create_flow_run(elsewhere, state=Crashed(message="pod evicted")).id
        running = client.create_flow_run(elsewhere, state=Running()).id

    def start(flow_run_id: object, host: str) -> str:
        run_id = sqlite_store.start_run(
            dataset="toy", source="toy.csv", as_of=AS_OF_1, parameters={}, flow_run_id=str(flow_run_id)
        )
        _set_owner(sqlite_store, run_id, host, "1:gone")
        return run_id

    lost = start(crashed, "evicted-host")
    alive = start(running, "busy-host")
    unknown = start(uuid4(), "other-server-host")  # a flow run of another Prefect server
    here = start(crashed, host_name())  # this host's rows are judged by process, not here

    assert close_runs_whose_flow_run_ended(sqlite_store) == [lost]
    closed = _run(sqlite_store, lost)
    assert closed["status"] == "failed"
    assert closed["error"].startswith(f"abandoned: its Prefect flow run {crashed} on evicted-host ended as Crashed")
    for untouched in (alive, unknown, here):
        assert _run(sqlite_store, untouched)["status"] == "running"
    assert close_runs_whose_flow_run_ended(sqlite_store) == []


def test_process_tokens_tell_a_recycled_pid_from_the_original_process() -> None:
    token = process_token()
    pid, boot, ticks = token.split(":")
    assert process_alive(f"{pid}:{boot}:{int(ticks) + 1}") is False  # same pid, another start time
    assert process_alive(f"{pid}:another-boot:{ticks}") is False  # the machine rebooted since
    assert process_alive(token) is True
    assert process_alive("not-a-pid") is None


def test_revision_0006_downgrades_and_upgrades_keeping_runs(store: Store, run_id: str) -> None:
    before = store.latest_runs()
    migrate(store, "downgrade", "0005")
    assert "host" not in {c["name"] for c in inspect(store.engine).get_columns("runs")}
    store.create_schema()
    assert store.schema_revision() == "0006"
    assert schema_diff(store, store_module.metadata) == []
    after = store.latest_runs()
    assert after["run_id"].tolist() == before["run_id"].tolist()
    assert after["host"].isna().all()  # not known after a downgrade: such rows are never closed automatically


def test_recent_training_seconds_come_from_each_models_newest_finished_run_on_that_data(store: Store) -> None:
    def run(dataset: str, status: str | None, timings: dict[str, dict[str, float]]) -> None:
        run_id = store.start_run(dataset=dataset, source="s.csv", as_of=AS_OF_1, parameters={}, flow_run_id=None)
        rows = [
            {"model": model, "metric": metric, "k": None, "value": value, "split": "timing"}
            for model, values in timings.items()
            for metric, value in values.items()
        ]
        rows.append({"model": "ease", "metric": "ndcg", "k": 10, "value": 0.2, "split": "temporal_holdout"})
        store.write_metrics(run_id, pd.DataFrame(rows))
        if status is not None:
            store.finish_run(run_id, status=status, timings={})
        time.sleep(0.01)  # distinct start times

    run("toy", "completed", {"ease": {"fit_seconds": 9.0}, "nmf": {"fit_seconds": 5.0, "rating_fit_seconds": 4.0}})
    run("toy", "partial", {"ease": {"fit_seconds": 1.0, "score_seconds": 0.5}})  # newer: ease's wins
    run("toy", "failed", {"ease": {"fit_seconds": 100.0}})  # a failed run's timings are not used
    run("toy", None, {"nmf": {"fit_seconds": 100.0}})  # nor a running one's
    run("other", "completed", {"als": {"fit_seconds": 3.0}})  # another data set
    # A run that also stored the publishing refit's seconds: they replace the evaluation's fit counted twice.
    run(
        "toy", "completed", {"gru4rec": {"fit_seconds": 20.0, "refit_fit_seconds": 6.0, "refit_recommend_seconds": 1.0}}
    )
    assert store.recent_training_seconds("toy", ["ease", "nmf", "als", "gru4rec"]) == {
        "ease": 2 * 1.0 + 0.5,
        "nmf": 2 * 5.0 + 4.0,  # from the older run: the newer one did not time it
        "gru4rec": 20.0 + 6.0 + 1.0,
    }
    assert store.recent_training_seconds("toy", ["ease"], runs=0) == {}
    assert store.recent_training_seconds("nothing-yet", ["ease"]) == {}


# -- erasures and champions across publishes --------------------------------------------------------------------


def features_rows(store: Store) -> list[tuple[str, str, str]]:
    """(run_id, entity, entity_id) of every stored feature row, sorted."""
    t = features_table
    with store.engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(select(t.c.run_id, t.c.entity, t.c.entity_id)))


def test_a_publish_after_a_forget_leaves_the_forgotten_user_out(store: Store, run_id: str) -> None:
    # The run loaded u1's events before the forget (training takes minutes): its rows came back, for good.
    assert store.forget_user("u1") == {"recommendations": 0, "features": 0}
    metrics = pd.DataFrame({"model": ["pop"], "metric": ["ndcg"], "k": [10], "value": [0.1], "split": ["s"]})
    users = pd.DataFrame({"user_id": ["u1", "u2"], "age": [30.0, 40.0]})
    items = pd.DataFrame({"item_id": ["u1"], "age": [1.0]})  # an item id that looks like the user's stays
    written = store.publish_run(
        run_id,
        AS_OF_1,
        metrics,
        [("user", users, "user_id"), ("item", items, "item_id")],
        recs("pop", {"u1": ["a", "b"], "u2": ["c"]}),
        ChampionDecision("pop", "ndcg", 0.1, "r"),
    )
    assert written == {"model_metrics": 1, "features_user": 1, "features_item": 1, "recommendations": 1}
    assert store.user_row_counts("u1") == {"recommendations": 0, "features": 0}
    assert all_recommendations(store)["user_id"].tolist() == ["u2"]
    assert features_rows(store) == [(run_id, "item", "u1"), (run_id, "user", "u2")]
    assert store.publications()["model"].tolist() == ["pop"]


def test_a_forget_waits_for_a_publish_in_flight_and_deletes_its_rows(
    store: Store, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL: the forget's delete cannot see the publish's uncommitted rows, which then stayed after it.
    holding, release = hold_publish_open(monkeypatch, AS_OF_1)
    with ThreadPoolExecutor(2) as pool:
        publishing = pool.submit(store.publish, run_id, AS_OF_1, recs("pop", {"u1": ["a", "b"], "u2": ["c"]}), None)
        assert holding.wait(30)
        forgetting = pool.submit(store.forget_user, "u1")
        time.sleep(1.0)
        assert not forgetting.done()
        release.set()
        assert publishing.result(timeout=30) == 3
        assert forgetting.result(timeout=30) == {"recommendations": 2, "features": 0}
    assert all_recommendations(store)["user_id"].tolist() == ["u2"]


def test_concurrent_publishes_of_a_date_leave_one_runs_features(
    store: Store, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL: each run's delete missed the other's uncommitted feature rows, and both runs' rows stayed.
    other = store.start_run(dataset="toy", source="toy.csv", as_of=AS_OF_1, parameters={}, flow_run_id=None)
    metrics = pd.DataFrame({"model": ["pop"], "metric": ["ndcg"], "k": [10], "value": [0.1], "split": ["s"]})
    users = [("user", pd.DataFrame({"user_id": ["u1"], "age": [30.0]}), "user_id")]
    holding, release = hold_publish_open(monkeypatch, AS_OF_1)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(store.publish_run, run_id, AS_OF_1, metrics, users, recs("pop", {"u1": ["a"]}), None)
        assert holding.wait(30)
        second = pool.submit(store.publish_run, other, AS_OF_1, metrics, users, recs("pop", {"u1": ["b"]}), None)
        time.sleep(1.0)
        release.set()
        first.result(timeout=30)
        second.result(timeout=30)
    assert features_rows(store) == [(other, "user", "u1")]
    assert all_recommendations(store)["item_id"].tolist() == ["b"]


def test_a_rerun_that_chooses_no_champion_takes_back_the_dates_champion_row(store: Store, run_id: str) -> None:
    # backfill --force of the latest date: knn retrained, failed the guard rails, no champion chosen. Its new rows
    # replaced the old ones while the champion row still named knn: the view served rows nothing had chosen.
    store.publish(run_id, AS_OF_1, recs("pop", {"u1": ["p"]}), ChampionDecision("pop", "ndcg", 0.2, "earlier"))
    store.publish(run_id, AS_OF_2, recs("knn", {"u1": ["k"]}), ChampionDecision("knn", "ndcg", 0.4, "chosen"))
    store.publish(run_id, AS_OF_2, recs("pop", {"u1": ["q"]}), None)  # another model: the champion stands
    assert store.read_recommendations("u1")["item_id"].tolist() == ["k"]
    rerun = store.start_run(dataset="toy", source="toy.csv", as_of=AS_OF_2, parameters={}, flow_run_id=None)
    store.publish(rerun, AS_OF_2, recs("knn", {"u1": ["rejected"]}), None)
    assert [(as_of, model) for as_of, model, *_ in champions_rows(store)] == [(AS_OF_1, "pop")]
    assert store.read_recommendations("u1")["item_id"].tolist() == ["p"]  # the latest date with a champion
    assert store.read_recommendations("u1", model="knn", as_of=AS_OF_2)["item_id"].tolist() == ["rejected"]


def test_metrics_features_and_reads_refuse_what_they_would_change(store: Store, run_id: str) -> None:
    metrics = pd.DataFrame({"model": ["pop"] * 2, "metric": ["ndcg", "recall"], "k": [10, 10], "split": ["s"] * 2})
    with pytest.raises(ValueError, match="must hold numbers") as info:  # was stored as NULL without a word
        store.write_metrics(run_id, metrics.assign(value=[0.1, "n/a"]))
    assert "recall" in str(info.value)
    assert store.write_metrics(run_id, metrics.assign(value=[0.1, None])) == 2  # missing: NULL, as before
    users = pd.DataFrame({"user_id": ["u1"], 1: [0.5], "1": [0.7]})
    with pytest.raises(ValueError, match="as stored: text"):  # a raw IntegrityError before
        store.write_features(run_id, AS_OF_1, "user", users, "user_id")
    with pytest.raises(ValueError, match="share a key"):
        store.write_features(run_id, AS_OF_1, "user", pd.DataFrame({"id": [7, "7"], "x": [1, 2]}), "id")
    store.publish(run_id, AS_OF_1, recs("pop", {"u1": ["a", "b"]}), None)
    with pytest.raises(ValueError, match="limit must be at least 1"):  # -1 returned every row
        store.read_recommendations("u1", model="pop", limit=-1)
    assert store.read_recommendations("u1", model="pop", limit=1)["item_id"].tolist() == ["a"]


# -- retention ----------------------------------------------------------------------------------------------------


def test_prune_deletes_old_dates_but_the_one_the_view_serves(store: Store, run_id: str) -> None:
    users = [("user", pd.DataFrame({"user_id": ["u1"], "age": [30.0]}), "user_id")]
    metrics = pd.DataFrame({"model": ["pop"], "metric": ["ndcg"], "k": [10], "value": [0.1], "split": ["s"]})
    runs = {}
    for as_of, champion in ((AS_OF_1, "pop"), (AS_OF_2, "knn"), (AS_OF_3, None)):
        runs[as_of] = store.start_run(dataset="toy", source="toy.csv", as_of=as_of, parameters={}, flow_run_id=None)
        frame = pd.concat([recs("pop", {"u1": ["a", "b"]}), recs("knn", {"u1": ["k"]})])
        decision = None if champion is None else ChampionDecision(champion, "ndcg", 0.1, "r")
        store.publish_run(runs[as_of], as_of, metrics, users, frame, decision)
    before = store.counts()
    later = AS_OF_3 + timedelta(days=1)

    planned = store.prune(later, dry_run=True)
    assert planned.dates == [AS_OF_1, AS_OF_3]
    assert planned.kept_served == AS_OF_2  # the latest date with a champion: the view's
    assert planned.rows == {"recommendations": 6, "features": 2}
    assert store.counts() == before

    done = store.prune(later)
    assert (done.dates, done.rows) == (planned.dates, planned.rows)
    assert all_recommendations(store)["as_of"].unique().tolist() == [AS_OF_2]
    assert store.publications()["as_of"].unique().tolist() == [AS_OF_2]
    assert [row[0] for row in champions_rows(store)] == [AS_OF_2]
    assert features_rows(store) == [(runs[AS_OF_2], "user", "u1")]
    assert store.read_recommendations("u1")["item_id"].tolist() == ["k"]
    assert len(store.latest_runs()) == 4 and len(store.metrics_for_run(runs[AS_OF_1])) == 1  # the history stays
    if not store.is_sqlite:
        assert not any(pg_partitions.date_partition_name(to_naive_utc(AS_OF_1)) in t for t in table_names(store))
    # A pruned date can be published again (a backfill finds it unpublished), and a second prune finds nothing.
    store.publish(runs[AS_OF_1], AS_OF_1, recs("pop", {"u1": ["c"]}), None)
    assert store.read_recommendations("u1", model="pop", as_of=AS_OF_1)["item_id"].tolist() == ["c"]
    assert store.prune(AS_OF_1).dates == []
