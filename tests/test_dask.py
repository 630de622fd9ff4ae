"""The recommend flow on a real local Dask cluster of two worker processes (`recforge run --task-runner dask`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from prefect import flow, task

from flows.cli import main
from flows.runners import THREAD_VARIABLES, local_dask_cluster, make_task_runner, release_workers
from recforge import handoff
from recforge.config import DB_URL_ENV
from recforge.data.synthetic import generate_synthetic

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_harness")]

SOURCE = "[run]\nmodels = ['popularity', 'item_knn']\ntop_n = 7\n[run.source]\nkind = 'synthetic'\n" + (
    "synthetic_users = 150\nsynthetic_items = 90\nsynthetic_events = 4000\n"
)


def _joined_by_may() -> int:
    """The users of SOURCE's data set with events before 2024-05-01, the runs' as_of (131 of 150): later ones are
    not in that date's catalogue, so they get no rows."""
    events = generate_synthetic(n_users=150, n_items=90, n_events=4000).interactions
    return int(events.loc[events["timestamp"] < pd.Timestamp("2024-05-01", tz="UTC"), "user_id"].nunique())


@pytest.fixture
def dask_cluster() -> Iterator[Any]:
    """A LocalCluster of two single-threaded worker processes (as ``--task-runner dask`` starts), closed afterwards."""
    cluster = local_dask_cluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        yield cluster
    finally:
        cluster.close()


def test_local_workers_keep_glibc_malloc_tuning_and_one_blas_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dask's default MALLOC_TRIM_THRESHOLD_ doubled training time on its workers; ours start without it."""
    from distributed import Client

    # A cluster started with Dask's defaults earlier in this process would have put it into os.environ.
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    names = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    with (
        local_dask_cluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        environments = client.run(lambda: {name: os.environ.get(name) for name in names})
    expected = {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    assert list(environments.values()) == [expected]


@task
def _worker_threads() -> tuple[int, int]:
    import torch

    return os.getpid(), torch.get_num_threads()


def test_process_workers_split_the_cores_between_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of N spawned workers starts torch/OpenBLAS with cores // N threads, not one per core."""
    from prefect.settings import PREFECT_API_URL

    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # The process runner needs a server its workers can reach: the session's test server.
    monkeypatch.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))

    @flow(task_runner=make_task_runner("process", max_workers=2))
    def probe() -> list[tuple[int, int]]:
        return [future.result() for future in [_worker_threads.submit() for _ in range(4)]]

    answers = probe()
    cores = len(os.sched_getaffinity(0))
    assert {threads for _, threads in answers} == {max(1, cores // 2)}
    assert len({pid for pid, _ in answers} - {os.getpid()}) >= 1  # ran in worker processes
    assert not [name for name in THREAD_VARIABLES if name in os.environ]  # the flow's own environment restored


def test_the_flow_can_stop_its_process_workers_once_its_model_tasks_are_done(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the flow does after training on a process pool: the workers exit (they held the data), and the flow
    still ends cleanly when Prefect shuts the pool down again."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))

    @flow(task_runner=make_task_runner("process", max_workers=2))
    def train_then_release() -> tuple[set[int], str | None]:
        pids = {future.result()[0] for future in [_worker_threads.submit() for _ in range(4)]}
        context = FlowRunContext.get()
        assert context is not None
        return pids, release_workers(context.task_runner)

    pids, done = train_then_release()
    assert done == "stopped the process pool's worker processes"
    assert pids and os.getpid() not in pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone, not merely idle


def _cached_objects() -> int:
    return len(handoff._cache)


def _recommendations(url: str) -> pd.DataFrame:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            frame = pd.read_sql(sa.text("SELECT model, user_id, rank, item_id, score FROM recommendations"), conn)
    finally:
        engine.dispose()
    return frame.sort_values(["model", "user_id", "rank"]).reset_index(drop=True)


def test_models_train_on_dask_workers_and_publish_what_threads_publish(
    tmp_path: Path, dask_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import Client, get_task_stream

    config = tmp_path / "run.toml"
    config.write_text(SOURCE)
    common = ["run", "--config", str(config), "--as-of", "2024-05-01", "--output-dir", str(tmp_path / "var")]
    dask_url, thread_url = f"sqlite:///{tmp_path / 'dask.db'}", f"sqlite:///{tmp_path / 'thread.db'}"

    with Client(dask_cluster) as client, get_task_stream(client) as stream:
        monkeypatch.setenv(DB_URL_ENV, dask_url)
        assert main([*common, "--task-runner", "dask", "--dask-address", dask_cluster.scheduler_address]) == 0
        worker_pids = set(client.run(os.getpid).values())
        # Both workers read the prepared data for their tasks; once those were done the flow had them drop it, so
        # a long-lived cluster does not hold it while the flow publishes, nor until the next run.
        assert list(client.run(_cached_objects).values()) == [0, 0]

    # Both models' evaluation and refit ran as Dask tasks in the cluster's worker processes, not in this one.
    ran = [(t["key"], t["worker"]) for t in stream.data]
    names = sorted(key.rsplit("-", 1)[0] for key, _ in ran)
    assert names == ["evaluate_model", "evaluate_model", "recommend_model", "recommend_model"]
    assert {worker for _, worker in ran} <= set(dask_cluster.scheduler_info["workers"])
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids
    # The workers read the prepared data from one file the flow wrote (not a copy per task), removed at the end.
    handoff_dir = tmp_path / "var" / "handoff"
    assert handoff_dir.is_dir() and list(handoff_dir.iterdir()) == []

    published = _recommendations(dask_url)
    assert set(published["model"]) == {"popularity", "item_knn"}
    assert published["user_id"].nunique() == _joined_by_may()
    assert (published.groupby(["model", "user_id"])["rank"].max() == 7).all()

    # The same run on threads publishes exactly the same rows: the runner changes where tasks run, not results.
    monkeypatch.setenv(DB_URL_ENV, thread_url)
    assert main([*common, "--task-runner", "thread"]) == 0
    pd.testing.assert_frame_equal(published, _recommendations(thread_url))


def test_a_run_started_without_the_cli_uses_the_configured_runner(tmp_path: Path, dask_cluster: Any) -> None:
    """A deployment's worker calls the flow itself, on its default thread runner: ``task_runner = "dask"`` in the
    config must still put the model tasks on the Dask cluster (as a child flow run), not silently on threads."""
    from distributed import Client, get_task_stream
    from prefect.client.orchestration import get_client

    from flows.recommend import recommend
    from recforge.config import RunConfig

    url = f"sqlite:///{tmp_path / 'deployed.db'}"
    config = RunConfig(
        source={"kind": "synthetic", "synthetic_users": 150, "synthetic_items": 90, "synthetic_events": 4000},
        as_of="2024-05-01T00:00:00Z",
        models=["popularity", "item_knn"],
        top_n=7,
        output_dir=str(tmp_path / "var"),
        task_runner="dask",
        dask_address=dask_cluster.scheduler_address,
    )
    with Client(dask_cluster) as client, get_task_stream(client) as stream:
        state = recommend(config=config, db_url=url, return_state=True)
    summary = state.result()

    assert summary["status"] == "completed"
    names = sorted(t["key"].rsplit("-", 1)[0] for t in stream.data)
    assert names == ["evaluate_model", "evaluate_model", "recommend_model", "recommend_model"]
    # The outer run records nothing itself: the child flow run on the Dask runner opened and closed the run.
    with get_client(sync_client=True) as prefect:
        child = prefect.read_flow_run(_flow_run_id(url))
        assert child.parent_task_run_id is not None
        parent_task = prefect.read_task_run(child.parent_task_run_id)
        assert parent_task.flow_run_id == state.state_details.flow_run_id
    published = _recommendations(url)
    assert set(published["model"]) == {"popularity", "item_knn"} and published["user_id"].nunique() == _joined_by_may()


def _flow_run_id(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(sa.text("SELECT flow_run_id FROM runs")).scalar_one())
    finally:
        engine.dispose()


def test_a_dask_address_is_checked_before_any_data_is_read(
    tmp_path: Path, dask_cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from distributed import LocalCluster

    from flows.runners import check_dask_scheduler
    from recforge.config import ConfigError
    from tests.test_faults import _closed_port

    assert check_dask_scheduler(dask_cluster.scheduler_address) == 2
    # Nothing there: refused in seconds. Before, the run failed after preparing the data and two 30 s attempts.
    closed = f"tcp://127.0.0.1:{_closed_port()}"
    with pytest.raises(ConfigError, match=rf"--dask-address {closed}: no Dask scheduler answered within 2 s"):
        check_dask_scheduler(closed, timeout_s=2)
    # A scheduler without workers: before, the run waited for ever.
    with (
        LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as empty,
        pytest.raises(ConfigError, match="the scheduler has no workers"),
    ):
        check_dask_scheduler(empty.scheduler_address)
    db = tmp_path / "rf.db"
    assert main(["run", "--task-runner", "dask", "--dask-address", closed, "--db-url", f"sqlite:///{db}"]) == 2
    assert "no Dask scheduler answered" in capsys.readouterr().err and not db.exists()
