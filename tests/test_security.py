"""Security: secrets stay secret, names reaching SQL are never SQL text, model files never run code, and the
dependencies are pinned.

- Database passwords never appear in logs, artifacts, the runs table, reports, flow parameters or exceptions:
  the masking functions on PostgreSQL URLs, the run record, failing connections, and whole flow runs against
  a real password-protected PostgreSQL whose URL comes from ``$RECFORGE_DB_URL`` (the documented way).
- Injection through every name a user gives the SQL source (table, schema, column mapping, users/items
  tables) and through the values the store writes: a sentinel table must survive.
- A crafted pickle inside a model ``.npz`` (or a pickle named ``.npz``) is refused without running it; no code
  path loads models with pickle.
- ``requirements-lock.txt`` pins the runtime and development dependencies.
"""

from __future__ import annotations

import json
import pickle
import re
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from recforge.config import DB_URL_ENV, DEFAULT_DB_URL, RunConfig, resolve_db_url
from recforge.data.contract import DataError
from recforge.data.sources import SourceSpec
from recforge.data.sql import load_sql
from recforge.data.sql import mask_url as mask_source_url
from recforge.store import ChampionDecision, Store, mask_source, mask_url
from tests.test_bad_input import CORPUS, GOOD_SOURCE, resolve

REPO_ROOT = Path(__file__).resolve().parents[1]
# A password with characters that need URL-encoding: @ and : (as %40 and %3A) and a %.
PASSWORD = "S3cr@t:pa%ss"
ENCODED = "S3cr%40t%3Apa%25ss"
PG_URL = f"postgresql+psycopg://reporter:{ENCODED}@db.example.com:5432/recs"
AS_OF = datetime(2022, 1, 1, tzinfo=UTC)


def _leaks(text: str, password: str) -> bool:
    """Whether ``text`` shows ``password`` as such or URL-encoded."""
    return any(form in text for form in {password, quote_plus(password), quote_plus(password, safe="")})


# ------------------------------------------------------------------------------------------------ masking


def test_mask_functions_hide_postgresql_passwords() -> None:
    for masked in (mask_url(PG_URL), mask_source_url(PG_URL), mask_source(PG_URL)):
        assert not _leaks(masked, PASSWORD) and ENCODED not in masked
        assert masked == "postgresql+psycopg://reporter:***@db.example.com:5432/recs"
    # No password: nothing to hide, nothing changed; a path is not a URL.
    assert mask_url("postgresql+psycopg://reporter@db/recs") == "postgresql+psycopg://reporter@db/recs"
    assert mask_source("/data/events.csv") == "/data/events.csv"
    # An URL SQLAlchemy cannot parse may still hold a password: the store refuses to echo it at all ...
    broken = f"postgresql+psycopg://reporter:{ENCODED}@db.example.com:port/recs"
    with pytest.raises(ValueError) as info:
        mask_url(broken)
    assert not _leaks(str(info.value), PASSWORD) and ENCODED not in str(info.value)
    # ... and the source's masking replaces the user-info part.
    assert ENCODED not in mask_source_url(broken) and "***" in mask_source_url(broken)


def test_source_descriptions_and_store_repr_hide_the_password() -> None:
    spec = SourceSpec.from_mapping({"kind": "sql", "source_url": PG_URL, "table": "events"})
    assert ENCODED not in spec.describe() and "reporter:***@db.example.com" in spec.describe()
    store = Store(PG_URL)  # no connection is made until used
    assert ENCODED not in repr(store) and ENCODED not in store.url_masked


def test_run_record_masks_a_source_url(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'rf.db'}")
    store.create_schema()
    run_id = store.start_run(dataset="d", source=PG_URL, as_of=AS_OF, parameters={"k": 10}, flow_run_id=None)
    run = store.latest_runs(limit=1).iloc[0]
    assert run["run_id"] == run_id and ENCODED not in run["source"] and "***" in run["source"]
    store.dispose()


def _exception_text(exc: BaseException) -> str:
    """Everything an exception shows: message, repr, and the whole formatted chain with causes."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


def test_failing_connections_never_show_the_password(pg_cluster: Any) -> None:
    from tests.pg import SUPERUSER

    wrong = "Wr0ng-pass:w@rd"
    server = f"127.0.0.1:{pg_cluster.port}"
    bad_password = f"postgresql+psycopg://{SUPERUSER}:{quote_plus(wrong)}@{server}/postgres"
    missing_db = pg_cluster.url("no_such_database")
    for url, password, expected in (
        (bad_password, wrong, "password authentication failed"),
        (missing_db, pg_cluster.password, "does not exist"),
    ):
        with pytest.raises(sa.exc.OperationalError) as store_error:
            Store(url).create_schema()
        with pytest.raises(DataError) as source_error:
            load_sql(url, table="events")
        for exc in (store_error.value, source_error.value):
            text = _exception_text(exc)
            assert expected in text
            assert not _leaks(text, password), text


# ------------------------------------------------------------------------------------------------ env vars


def test_database_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DB_URL_ENV, raising=False)
    assert resolve_db_url(None) == DEFAULT_DB_URL
    monkeypatch.setenv(DB_URL_ENV, PG_URL)
    assert resolve_db_url(None) == PG_URL
    assert resolve_db_url("sqlite:///x.db") == "sqlite:///x.db"  # an explicit URL wins
    doc = (REPO_ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    assert DB_URL_ENV in doc


# ------------------------------------------------------------------------------------------------ whole flows


def _flow_texts(flow_run_id: Any) -> dict[str, str]:
    """What Prefect keeps of a flow run, as text: parameters, every log line, every artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs go to the API in the background: send what is queued
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {
        "parameters": json.dumps(flow_run.parameters, default=str),
        "state": str(flow_run.state),
        "logs": "\n".join(log.message for log in logs),
        "artifacts": "\n".join(json.dumps(a.data, default=str) + str(a.description) for a in artifacts),
    }


def _table_texts(url: str) -> dict[str, str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            runs = pd.read_sql(sa.text("SELECT * FROM runs"), conn)  # test-only, fixed name
    finally:
        engine.dispose()
    return {f"runs.{column}": "\n".join(map(str, runs[column])) for column in runs.columns}


def _file_texts(folder: Path) -> dict[str, str]:
    files = (p for p in folder.rglob("*") if p.is_file())
    return {str(p): p.read_bytes().decode("utf-8", errors="replace") for p in files}


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_flow_runs_against_a_password_protected_database_never_show_the_password(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A good run and a failing run, database URL from $RECFORGE_DB_URL: the password is nowhere."""
    from flows.recommend import recommend

    password = sa.engine.make_url(pg_url).password
    assert password
    monkeypatch.setenv(DB_URL_ENV, pg_url)
    output = tmp_path / "var"
    good = RunConfig(
        source=resolve(GOOD_SOURCE, CORPUS),
        as_of=AS_OF,
        models=["popularity", "item_knn"],
        top_n=5,
        output_dir=str(output),
    )
    ok = recommend(config=good, return_state=True)
    assert ok.is_completed()
    bad_source = {"kind": "csv", "interactions": str(CORPUS / "csv/null_ids.csv")}
    failed = recommend(config=good.model_copy(update={"source": bad_source}), return_state=True)
    assert failed.is_failed()
    error = failed.result(raise_on_failure=False)

    texts = {
        **{f"good {k}": v for k, v in _flow_texts(ok.state_details.flow_run_id).items()},
        **{f"failed {k}": v for k, v in _flow_texts(failed.state_details.flow_run_id).items()},
        **_table_texts(pg_url),
        **_file_texts(output),
        "captured logs": caplog.text,
        "exception": _exception_text(error),
    }
    assert "null_ids.csv" in texts["runs.source"] and "failed" in texts["runs.status"]
    assert any("reports" in name for name in texts)  # the HTML report was written and is checked too
    leaking = sorted(name for name, text in texts.items() if _leaks(text, password))
    assert not leaking, f"the database password appears in {leaking}"


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_a_sql_source_password_stays_out_of_the_run_record(pg_url: str, tmp_path: Path) -> None:
    from flows.recommend import recommend

    password = sa.engine.make_url(pg_url).password
    assert password
    events = pd.read_csv(CORPUS / "good/interactions.csv")
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        events.to_sql("events", conn, index=False)
    engine.dispose()
    store_url = f"sqlite:///{tmp_path / 'rf.db'}"
    config = RunConfig(
        source={"kind": "sql", "source_url": pg_url, "table": "events"},
        as_of=AS_OF,
        models=["popularity", "item_knn"],
        top_n=5,
        output_dir=str(tmp_path / "var"),
    )
    state = recommend(config=config, db_url=store_url, return_state=True)
    assert state.is_completed()
    texts = _table_texts(store_url)
    assert not _leaks(texts["runs.source"], password)
    leaking = sorted(name for name, text in texts.items() if _leaks(text, password))
    assert not leaking, f"the source password appears in {leaking}"


# ------------------------------------------------------------------------------------------------ injection


SENTINEL_ROWS = [("keep me",)]


def _sentinel_db(path: Path) -> str:
    """A SQLite database with the corpus's good events and users, and a sentinel table."""
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        pd.read_csv(CORPUS / "good/interactions.csv").to_sql("events", conn, index=False)
        pd.read_csv(CORPUS / "good/users.csv").to_sql("users", conn, index=False)
        conn.exec_driver_sql("CREATE TABLE sentinel (note TEXT)")
        conn.exec_driver_sql("INSERT INTO sentinel VALUES ('keep me')")
    engine.dispose()
    return url


def _sentinel_intact(url: str) -> bool:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            rows = conn.execute(sa.text("SELECT note FROM sentinel")).all() if "sentinel" in tables else []
            events = conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one()
    finally:
        engine.dispose()
    return [tuple(r) for r in rows] == SENTINEL_ROWS and events == 240


DROP = "DROP TABLE sentinel"
INJECTIONS: list[tuple[str, dict[str, Any]]] = [
    ("table", {"table": f"events; {DROP}; --"}),
    ("table quoted", {"table": f'events"; {DROP}; --'}),
    ("table subquery", {"table": f"(SELECT * FROM events); {DROP}"}),
    ("schema", {"table": "events", "schema": f"main; {DROP}; --"}),
    ("schema quoted", {"table": "events", "schema": f'main"."events"; {DROP}; --'}),
    ("column mapping", {"table": "events", "columns": {"user_id": f"user_id FROM events; {DROP}; --"}}),
    ("users table", {"table": "events", "users_table": f"users; {DROP}; --"}),
    ("items table", {"table": "events", "items_table": f"items'; {DROP}; --"}),
]


@pytest.mark.parametrize(("where", "settings"), INJECTIONS, ids=[name for name, _ in INJECTIONS])
def test_sql_source_names_are_never_executed(where: str, settings: dict[str, Any], tmp_path: Path) -> None:
    url = _sentinel_db(tmp_path / "shop.db")
    spec = SourceSpec.from_mapping({"kind": "sql", "source_url": url, **settings})
    with pytest.raises(DataError) as info:
        load_sql(
            url,
            table=spec.table,
            columns=spec.columns,
            users_table=spec.users_table,
            items_table=spec.items_table,
            schema=spec.schema,
        )
    assert DROP in str(info.value)  # the name is reported back as a name, whole
    assert _sentinel_intact(url)


def test_sql_source_on_postgresql_treats_names_as_names(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        pd.read_csv(CORPUS / "good/interactions.csv").to_sql("events", conn, index=False)
        conn.exec_driver_sql("CREATE TABLE sentinel (note TEXT)")
        conn.exec_driver_sql("INSERT INTO sentinel VALUES ('keep me')")
    for settings in ({"table": f'events"; {DROP}; --'}, {"table": "events", "schema": f"public; {DROP}; --"}):
        with pytest.raises(DataError):
            load_sql(pg_url, **settings)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT note FROM sentinel")).scalar_one() == "keep me"
    engine.dispose()
    assert len(load_sql(pg_url, table="events").interactions) == 240  # the real name still works


@pytest.fixture(params=["sqlite", "postgresql"])
def sentinel_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    sqlite = request.param == "sqlite"
    store = Store(f"sqlite:///{tmp_path / 'rf.db'}" if sqlite else request.getfixturevalue("pg_url"))
    store.create_schema()
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE sentinel (note TEXT)")
        conn.exec_driver_sql("INSERT INTO sentinel VALUES ('keep me')")
    yield store
    store.dispose()


def test_store_writes_hostile_values_as_plain_data(sentinel_store: Store) -> None:
    """Model names, ids and run text full of SQL reach the tables as data (COPY on PostgreSQL too)."""
    hostile = [f"m'); {DROP}; --", f'u"; {DROP}; --', "i' OR '1'='1", f"\\'; {DROP}; --"]
    model, users, item, other = hostile[0], hostile[1:], hostile[2], hostile[3]
    run_id = sentinel_store.start_run(
        dataset=model, source=users[0], as_of=AS_OF, parameters={"x": item}, flow_run_id=other
    )
    scores = [0.3, 0.2, 0.1]
    frame = pd.DataFrame({"model": model, "user_id": users, "rank": 1, "item_id": item, "score": scores})
    decision = ChampionDecision(model=hostile[0], metric="ndcg@10", value=0.5, reason=hostile[3])
    assert sentinel_store.publish(run_id, AS_OF, frame, decision) == 3
    for user in hostile[1:]:
        rows = sentinel_store.read_recommendations(user)
        assert rows[["model", "user_id", "item_id"]].values.tolist() == [[hostile[0], user, hostile[2]]]
    assert sentinel_store.read_recommendations("' OR '1'='1").empty  # a hostile lookup matches nothing
    run = sentinel_store.latest_runs(limit=1).iloc[0]
    assert (run["dataset"], run["source"], run["parameters"]) == (hostile[0], hostile[1], {"x": hostile[2]})
    with sentinel_store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT note FROM sentinel")).scalar_one() == "keep me"


# ------------------------------------------------------------------------------------------------ model files


class _Exploit:
    """Unpickling this creates ``marker``: proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


def _fitted_model_file(tmp_path: Path, name: str) -> Path:
    from recforge.ids import IdIndex
    from recmodels.base import RunSettings
    from recmodels.registry import get_model_class

    events = pd.read_csv(CORPUS / "good/interactions.csv", dtype={"user_id": str, "item_id": str})
    events["timestamp"] = pd.to_datetime(events["timestamp"], unit="s", utc=True)
    index = IdIndex.from_frame(events)
    model = get_model_class(name)()
    model.fit(index.interactions(events, ratings=True), RunSettings(seed=1))
    return model.save(tmp_path / f"{name}.npz")


@pytest.mark.parametrize("name", ["popularity", "item_knn"])
@pytest.mark.parametrize("where", ["__model__", "state/extra"])
def test_a_pickle_inside_a_model_file_is_refused(name: str, where: str, tmp_path: Path) -> None:
    from recmodels.registry import get_model_class

    cls = get_model_class(name)
    path = _fitted_model_file(tmp_path, name)
    assert cls.load(path).name == name  # the honest file loads
    marker = tmp_path / "pwned"
    with np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays[where] = np.array([_Exploit(marker)], dtype=object)
    crafted = tmp_path / "crafted.npz"
    np.savez(crafted, **arrays)  # numpy pickles the object array into the file
    with pytest.raises(ValueError, match="pickle"):
        cls.load(crafted)
    assert not marker.exists()


def test_a_pickle_named_npz_is_refused_without_running(tmp_path: Path) -> None:
    from recmodels.baselines.popularity import Popularity

    marker = tmp_path / "pwned"
    crafted = tmp_path / "model.npz"
    crafted.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(ValueError, match="pickle"):
        Popularity.load(crafted)
    assert not marker.exists()
    pickle.loads(crafted.read_bytes())  # the crafted file does run code when unpickled: the test is real
    assert marker.exists()


# Calls that load files with pickle (torch.load is only safe with weights_only=True).
_UNSAFE_LOADS = re.compile(
    r"pickle\.loads?\(|joblib\.load\(|dill\.loads?\(|allow_pickle\s*=\s*True"
    r"|torch\.load\((?![^)]*weights_only\s*=\s*True)"
)


# The one reviewed exception: the flow's own hand-off file to process/Dask workers, unpickled only after its bytes
# match the SHA-256 that came through the task's parameters (tests/test_handoff.py swaps in a pickle that would
# run a command and checks that it is refused without running).
_REVIEWED_PICKLE_LOADS = {("recforge/handoff.py", "return pickle.loads(blob)")}


def test_no_code_path_loads_with_pickle() -> None:
    offending = []
    for folder in ("recforge", "recmodels", "tasks", "flows"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                where = str(path.relative_to(REPO_ROOT))
                if _UNSAFE_LOADS.search(line) and (where, line.strip()) not in _REVIEWED_PICKLE_LOADS:
                    offending.append(f"{where}:{number}: {line.strip()}")
    assert not offending, "\n".join(offending)
    assert _UNSAFE_LOADS.search("torch.load(f)")
    assert not _UNSAFE_LOADS.search("torch.load(f, weights_only=True)")


# ----------------------------------------------------------------------------------------------- dependencies


def _lock() -> dict[str, str]:
    """requirements-lock.txt as {normalised name: version}."""
    pins: dict[str, str] = {}
    for line in (REPO_ROOT / "requirements-lock.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and " " not in version, f"not pinned with ==: {line!r}"
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_lock_file_pins_runtime_and_dev_dependencies() -> None:
    import tomllib

    pins = _lock()
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    names = {re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]).lower() for d in declared}
    assert not names - set(pins), f"declared but not locked: {sorted(names - set(pins))}"
    # Not the project itself, not the benchmark-only reference libraries.
    assert not {"recforge", "implicit", "scikit-surprise"} & set(pins)
    assert {"sqlalchemy", "psycopg", "alembic", "numpy", "torch"} <= set(pins)
