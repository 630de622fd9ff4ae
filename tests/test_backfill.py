"""Backfills: the date range, then whole backfill runs under prefect_test_harness with a date that fails, a rerun
that skips what was published, a forced rerun that replaces without duplicating, and the CLI."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from prefect.task_runners import ThreadPoolTaskRunner
from threadpoolctl import threadpool_info

from flows import runners
from flows.backfill import OUTCOME_COLUMNS, BackfillFailed, as_of_dates, output_settings, published_runs
from recforge.config import DB_URL_ENV, ConfigError, RunConfig
from recforge.data.sources import SourceSpec
from recforge.data.synthetic import generate_synthetic
from recforge.store import Store, mask_source

SYNTHETIC = {"kind": "synthetic", "synthetic_users": 120, "synthetic_items": 80, "synthetic_events": 3000}
# The synthetic events start on 2024-01-01: the first date has no history and fails; the others run.
START, END, STEP = date(2023, 12, 20), date(2024, 3, 9), 40
DATES = ["2023-12-20", "2024-01-29", "2024-03-09"]


def test_as_of_dates_are_utc_midnights_every_step_days() -> None:
    assert as_of_dates(date(2024, 2, 27), date(2024, 3, 2), 2) == [
        datetime(2024, 2, 27, tzinfo=UTC),
        datetime(2024, 2, 29, tzinfo=UTC),  # a leap day
        datetime(2024, 3, 2, tzinfo=UTC),
    ]
    assert as_of_dates(date(2024, 1, 1), date(2024, 1, 2), 5) == [datetime(2024, 1, 1, tzinfo=UTC)]
    assert len(as_of_dates(date(1998, 1, 1), date(1998, 1, 31))) == 31


@pytest.mark.parametrize(
    ("start", "end", "step", "message"),
    [
        (date(2024, 1, 2), date(2024, 1, 1), 1, "before start"),
        (date(2024, 1, 1), date(2024, 1, 2), 0, "at least 1 day"),
        (date(2000, 1, 1), date(2024, 1, 1), 1, "more than 1000"),
        (datetime(2024, 1, 1), date(2024, 1, 2), 1, "dates"),
    ],
)
def test_as_of_dates_rejects_bad_ranges(start: date, end: date, step: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        as_of_dates(start, end, step)


def _read(url: str, query: str) -> pd.DataFrame:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return pd.read_sql(sa.text(query), conn)
    finally:
        engine.dispose()


def _recommendations(url: str) -> pd.DataFrame:
    frame = _read(url, "SELECT as_of, model, user_id, rank, item_id, score FROM recommendations")
    return frame.sort_values(["as_of", "model", "user_id", "rank"]).reset_index(drop=True)


def _artifact(flow_run_id: Any) -> list[dict[str, Any]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["backfill"]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )
    assert len(found) == 1
    data = found[0].data
    return json.loads(data) if isinstance(data, str) else data


def _run(url: str, config: RunConfig, **options: Any) -> tuple[Any, list[dict[str, Any]]]:
    from flows.backfill import backfill

    state = backfill(start=START, end=END, step=STEP, config=config, db_url=url, return_state=True, **options)
    result = state.result(raise_on_failure=False)
    assert isinstance(result, BackfillFailed), f"expected the failing date to fail the backfill, got {result!r}"
    assert state.is_failed() and "2023-12-20" in str(result)
    records = result.outcomes
    assert [r["date"] for r in records] == DATES
    assert all(list(r) == list(OUTCOME_COLUMNS) for r in records)
    # The artifact holds the same per-date outcomes.
    shown = _artifact(state.state_details.flow_run_id)
    assert [(r["date"], r["status"], r["rows"]) for r in shown] == [
        (r["date"], r["status"], r["rows"]) for r in records
    ]
    return state, records


def test_the_flows_refuse_a_future_as_of_as_the_cli_does(tmp_path: Path) -> None:
    # A run of the backfill/manual or recommend/nightly deployment (parameters typed in the dashboard) does not
    # pass through the CLI: a typo such as 2062 for 2026 published a date served over every nightly run till then.
    from flows.backfill import backfill
    from flows.recommend import recommend

    with pytest.raises(ConfigError, match=r"end 2999-01-01T00:00:00\+00:00 is in the future"):
        backfill.fn(start=date(2998, 12, 1), end=date(2999, 1, 1), db_url=f"sqlite:///{tmp_path / 'b.db'}")
    with pytest.raises(ConfigError, match=r"config.as_of 2999-01-01T00:00:00\+00:00 is in the future"):
        recommend.fn(config=RunConfig(as_of=datetime(2999, 1, 1, tzinfo=UTC)), db_url=f"sqlite:///{tmp_path / 'r.db'}")
    assert not (tmp_path / "b.db").exists() and not (tmp_path / "r.db").exists()  # refused before anything


def test_a_backfill_refuses_a_missing_folder_once_not_for_every_date(tmp_path: Path) -> None:
    from flows.backfill import backfill
    from recforge.data.contract import DataError

    config = RunConfig(source={"kind": "movielens-100k", "data_dir": str(tmp_path / "nodir")})
    with pytest.raises(DataError, match=r"MovieLens folder .*nodir does not exist"):
        backfill.fn(
            start=date(1998, 4, 1), end=date(1998, 4, 6), config=config, db_url=f"sqlite:///{tmp_path / 'b.db'}"
        )
    assert not (tmp_path / "b.db").exists()  # no run rows: nothing ran


def test_a_source_that_differs_anywhere_is_another_source_for_the_skip() -> None:
    # The runs table's source line shortens a query to 60 characters: a backfill whose WHERE clause changed
    # further on skipped every date and kept serving the old query's rows.
    query = "SELECT user_id, item_id, rating, ts AS timestamp FROM events WHERE region = '{}'"
    eu, us = (
        RunConfig(source={"kind": "sql", "source_url": "sqlite:///src.db", "query": query.format(r)})
        for r in ("EU", "US")
    )
    assert mask_source(SourceSpec.from_mapping(eu.source).describe()) == mask_source(
        SourceSpec.from_mapping(us.source).describe()
    )
    assert output_settings(eu.recorded_parameters(), ["popularity"]) != output_settings(
        us.recorded_parameters(), ["popularity"]
    )
    # Spelled-out defaults are the same source; a recorded source this version cannot read is compared as it is.
    spelled = RunConfig(source={**eu.source, "sep": None, "timestamp_unit": "s"})
    assert output_settings(spelled.recorded_parameters(), ["popularity"]) == output_settings(
        eu.recorded_parameters(), ["popularity"]
    )
    assert output_settings({"source": {"kind": "gone"}}, ["popularity"])["source"] == {"kind": "gone"}


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_backfill_failed_date_rerun_skips_and_force_replaces(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'backfill.db'}"
    config = RunConfig(source=SYNTHETIC, models=["popularity", "item_knn"], top_n=5, output_dir=str(tmp_path / "var"))

    # 1. The first date fails (no events before it); the two others run anyway and are published.
    _, first = _run(url, config, concurrency=2)
    assert [r["status"] for r in first] == ["failed", "completed", "completed"]
    assert "no interactions" in first[0]["error"] and first[0]["rows"] == 0
    assert first[1]["error"] is None and first[1]["champion"] in {"popularity", "item_knn"}
    recs = _recommendations(url)
    counts = recs.groupby(recs["as_of"].str[:10]).size()
    assert [first[1]["rows"], first[2]["rows"]] == [counts["2024-01-29"], counts["2024-03-09"]]
    # Each date saw only its past: the user features of a date count only events before it.
    events = generate_synthetic(n_users=120, n_items=80, n_events=3000).interactions
    activity = _read(url, "SELECT as_of, entity_id, value FROM features WHERE feature = 'activity_count'")
    for day in ("2024-01-29", "2024-03-09"):
        before = events[events["timestamp"] < pd.Timestamp(day, tz="UTC")]
        counted = activity[activity["as_of"].str.startswith(day)]
        assert 0 < counted["value"].sum() <= len(before)
        assert set(counted["entity_id"]) <= set(before["user_id"])
        assert (recs[recs["as_of"].str.startswith(day)].groupby(["model", "user_id"])["rank"].max() == 5).all()
    assert activity[activity["as_of"].str.startswith("2024-01-29")]["value"].sum() < len(events) / 2
    runs = _read(url, "SELECT run_id, status FROM runs")
    assert sorted(runs["status"]) == ["completed", "completed", "failed"]

    # 2. A rerun retries only the failed date; the published ones are skipped and point at their runs.
    _, second = _run(url, config)
    assert [r["status"] for r in second] == ["failed", "skipped", "skipped"]
    assert [r["run_id"] for r in second[1:]] == [r["run_id"] for r in first[1:]]
    assert [r["rows"] for r in second[1:]] == [r["rows"] for r in first[1:]]
    assert len(_read(url, "SELECT run_id FROM runs")) == 4
    pd.testing.assert_frame_equal(_recommendations(url), recs)

    # Skipping needs a completed run with every requested model: asking for one more model reruns the date.
    store = Store(url)
    source = mask_source(SourceSpec.from_mapping(SYNTHETIC).describe())
    dates = as_of_dates(START, END, STEP)
    assert sorted(d.date().isoformat() for d in published_runs(store, source, dates, ["popularity"])) == DATES[1:]
    assert published_runs(store, source, dates, ["popularity", "ease"]) == {}
    assert published_runs(store, "csv(interactions=other.csv)", dates, ["popularity"]) == {}
    # ... and the same output settings: another top-N, seed or hyperparameters make other rows, so they rerun.
    same = output_settings(config.recorded_parameters(), ["popularity"])
    assert len(published_runs(store, source, dates, ["popularity"], same)) == len(DATES) - 1
    for changed in ({"top_n": 7}, {"seed": 1}, {"model_params": {"popularity": {"recent_days": 30.0}}}):
        other = output_settings(config.model_copy(update=changed).recorded_parameters(), ["popularity"])
        assert published_runs(store, source, dates, ["popularity"], other) == {}, changed
    unrelated = config.model_copy(update={"model_params": {"ease": {"regularization": 50.0}}, "max_workers": 1})
    assert published_runs(
        store, source, dates, ["popularity"], output_settings(unrelated.recorded_parameters(), ["popularity"])
    )

    # 3. Forced: every date runs again and the same rows replace the old ones, without duplicates.
    _, forced = _run(url, config, force=True)
    assert [r["status"] for r in forced] == ["failed", "completed", "completed"]
    assert {r["run_id"] for r in forced[1:]}.isdisjoint(r["run_id"] for r in first[1:])
    assert [r["rows"] for r in forced] == [r["rows"] for r in first]
    pd.testing.assert_frame_equal(_recommendations(url), recs)
    assert len(_read(url, "SELECT run_id FROM runs")) == 7

    # 4. What is published decides, not the history: a later run that replaced one date's popularity rows with a
    # top-3 makes that date due again for a top-5 backfill (it was "skipped", naming the run whose rows were gone).
    settings = output_settings(config.recorded_parameters(), ["popularity", "item_knn"])
    assert len(published_runs(store, source, dates, ["popularity", "item_knn"], settings)) == 2
    top3 = config.model_copy(update={"top_n": 3, "models": ["popularity"]})
    replacing = store.start_run(
        dataset="synthetic", source=source, as_of=dates[1], parameters=top3.recorded_parameters(), flow_run_id=None
    )
    store.publish(replacing, dates[1], _recommendations(url).query("model == 'popularity'").head(3), None)
    store.finish_run(replacing, status="completed", timings={})
    due = published_runs(store, source, dates, ["popularity", "item_knn"], settings)
    assert sorted(d.date().isoformat() for d in due) == DATES[2:]


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_cli_backfill_reports_each_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    monkeypatch.setenv(DB_URL_ENV, f"sqlite:///{tmp_path / 'cli.db'}")
    config = tmp_path / "run.toml"
    config.write_text(
        "[run]\nmodels = ['popularity']\ntop_n = 3\n[run.source]\nkind = 'synthetic'\n"
        "synthetic_users = 120\nsynthetic_items = 80\nsynthetic_events = 3000\n"
    )
    argv = ["backfill", "--config", str(config), "--output-dir", str(tmp_path / "var"), "--end", "2024-03-09"]
    assert main([*argv, "--start", "2024-03-08"]) == 0
    assert main([*argv, "--start", "2024-03-07"]) == 0
    out = capsys.readouterr().out
    table = out[out.rindex("recforge backfill") :].splitlines()
    assert [line.split()[:2] for line in table[2:]] == [
        ["2024-03-07", "completed"],
        ["2024-03-08", "skipped"],
        ["2024-03-09", "skipped"],
    ]
    assert not [word for line in table for word in line.split() if word.lower() == "nan"]  # blanks, not NaN
    # A failing date makes the command fail, after the other dates ran.
    assert main([*argv, "--start", "2023-12-31", "--step", "69"]) == 1
    out = capsys.readouterr().out
    table_text, *errors = out[out.rindex("recforge backfill") :].split("\n\n")
    lines = table_text.splitlines()[2:]
    assert [line.split()[:2] for line in lines] == [["2023-12-31", "failed"], ["2024-03-09", "skipped"]]
    assert lines[0].split()[2:4] == ["0", "DataError:"]  # no champion: a blank, not NaN
    # The table cuts errors short (often right before the fix); below it each one is whole, with its dates.
    [error] = [e.strip() for e in errors]
    assert error.startswith("2023-12-31: DataError: no interactions of 'synthetic' happened before") and (
        "the data's first event is" in error  # the end of the message, past the table's 80 characters
    ), error
    # Dates before the data fail alike: one paragraph for all of them, not one each (the as_of in it aside).
    assert main([*argv[:-2], "--start", "2023-12-29", "--end", "2023-12-31"]) == 1
    out = capsys.readouterr().out
    [grouped] = [e.strip() for e in out[out.rindex("recforge backfill") :].split("\n\n")[1:]]
    assert grouped.startswith("2023-12-29, 2023-12-30, 2023-12-31: DataError: no interactions of 'synthetic' ")
    assert "as_of=<as_of>" in grouped
    # An --end past today is fine when the step never reaches it: the last date run is what counts.
    assert main([*argv[:-2], "--start", "2024-03-09", "--end", "2999-01-01", "--step", "365000"]) == 0
    assert main([*argv, "--start", "2024-03-10"]) == 2  # end before start: a usage error, nothing runs
    assert "before start" in capsys.readouterr().err
    # Dates meant to run as runs of a deployment that does not exist: refused before any child starts.
    assert main([*argv, "--start", "2024-03-09", "--deployment", "recommend/missing"]) == 2
    assert "deployment 'recommend/missing' does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("cores", "children", "slots", "blas"), [(2, 2, 1, 1), (8, 2, 4, 1), (8, 3, 2, 1), (2, 1, 2, 1)]
)
def test_in_process_dates_share_the_cores(
    monkeypatch: pytest.MonkeyPatch, cores: int, children: int, slots: int, blas: int
) -> None:
    # Two dates side by side in one process must not each keep one model task per core in flight, each with
    # its own BLAS share: they split the cores, and BLAS is limited from the backfill's (main) thread.
    from flows import backfill as backfill_module

    monkeypatch.setattr(backfill_module, "available_cores", lambda: cores)
    for name in backfill_module.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(runners, "available_cores", lambda: cores)
    config, shared = backfill_module._share_cores(RunConfig(), children, in_process=True)
    assert config.max_workers == slots
    assert runners.task_threads(ThreadPoolTaskRunner(), slots) == cores // slots  # one run alone
    with shared:
        assert _blas_thread_counts() == {blas}
        # Each child's model tasks get the same share for torch (they would take cores // slots alone).
        assert runners.task_threads(ThreadPoolTaskRunner(), slots) == blas
    assert runners.task_threads(ThreadPoolTaskRunner(), slots) == cores // slots


def test_dates_side_by_side_split_torch_threads_under_chosen_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows import backfill as backfill_module

    monkeypatch.setattr(backfill_module, "available_cores", lambda: 8)
    monkeypatch.setattr(runners, "available_cores", lambda: 8)
    for name in backfill_module.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    config, shared = backfill_module._share_cores(RunConfig(max_workers=2), 2, in_process=True)
    with shared:  # two dates × two tasks on 8 cores: 2 threads each, for BLAS and for torch
        assert _blas_thread_counts() == {2}
        assert runners.task_threads(ThreadPoolTaskRunner(), config.max_workers) == 2
        with runners.runs_side_by_side(4):  # overlapping blocks: the most runs side by side wins
            assert runners.task_threads(ThreadPoolTaskRunner(), config.max_workers) == 1
        assert runners.task_threads(ThreadPoolTaskRunner(), config.max_workers) == 2
    assert runners.task_threads(ThreadPoolTaskRunner(), config.max_workers) == 4


def test_dates_on_workers_or_with_chosen_slots_keep_their_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows import backfill as backfill_module

    monkeypatch.setattr(backfill_module, "available_cores", lambda: 8)
    chosen = RunConfig(max_workers=3)
    assert backfill_module._share_cores(chosen, 2, in_process=True)[0].max_workers == 3
    assert backfill_module._share_cores(RunConfig(), 2, in_process=False)[0].max_workers is None  # a deployment
    assert backfill_module._share_cores(RunConfig(task_runner="process"), 2, in_process=True)[0].max_workers is None
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")  # the user's own BLAS setting wins
    before = _blas_thread_counts()
    with backfill_module._share_cores(RunConfig(), 2, in_process=True)[1]:
        assert _blas_thread_counts() == before


def _blas_thread_counts() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}
