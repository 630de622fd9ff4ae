"""Content-addressed caching of ingest, validate and prepare: the fingerprints, and reruns of the recommend flow
that take the cached results (after a failed training task) or recompute them (after the input changed)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np
import pandas as pd
import pytest

from recforge.config import RunConfig
from recforge.data.synthetic import generate_synthetic
from tasks.caching import (
    ContentHash,
    Unfingerprintable,
    fingerprint,
    folder_fingerprint,
    frame_fingerprint,
    source_fingerprint,
)
from tests.synthetic_files import write_synthetic_csv


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": pd.Series(["u1", "u2", "u3"], dtype="str"),
            "rating": [4.0, np.nan, 2.5],
            "timestamp": pd.to_datetime([1, 2, 3], unit="s", utc=True),
        }
    )


def test_frame_fingerprint_follows_values_names_types_and_order() -> None:
    base = frame_fingerprint(_frame())
    assert frame_fingerprint(_frame()) == base  # deterministic, NaN included
    changed = _frame()
    changed.loc[1, "rating"] = 3.0
    assert frame_fingerprint(changed) != base
    assert frame_fingerprint(_frame().rename(columns={"rating": "stars"})) != base
    assert frame_fingerprint(_frame().astype({"rating": "float32"})) != base
    assert frame_fingerprint(_frame().iloc[::-1]) != base
    assert frame_fingerprint(_frame().iloc[::-1].reset_index(drop=True)) != base


def test_fingerprint_of_datasets_and_containers() -> None:
    small = generate_synthetic(n_users=30, n_items=20, n_events=300)
    assert fingerprint(small) == fingerprint(generate_synthetic(n_users=30, n_items=20, n_events=300))
    assert fingerprint(small) != fingerprint(generate_synthetic(n_users=30, n_items=20, n_events=300, seed=7))
    assert fingerprint(small) != fingerprint(dataclasses.replace(small, rating_range=(0.0, 10.0)))
    assert fingerprint({"b": 1, "a": [1, 2]}) == fingerprint({"a": [1, 2], "b": 1})
    assert fingerprint([1, 2]) != fingerprint((1, 2)) != fingerprint([2, 1])
    assert fingerprint(1) != fingerprint(1.0) != fingerprint("1")
    when = datetime(2024, 1, 1, tzinfo=UTC)
    assert fingerprint(when) != fingerprint(when.replace(hour=1))
    assert fingerprint(np.arange(3)) != fingerprint(np.arange(3).astype("float64"))
    with pytest.raises(Unfingerprintable):
        fingerprint(object())
    with pytest.raises(Unfingerprintable):
        fingerprint(pd.DataFrame({"tags": [["a"], ["b"]]}))  # lists in cells cannot be hashed


def test_source_fingerprint_reads_file_contents(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\nu1,i1,1\n")
    source = {"kind": "csv", "interactions": str(events)}
    first = source_fingerprint(source)
    os.utime(events, (1_000_000, 1_000_000))  # touched, same bytes: same key
    assert source_fingerprint(source) == first
    events.write_text("user_id,item_id,timestamp\nu1,i2,1\n")  # same size, other content
    assert source_fingerprint(source) != first
    assert source_fingerprint({**source, "sep": ";"}) != source_fingerprint(source)  # settings count too
    assert source_fingerprint({"kind": "synthetic"}) != source_fingerprint({"kind": "synthetic", "seed": 1})
    with pytest.raises(Unfingerprintable, match="SQL"):
        source_fingerprint({"kind": "sql", "source_url": "sqlite:///x.db", "table": "events"})
    with pytest.raises(Unfingerprintable, match="does not exist"):
        source_fingerprint({"kind": "csv", "interactions": str(tmp_path / "missing.csv")})


def test_ml100k_source_fingerprint_covers_the_folder(ml100k_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ml"
    copy.mkdir()
    for name in ("u.data", "u.user", "ml-100k.item"):
        (copy / name).write_bytes((ml100k_dir / name).read_bytes())
    before = source_fingerprint({"kind": "movielens-100k", "data_dir": str(copy)})
    (copy / "u.user").write_bytes((ml100k_dir / "u.user").read_bytes().replace(b"|M|", b"|F|", 1))
    assert source_fingerprint({"kind": "movielens-100k", "data_dir": str(copy)}) != before


def test_content_hash_policy_keys() -> None:
    policy = ContentHash(stage="validate")
    small = generate_synthetic(n_users=30, n_items=20, n_events=300)
    key = policy.compute_key(None, {"dataset": small, "min_interactions": 10}, {})  # type: ignore[arg-type]
    assert isinstance(key, str) and key.startswith("recforge-validate-") and len(key) == len("recforge-validate-") + 64
    assert key == policy.compute_key(None, {"min_interactions": 10, "dataset": small}, {})  # type: ignore[arg-type]
    assert key != policy.compute_key(None, {"dataset": small, "min_interactions": 11}, {})  # type: ignore[arg-type]
    assert key != ContentHash(stage="other").compute_key(None, {"dataset": small, "min_interactions": 10}, {})  # type: ignore[arg-type]
    # An input without a fingerprint turns caching off instead of failing the task.
    ingest = ContentHash(stage="ingest", special={"source": source_fingerprint})
    sql = {"kind": "sql", "source_url": "sqlite:///x.db", "table": "events"}
    assert ingest.compute_key(None, {"source": sql}, {}) is None  # type: ignore[arg-type]


def test_validation_of_events_ahead_of_the_clock_is_never_cached() -> None:
    # The report flags (and cleaning drops) events ahead of ITS clock: reused a minute later, it dropped events
    # that had come to pass by then. Data without future events is cached as before.
    from tasks.validate import validate

    policy = validate.cache_policy
    small = generate_synthetic(n_users=30, n_items=20, n_events=300)
    assert policy.compute_key(None, {"dataset": small, "min_interactions": 10, "data_docs_dir": None}, {}) is not None  # type: ignore[union-attr, arg-type]
    ahead = small.interactions.copy()
    ahead.loc[0, "timestamp"] = pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=40)
    skewed = dataclasses.replace(small, interactions=ahead)
    assert policy.compute_key(None, {"dataset": skewed, "min_interactions": 10, "data_docs_dir": None}, {}) is None  # type: ignore[union-attr, arg-type]


# -- whole flow reruns --------------------------------------------------------------------------------------


def _task_states(flow_run_id: UUID) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs if run.state is not None}


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_rerun_after_failed_training_reuses_ingest_validate_prepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.ingest
    import tasks.train
    from flows.recommend import recommend

    loads: list[str] = []
    real_load: Callable[..., Any] = tasks.ingest.load_dataset

    def counting_load(spec: Any) -> Any:
        loads.append(spec.describe())
        return real_load(spec)

    monkeypatch.setattr(tasks.ingest, "load_dataset", counting_load)
    # The input is a file of this test only, so no earlier test can have cached it.
    path = tmp_path / "events.csv"
    events = write_synthetic_csv(path, n_users=100, n_items=60, n_events=2500)
    config = RunConfig(
        source={"kind": "csv", "interactions": str(path)},
        as_of=datetime(2024, 5, 1, tzinfo=UTC),
        models=["popularity"],
        top_n=5,
        output_dir=str(tmp_path / "var"),
    )
    url = f"sqlite:///{tmp_path / 'cache.db'}"

    # 1. Training breaks: the run fails after ingest, validation and preparation succeeded.
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("training node lost")

    monkeypatch.setattr(tasks.train, "evaluate", broken)
    failed = recommend(config=config, db_url=url, return_state=True)
    assert failed.is_failed()
    states = _task_states(failed.state_details.flow_run_id)
    assert (states["ingest"], states["validate"], states["prepare"]) == ("Completed",) * 3
    assert len(loads) == 1

    # 2. The rerun takes those three from the cache and only trains and publishes.
    monkeypatch.undo()
    monkeypatch.setattr(tasks.ingest, "load_dataset", counting_load)
    rerun = recommend(config=config, db_url=url, return_state=True)
    assert rerun.is_completed()
    states = _task_states(rerun.state_details.flow_run_id)
    assert (states["ingest"], states["validate"], states["prepare"]) == ("Cached",) * 3
    assert states["evaluate"] == "Completed"
    assert len(loads) == 1
    users_before = events.loc[events["timestamp"] < config.as_of.timestamp(), "user_id"].nunique()
    assert rerun.result()["rows_written"]["recommendations"] == 5 * users_before

    # 3. Another as_of reuses the data set and its validation but prepares again.
    june = config.model_copy(update={"as_of": datetime(2024, 6, 1, tzinfo=UTC)})
    later = recommend(config=june, db_url=url, return_state=True)
    states = _task_states(later.state_details.flow_run_id)
    assert (states["ingest"], states["validate"], states["prepare"]) == ("Cached", "Cached", "Completed")
    assert later.is_completed() and len(loads) == 1

    # 4. A changed input file is read again.
    events.head(2000).to_csv(path, index=False)
    changed = recommend(config=config, db_url=url, return_state=True)
    states = _task_states(changed.state_details.flow_run_id)
    assert (states["ingest"], states["validate"], states["prepare"]) == ("Completed",) * 3
    assert len(loads) == 2
    assert changed.result()["row_counts"]["loaded"] == 2000

    # 5. The same relative output folder in two checkouts: the second validates again and points at its own
    #    Data Docs, never into the first checkout (whose folder may be deleted with it).
    relative = config.model_copy(update={"output_dir": "var"})
    for checkout in ("one", "two"):
        (tmp_path / checkout).mkdir()
        monkeypatch.chdir(tmp_path / checkout)
        run = recommend(config=relative, db_url=url, return_state=True)
        assert _runs_of(run.state_details.flow_run_id, "validate") == ["Completed"]
        docs = Path(run.result()["data_docs"])
        assert docs.is_file() and (tmp_path / checkout / "var").resolve() in docs.resolve().parents

    # 6. A cached report whose Data Docs site was deleted since is validated again, so the page exists.
    shutil.rmtree(tmp_path / "two" / "var" / "gx")
    again = recommend(config=relative, db_url=url, return_state=True)
    assert _runs_of(again.state_details.flow_run_id, "validate") == ["Cached", "Completed"]
    assert Path(again.result()["data_docs"]).is_file()


def _runs_of(flow_run_id: UUID, task_name: str) -> list[str]:
    """States of one task's runs in a flow run, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )
    return [run.state.name for run in runs if run.state is not None and run.name.rsplit("-", 1)[0] == task_name]


def test_folder_fingerprint_is_the_absolute_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    here = folder_fingerprint(Path("var/gx"))
    assert here == folder_fingerprint(tmp_path / "a" / "var" / "gx") == folder_fingerprint("var/gx")
    monkeypatch.chdir(tmp_path / "b")
    assert folder_fingerprint(Path("var/gx")) != here
    assert folder_fingerprint(None) == fingerprint(None)
