"""Faults never lose or corrupt published data.

- A process killed with SIGKILL in the middle of ``Store.publish`` (SQLite mid-insert, PostgreSQL mid-COPY):
  the previous rows of that ``as_of`` and the champion view are intact, and the next publish completes.
- The database unreachable when a run starts: retried, then a clear failure naming the database, and nothing
  written.
- One model failing (in evaluation or in the refit): the other models publish, the run record says "partial"
  and names the model, and the flow run ends Failed rather than Completed.
- Concurrent publishes: the same ``as_of`` twice at once leaves exactly one of the two, whole; different dates
  at once both succeed.

The kill tests run the publish in a child process that parks itself mid-write (a hook on the SQLite insert
chunks, or on psycopg's ``Copy.write``) and writes a flag file; the test kills it as soon as the flag appears.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from recforge.config import RunConfig
from recforge.store import (
    ChampionDecision,
    Store,
    champion_recommendations,
    champions_table,
    recommendations_table,
)
from tests.test_bad_input import CORPUS, GOOD_SOURCE, resolve

REPO_ROOT = Path(__file__).resolve().parents[1]
AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
EARLIER = datetime(2024, 2, 1, tzinfo=UTC)
TOP = 50
# Users of the frame the killed child publishes: 400 x 50 = 20,000 rows, 10 chunks of 2,000 in the child.
KILLED_USERS = 400
FLAG_TIMEOUT_S = 60.0
# Users per concurrent publish: 400 x 50 = 20,000 rows, enough for the two transactions to overlap.
CONCURRENT_USERS = 400


def recommendations(n_users: int, model: str = "m1", tag: str = "a", top: int = TOP) -> pd.DataFrame:
    """``top`` ranked rows per user; item ids and scores carry ``tag`` so a whole publish is recognisable."""
    users = np.repeat(np.arange(n_users), top)
    ranks = np.tile(np.arange(1, top + 1), n_users)
    return pd.DataFrame(
        {
            "model": model,
            "user_id": users.astype(str),
            "rank": ranks,
            "item_id": np.char.add(f"{tag}-", ((users * 7 + ranks) % 997).astype(str)),
            "score": 1000.0 * (1 + ord(tag[0]) - ord("a")) - ranks,
        }
    )


def champion(model: str = "m1", value: float = 0.5) -> ChampionDecision:
    return ChampionDecision(model=model, metric="ndcg@10", value=value, reason="test")


def start_run(store: Store, as_of: datetime = AS_OF) -> str:
    return store.start_run(dataset="faults", source="test", as_of=as_of, parameters={}, flow_run_id=None)


def published(store: Store, as_of: datetime | None = None) -> pd.DataFrame:
    """All recommendation rows (of ``as_of`` when given), sorted, without the run id."""
    stmt = sa.select(recommendations_table)
    if as_of is not None:
        stmt = stmt.where(recommendations_table.c.as_of == as_of.replace(tzinfo=None))
    with store.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    frame = pd.DataFrame(rows, columns=[c.name for c in recommendations_table.c])
    frame = frame.drop(columns=["run_id", "strategy", "reason"]).sort_values(["as_of", "model", "user_id", "rank"])
    return frame.reset_index(drop=True)


def served(store: Store) -> pd.DataFrame:
    """What the champion view serves, sorted."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(champion_recommendations)).all()
    frame = pd.DataFrame(rows, columns=[c.name for c in champion_recommendations.c])
    return frame.sort_values(["model", "user_id", "rank"]).reset_index(drop=True)


def champions(store: Store) -> pd.DataFrame:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(champions_table).order_by(champions_table.c.as_of)).all()
    return pd.DataFrame(rows, columns=[c.name for c in champions_table.c])


def as_published(frame: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """``frame`` as :func:`published` returns it after a publish for ``as_of``."""
    out = frame.assign(as_of=pd.Timestamp(as_of).tz_convert("UTC"))
    out = out[["as_of", "model", "user_id", "rank", "item_id", "score"]]
    return out.sort_values(["as_of", "model", "user_id", "rank"]).reset_index(drop=True)


def assert_same_rows(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Equal rows, compared as text/number values (so datetime units and string dtypes do not matter)."""
    as_text = {"as_of": str, "model": str, "user_id": str, "item_id": str}
    left, right = (f.astype(as_text).reset_index(drop=True) for f in (actual, expected))
    assert len(left) == len(right), f"{len(left)} rows, expected {len(right)}"
    pd.testing.assert_frame_equal(left, right, check_dtype=False)


# ------------------------------------------------------------------------------------------------ SIGKILL


CHILD = r"""
import sys, time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

import recforge.store
from recforge.store import ChampionDecision, Store

url, flag, kind, n_users, as_of = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
# Small chunks, so that a small frame is written in many pieces and "mid-way" is well inside it.
recforge.store.CHUNK_ROWS = 2_000
store = Store(url)
as_of = datetime.fromisoformat(as_of)
# The same data set as the rows it republishes (publishing refuses an as_of holding another data set's rows).
run_id = store.start_run(dataset="faults", source="test", as_of=as_of, parameters={}, flow_run_id=None)
users = np.repeat(np.arange(n_users), 50).astype(str)
ranks = np.tile(np.arange(1, 51), n_users)
frame = pd.DataFrame({"model": "m1", "user_id": users, "rank": ranks, "item_id": "z", "score": 9.0})


def park(note: str) -> None:
    partial = flag.with_suffix(".tmp")
    partial.write_text(note)
    partial.rename(flag)  # atomic: the parent never reads half a note
    time.sleep(600)  # killed here, inside the open transaction


if kind == "sqlite":
    from sqlalchemy import event

    chunks = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def _chunk(conn, cursor, statement, parameters, context, executemany):
        text = statement.lstrip().lower()
        if executemany and text.startswith("insert") and "recommendations" in text:
            chunks.append(len(parameters))
            if len(chunks) == 3:  # two chunks of rows inserted, uncommitted: park before the third
                # This transaction sees its own partial state: the old rows deleted, two chunks inserted.
                mine = cursor.connection.execute("SELECT count(*) FROM recommendations WHERE item_id = 'z'")
                park(f"rows={mine.fetchone()[0]}")
else:
    import psycopg

    original = psycopg.Copy.write
    writes = []

    def _write(self, buffer):
        writes.append(len(buffer))
        if len(writes) == 3:  # the COPY header and one chunk of rows sent: park before the next chunk
            park("copy")
        return original(self, buffer)

    psycopg.Copy.write = _write

decision = ChampionDecision(model="m1", metric="ndcg@10", value=0.9, reason="killed")
store.publish(run_id, as_of, frame, decision)
print("publish finished: the hook never fired", flush=True)
"""


def kill_mid_publish(url: str, kind: str, tmp_path: Path, while_parked: Callable[[str], None]) -> None:
    """Run :data:`CHILD` publishing :data:`AS_OF`, wait until it parks mid-write, SIGKILL it.

    ``while_parked`` gets the child's note (its own view of the half-written transaction) before the kill.
    """
    flag = tmp_path / "mid-publish.flag"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(flag), kind, str(KILLED_USERS), AS_OF.isoformat()],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + FLAG_TIMEOUT_S
        while not flag.exists():
            if child.poll() is not None:
                output = child.stdout.read() if child.stdout else ""
                pytest.fail(f"the publishing child exited ({child.returncode}) before mid-publish:\n{output}")
            if time.monotonic() > deadline:
                pytest.fail(f"the publishing child did not reach mid-publish within {FLAG_TIMEOUT_S} s")
            time.sleep(0.05)
        while_parked(flag.read_text())
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'rf.db'}"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_mid_publish_keeps_previous_rows_and_the_next_publish_completes(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = _sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("pg_url")
    store = Store(url)
    store.create_schema()
    # Previously published: an earlier as_of, and the very as_of the killed child replaces.
    earlier, current = recommendations(200, tag="e"), recommendations(400, tag="a")
    store.publish(start_run(store, EARLIER), EARLIER, earlier, champion(value=0.1))
    store.publish(start_run(store), AS_OF, current, champion(value=0.2))
    before = (published(store), served(store), champions(store))
    assert len(before[1]) == len(current)  # the view serves the latest as_of's champion

    def parked(note: str) -> None:
        if backend == "sqlite":
            assert note == f"rows={2 * 2_000}"  # inside the child's transaction the old rows were gone
        else:
            assert note == "copy"
            with store.engine.connect() as conn:
                activity = sa.text("SELECT query FROM pg_stat_activity WHERE query LIKE :pattern")
                queries = conn.execute(activity, {"pattern": "COPY%"}).scalars().all()
            copying = [q for q in queries if "recommendations" in q]
            assert len(copying) == 1, queries  # the child's COPY is open on the server right now
        # Other sessions still read the previous rows while the writer is half-way.
        pd.testing.assert_frame_equal(served(store), before[1])

    kill_mid_publish(url, backend, tmp_path, parked)

    store.dispose()  # fresh connections: nothing cached from before the kill
    after = Store(url)
    pd.testing.assert_frame_equal(published(after), before[0])
    pd.testing.assert_frame_equal(served(after), before[1])
    pd.testing.assert_frame_equal(champions(after), before[2])
    if backend == "sqlite":
        with after.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"
    # The killed run stays "running" in the run record: nothing closed it.
    assert "running" in after.latest_runs(limit=10)["status"].tolist()

    replacement = recommendations(KILLED_USERS, tag="y")
    started = time.perf_counter()
    assert after.publish(start_run(after), AS_OF, replacement, champion(value=0.3)) == len(replacement)
    assert time.perf_counter() - started < 60  # no lock left behind by the dead writer
    assert_same_rows(published(after, AS_OF), as_published(replacement, AS_OF))
    assert_same_rows(published(after, EARLIER), as_published(earlier, EARLIER))
    assert champions(after)["value"].tolist() == [0.1, 0.3]
    after.dispose()


# ------------------------------------------------------------------------------------------------ unreachable


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_postgresql_fails_clearly_without_the_password() -> None:
    password = "n0t-Sh0wn-pw"
    url = f"postgresql+psycopg://recforge:{password}@127.0.0.1:{_closed_port()}/recforge"
    store = Store(url)
    started = time.perf_counter()
    with pytest.raises(sa.exc.OperationalError) as info:
        store.create_schema()
    assert time.perf_counter() - started < 30  # refused at once, not hanging
    text = str(info.value)
    assert "Connection refused" in text and "127.0.0.1" in text
    assert password not in text and password not in repr(info.value) and password not in repr(store)


def test_sqlite_path_that_cannot_be_created_fails_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the database folder should be")
    with pytest.raises(OSError) as info:
        Store(f"sqlite:///{blocker / 'sub' / 'rf.db'}").create_schema()
    assert "not-a-folder" in str(info.value)
    assert blocker.read_text() == "a file where the database folder should be"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_flow_retries_an_unreachable_database_then_fails_without_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.recommend import recommend

    password = "n0t-Sh0wn-pw"
    monkeypatch.setenv("RECFORGE_DB_URL", f"postgresql+psycopg://rf:{password}@127.0.0.1:{_closed_port()}/rf")
    config = RunConfig(
        source=resolve(GOOD_SOURCE, CORPUS), as_of=AS_OF, models=["popularity"], output_dir=str(tmp_path / "var")
    )
    state = recommend(config=config, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, sa.exc.OperationalError) and "Connection refused" in str(error)
    assert password not in str(error) and password not in str(state.message)
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    # The first task is `open-run` (the run is recorded before any data is read): tried, then retried twice; no
    # data was read for a run that could not be recorded.
    assert [(t.name.rsplit("-", 1)[0], t.run_count) for t in task_runs] == [("open-run", 3)]
    assert not (tmp_path / "var" / "reports").exists()


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_a_run_that_fails_at_ingest_is_recorded_as_failed(tmp_path: Path) -> None:
    from flows.recommend import recommend

    missing = tmp_path / "gone" / "events.csv"
    db = f"sqlite:///{tmp_path / 'rf.db'}"
    config = RunConfig(
        source={"kind": "csv", "interactions": str(missing)},
        as_of=AS_OF,
        models=["popularity"],
        output_dir=str(tmp_path / "var"),
    )
    state = recommend(config=config, db_url=db, return_state=True)
    assert state.is_failed()
    store = Store(db)
    runs = store.latest_runs()
    store.dispose()
    # Without the record a nightly run that could not read its input left no trace in `recforge runs`.
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "failed" and run["dataset"] == "events"
    assert str(missing) in run["error"] and run["flow_run_id"] == str(state.state_details.flow_run_id)
    assert list(run["timings"]) == ["ingest (failed)"]
    assert run["as_of"] == pd.Timestamp(AS_OF)


# ---------------------------------------------------------------------------------------------- a model fails


def _run_with_failing_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inject: Callable[[pytest.MonkeyPatch], None]
) -> tuple[Any, Store]:
    from flows.recommend import recommend

    inject(monkeypatch)
    url = _sqlite_url(tmp_path)
    config = RunConfig(
        source=resolve(GOOD_SOURCE, CORPUS),
        as_of=datetime(2022, 1, 1, tzinfo=UTC),
        models=["popularity", "item_knn"],
        top_n=10,
        output_dir=str(tmp_path / "var"),
    )
    return recommend(config=config, db_url=url, return_state=True), Store(url)


def _fail_item_knn_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    from recmodels.knn.item import ItemKNN

    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected training fault")

    monkeypatch.setattr(ItemKNN, "fit", broken)


def _fail_item_knn_refit(monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.train

    real = tasks.train.fit_and_recommend

    def refit(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "item_knn":
            raise RuntimeError("injected refit fault")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(tasks.train, "fit_and_recommend", refit)


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    ("inject", "words"),
    [(_fail_item_knn_fit, "injected training fault"), (_fail_item_knn_refit, "injected refit fault")],
    ids=["evaluation", "refit"],
)
def test_one_failing_model_leaves_the_others_published_and_the_run_partial(
    inject: Callable[[pytest.MonkeyPatch], None], words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.recommend import ModelsFailed

    state, store = _run_with_failing_model(tmp_path, monkeypatch, inject)
    assert state.is_failed() and not state.is_completed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ModelsFailed) and "item_knn" in str(error) and words in str(error)
    run = store.latest_runs(limit=1).iloc[0]
    assert run["status"] == "partial"
    assert "item_knn" in run["error"] and words in run["error"] and "popularity" not in run["error"]
    assert run["champion"] == "popularity"
    rows = published(store)
    assert set(rows["model"]) == {"popularity"}
    assert rows["user_id"].nunique() == 30 and len(rows) == 30 * 10
    assert served(store)["model"].unique().tolist() == ["popularity"]
    store.dispose()


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_recforge_run_shows_what_a_partial_run_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    _fail_item_knn_fit(monkeypatch)
    source = resolve(GOOD_SOURCE, CORPUS)
    argv = ["run", "--dataset", "csv", "--interactions", source["interactions"], "--as-of", "2022-01-01"]
    argv += ["--models", "popularity,item_knn", "--top-n", "10", "--output-dir", str(tmp_path / "var")]
    assert main([*argv, "--db-url", _sqlite_url(tmp_path)]) == 1
    out, err = capsys.readouterr()
    # Before, a partial run printed nothing on stdout: no leaderboard, no report path, no rows published.
    assert ": partial" in out and "Leaderboard" in out and "popularity" in out
    assert "Report: " in out and "Published to sqlite" in out
    assert "run failed: ModelsFailed: 1 of 2 models failed (item_knn: " in err and "injected training fault" in err


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_a_hanging_model_is_cut_off_by_a_time_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.recommend import recommend
    from recmodels.baselines.ease import EASE

    def hang(self: Any, *args: Any, **kwargs: Any) -> Any:
        for _ in range(600):  # short sleeps, so that a timeout can interrupt the thread between them
            time.sleep(0.1)
        raise AssertionError("the time budget did not stop the model")

    # EASE, not item_knn: every model's publication also fits item neighbours for its cold-start chain.
    monkeypatch.setattr(EASE, "fit", hang)
    config = RunConfig(
        source=resolve(GOOD_SOURCE, CORPUS),
        as_of=datetime(2022, 1, 1, tzinfo=UTC),
        models=["popularity", "ease"],
        output_dir=str(tmp_path / "var"),
        model_timeout_s=3,
    )
    started = time.perf_counter()
    state = recommend(config=config, db_url=_sqlite_url(tmp_path), return_state=True)
    assert time.perf_counter() - started < 40
    assert state.is_failed()
    run = Store(_sqlite_url(tmp_path)).latest_runs(limit=1).iloc[0]
    assert run["status"] == "partial" and "ease" in run["error"]


# A flow run in its own process whose EASE fit hangs (writing a marker file first), so that the test can send
# the process a signal while the models train.
_HANGING_RUN = """
import signal, sys, time
from pathlib import Path
# A parent that ignores SIGINT (a shell's background job, nohup) passes that on, and Python then installs no
# KeyboardInterrupt handler: restore it, or the SIGINT case tests the launcher, not the flow.
signal.signal(signal.SIGINT, signal.default_int_handler)
from recmodels.baselines.ease import EASE

def hang(self, data, settings=None, *args, **kwargs):
    Path(sys.argv[1]).write_text("fitting")
    for step in range(900):  # a long fit that reports its progress, as the iterative models do
        time.sleep(0.1)
        if settings is not None:
            settings.report("ease", step / 900)

EASE.fit = hang
from flows.recommend import recommend
from recforge.config import RunConfig
recommend(config=RunConfig.model_validate_json(sys.argv[2]), db_url=sys.argv[3])
"""


@pytest.mark.flow
@pytest.mark.parametrize(
    "signal_number", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["SIGTERM", "SIGINT", "SIGKILL"]
)
@pytest.mark.usefixtures("prefect_harness")
def test_an_interrupted_or_killed_run_is_closed_as_failed_not_left_running(tmp_path: Path, signal_number: int) -> None:
    from prefect.settings import PREFECT_API_URL

    marker, url = tmp_path / "fitting", _sqlite_url(tmp_path)
    config = RunConfig(
        source=resolve(GOOD_SOURCE, CORPUS),
        as_of=datetime(2022, 1, 1, tzinfo=UTC),
        models=["popularity", "ease"],
        output_dir=str(tmp_path / "var"),
    )
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    child = subprocess.Popen(
        [sys.executable, "-c", _HANGING_RUN, str(marker), config.model_dump_json(), url],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert child.poll() is None, f"the run ended before its model trained: {child.stderr.read()}"
            assert time.monotonic() < deadline, "the model never started training"
            time.sleep(0.2)
        store = Store(url)
        assert store.latest_runs(limit=1).iloc[0]["status"] == "running"
        child.send_signal(signal_number)
        if signal_number == signal.SIGKILL:
            # Nothing runs in a killed process: the row stays 'running' until the next run on this host sees
            # that its process is gone and closes it.
            child.wait(timeout=30)
            assert store.latest_runs(limit=1).iloc[0]["status"] == "running"
            from flows.recommend import recommend

            recommend(config=config.model_copy(update={"models": ["popularity"]}), db_url=url)
            killed = store.latest_runs(limit=2).iloc[1]
            assert killed["status"] == "failed" and killed["error"].startswith("abandoned: its process")
            assert killed["finished_at"] is not None
            store.dispose()
            return
        deadline = time.monotonic() + 60
        while (run := store.latest_runs(limit=1).iloc[0])["status"] == "running":
            if time.monotonic() > deadline:
                child.kill()  # its log says where the interruption went (it failed twice in CI, never here)
                _, log = child.communicate(timeout=30)
                raise AssertionError(f"the interrupted run was left 'running'; the run's log ends:\n{log[-4000:]}")
            time.sleep(0.2)
        # The fit still training in its thread stops at its next progress report: before, the process waited for
        # it to end (90 s here; a minute for a long ALS in QA).
        child.wait(timeout=45)
        name = "TerminationSignal" if signal_number == signal.SIGTERM else "KeyboardInterrupt"
        assert run["status"] == "failed"
        assert f"interrupted by {name}" in run["error"] and "'prepare'" in run["error"]
        assert run["finished_at"] is not None
        assert published(store).empty  # interrupted while training: nothing of this run was published
        store.dispose()
    finally:
        child.kill()
        child.wait(timeout=30)


# ------------------------------------------------------------------------------------------------ concurrency


def _publish_together(url: str, jobs: list[tuple[datetime, pd.DataFrame, ChampionDecision]]) -> list[Any]:
    """Publish every job from its own thread and Store at the same moment; returns each result or error."""
    stores = [Store(url) for _ in jobs]
    run_ids = [start_run(store, as_of) for store, (as_of, _, _) in zip(stores, jobs, strict=True)]
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)

    def work(i: int) -> None:
        as_of, frame, decision = jobs[i]
        barrier.wait()
        try:
            results[i] = stores[i].publish(run_ids[i], as_of, frame, decision)
        except Exception as exc:  # reported by the caller's assertions
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for store in stores:
        store.dispose()
    return results


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url = _sqlite_url(tmp_path) if request.param == "sqlite" else request.getfixturevalue("pg_url")
    store = Store(url)
    store.create_schema()
    store.dispose()
    yield url


def test_two_publishes_of_the_same_as_of_leave_one_of_them_whole(any_url: str) -> None:
    store = Store(any_url)
    for attempt in range(3):
        a, b = recommendations(CONCURRENT_USERS, tag="a"), recommendations(CONCURRENT_USERS, tag="b")
        jobs = [(AS_OF, a, champion(value=0.4)), (AS_OF, b, champion(value=0.6))]
        results = _publish_together(any_url, jobs)
        assert results == [len(a), len(b)], results
        rows = published(store, AS_OF)
        winner = rows["item_id"].str[0].unique().tolist()
        assert len(winner) == 1, f"attempt {attempt}: rows of both publishes mixed: {winner}"
        expected = a if winner == ["a"] else b
        assert_same_rows(rows, as_published(expected, AS_OF))
        # The champion row comes from the same publish as the rows.
        assert champions(store)["value"].tolist() == [0.4 if winner == ["a"] else 0.6]
    store.dispose()


def test_two_publishes_of_different_dates_both_succeed(any_url: str) -> None:
    store = Store(any_url)
    a, b = recommendations(CONCURRENT_USERS, tag="a"), recommendations(CONCURRENT_USERS, tag="b")
    jobs = [(EARLIER, a, champion(value=0.4)), (AS_OF, b, champion(value=0.6))]
    results = _publish_together(any_url, jobs)
    assert results == [len(a), len(b)], results
    assert_same_rows(published(store, EARLIER), as_published(a, EARLIER))
    assert_same_rows(published(store, AS_OF), as_published(b, AS_OF))
    assert champions(store)["value"].tolist() == [0.4, 0.6]
    assert set(served(store)["item_id"].str[0]) == {"b"}  # the view serves the later date
    store.dispose()
