"""Whole-flow runs under one session-wide ``prefect_test_harness``: synthetic, MovieLens 100K, bad input, CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from recforge.config import RunConfig
from recforge.data.synthetic import generate_synthetic
from recforge.store import Store
from recmodels.base import RunSettings
from tests.synthetic_files import write_synthetic_csv

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_harness")]


def _table(url: str, name: str) -> pd.DataFrame:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return pd.read_sql(sa.text(f"SELECT * FROM {name}"), conn)  # test-only, fixed names
    finally:
        engine.dispose()


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


@pytest.mark.slow
def test_default_run_trains_every_family_in_parallel(tmp_path: Path) -> None:
    """No --models: every registered model trains, each family is published, the best beats popularity."""
    from flows.recommend import recommend
    from recmodels.registry import families, model_names

    url = f"sqlite:///{tmp_path / 'rf.db'}"
    source = {"kind": "synthetic", "synthetic_users": 300, "synthetic_items": 250, "synthetic_events": 12_000}
    summary = recommend(config=RunConfig(source=source, top_n=10, output_dir=str(tmp_path / "var")), db_url=url)

    assert summary["status"] == "completed", summary["failed_models"]
    board = pd.DataFrame(summary["leaderboard"]).set_index("model")
    assert set(board.index) == set(model_names())
    assert {"baseline", "collaborative_filtering", "matrix_factorization", "neural"} <= set(families())
    assert set(board["family"]) == set(families())
    assert board["ndcg"].drop("popularity").max() > board.loc["popularity", "ndcg"]
    recs = _table(url, "recommendations")
    assert set(recs["model"]) == set(model_names())


def test_synthetic_run_publishes_every_model(tmp_path: Path) -> None:
    from flows.recommend import recommend

    url = f"sqlite:///{tmp_path / 'rf.db'}"
    config = RunConfig(models=["popularity", "item_knn"], top_n=20, output_dir=str(tmp_path / "var"))
    summary = recommend(config=config, db_url=url)

    assert summary["status"] == "completed"
    board = pd.DataFrame(summary["leaderboard"]).set_index("model")
    assert set(board.index) == {"popularity", "item_knn"}
    assert board.loc["item_knn", "ndcg"] > board.loc["popularity", "ndcg"]
    assert summary["champion"] == "item_knn"

    recs = _table(url, "recommendations")
    n_users = generate_synthetic().users["user_id"].nunique()
    for model in ("popularity", "item_knn"):
        per_model = recs[recs["model"] == model]
        assert per_model["user_id"].nunique() == n_users
        assert per_model.groupby("user_id")["rank"].max().max() == 20
        assert not per_model.duplicated(["user_id", "rank"]).any()
    runs = _table(url, "runs")
    assert runs["status"].tolist() == ["completed"]
    metrics = _table(url, "model_metrics")
    assert {"ndcg", "precision", "recall", "map", "mrr", "hit_rate", "coverage"} <= set(metrics["metric"])
    assert len(_table(url, "features")) > 0
    champion_rows = _table(url, "champion_recommendations")
    assert set(champion_rows["model"]) == {"item_knn"}

    # Reruns for the same as_of replace that as_of's rows instead of duplicating them.
    same_as_of = config.model_copy(update={"as_of": datetime.fromisoformat(summary["as_of"])})
    recommend(config=same_as_of, db_url=url)
    recommend(config=same_as_of, db_url=url)
    again = _table(url, "recommendations")
    assert len(again) == len(recs)
    assert not again.duplicated(["as_of", "model", "user_id", "rank"]).any()
    assert len(_table(url, "runs")) == 3


def test_thread_runner_tasks_get_their_share_of_the_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the thread runner each model task's thread runs torch on cores // tasks-in-flight threads (as process
    workers get through their environment), in its evaluation and in its refit, without naming a count in
    RunSettings (which would override the models that choose one thread on their own)."""
    import torch

    import tasks.train
    from flows import runners
    from flows.recommend import recommend

    for name in runners.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(runners, "available_cores", lambda: 2)  # two tasks in flight: one thread each
    seen: list[tuple[str, int, int | None]] = []
    evaluate, fit_and_recommend = tasks.train.evaluate, tasks.train.fit_and_recommend

    def recording_evaluate(*args: Any, settings: RunSettings, **kwargs: Any) -> Any:
        seen.append(("evaluate", torch.get_num_threads(), settings.threads))
        return evaluate(*args, settings=settings, **kwargs)

    def recording_refit(*args: Any, settings: RunSettings, **kwargs: Any) -> Any:
        seen.append(("refit", torch.get_num_threads(), settings.threads))
        return fit_and_recommend(*args, settings=settings, **kwargs)

    monkeypatch.setattr(tasks.train, "evaluate", recording_evaluate)
    monkeypatch.setattr(tasks.train, "fit_and_recommend", recording_refit)
    config = RunConfig(models=["popularity", "als"], top_n=5, max_workers=2, output_dir=str(tmp_path / "var"))
    assert recommend(config=config, db_url=f"sqlite:///{tmp_path / 'rf.db'}")["status"] == "completed"
    assert sorted(seen) == [("evaluate", 1, None)] * 2 + [("refit", 1, None)] * 2


def test_model_params_reach_each_models_evaluation_and_refit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.train
    from flows.recommend import recommend

    seen: dict[str, list[Any]] = {"evaluate": [], "refit": []}
    evaluate, fit_and_recommend = tasks.train.evaluate, tasks.train.fit_and_recommend

    def recording_evaluate(name: str, *args: Any, params: Any = None, **kwargs: Any) -> Any:
        result = evaluate(name, *args, params=params, **kwargs)
        seen["evaluate"].append((name, params, result.refit_config))
        return result

    def recording_refit(name: str, *args: Any, config: Any = None, **kwargs: Any) -> Any:
        seen["refit"].append((name, config))
        return fit_and_recommend(name, *args, config=config, **kwargs)

    monkeypatch.setattr(tasks.train, "evaluate", recording_evaluate)
    monkeypatch.setattr(tasks.train, "fit_and_recommend", recording_refit)
    config = RunConfig(
        models=["popularity", "als"],
        model_params={"als": {"factors": 6, "iterations": 2}, "ease": {"regularization": 50}},  # ease: not trained
        top_n=5,
        output_dir=str(tmp_path / "var"),
    )
    url = f"sqlite:///{tmp_path / 'rf.db'}"
    assert recommend(config=config, db_url=url)["status"] == "completed"
    evaluated = {name: (params, refit) for name, params, refit in seen["evaluate"]}
    assert evaluated["popularity"][0] is None and evaluated["als"][0] == {"factors": 6, "iterations": 2}
    assert evaluated["als"][1]["factors"] == 6 and evaluated["als"][1]["iterations"] == 2
    assert dict(seen["refit"])["als"] == evaluated["als"][1]  # the refit trains what was evaluated
    # The run record keeps the overrides, so a published table can be traced to the settings that made it.
    (parameters,) = _table(url, "runs")["parameters"]
    assert json.loads(parameters)["model_params"]["als"] == {"factors": 6, "iterations": 2}


def test_a_significantly_worse_model_does_not_replace_the_previous_champion(tmp_path: Path, ml100k_dir: Path) -> None:
    """The no-regression guard rail reads the champion of the date before: a later run whose only model is far
    below it publishes its rows but names no champion, and the view keeps serving the earlier champion."""
    from flows.recommend import recommend

    url = f"sqlite:///{tmp_path / 'rf.db'}"
    source = {"kind": "movielens-100k", "data_dir": str(ml100k_dir)}

    def run(models: list[str], as_of: str) -> dict[str, Any]:
        config = RunConfig(
            source=source,
            models=models,
            as_of=as_of,
            top_n=5,
            model_params={"bpr": {"epochs": 1}},  # barely trained: wide coverage, far lower NDCG
            output_dir=str(tmp_path / "var"),
        )
        return recommend(config=config, db_url=url)

    first = run(["popularity", "item_knn"], "1998-03-01T00:00:00Z")
    assert first["champion"] == "item_knn" and "no previous champion" in first["champion_reason"]
    second = run(["bpr"], "1998-04-01T00:00:00Z")
    assert second["status"] == "completed" and second["champion"] is None
    reason = second["champion_reason"]
    assert "bpr" in reason and "item_knn" in reason and "regression" in reason, reason
    champions = _table(url, "champions")
    assert list(champions["model"]) == ["item_knn"]
    served = _table(url, "champion_recommendations")
    assert set(served["model"]) == {"item_knn"} and served["as_of"].nunique() == 1
    assert set(_table(url, "publications")["model"]) == {"popularity", "item_knn", "bpr"}  # bpr still published
    # A later run whose champion holds up against the stored one is chosen, with the comparison in its reason.
    third = run(["popularity", "item_knn"], "1998-04-01T00:00:00Z")
    assert third["champion"] == "item_knn" and "no previous champion" not in third["champion_reason"]
    # Rerunning that date with popularity alone republishes popularity's rows; item_knn's stay, and so does its
    # place as the date's champion (before, popularity took it over: "no previous champion to compare with").
    fourth = run(["popularity"], "1998-04-01T00:00:00Z")
    # The summary (and the run's row) names the champion that stays: "Champion: None (kept item_knn …)" said both.
    assert fourth["status"] == "completed" and fourth["champion"] == "item_knn"
    assert fourth["champion_reason"].startswith("kept item_knn, this date's champion"), fourth["champion_reason"]
    assert "chose popularity" not in fourth["champion_reason"]
    champions = _table(url, "champions").sort_values("as_of")
    assert list(champions["model"]) == ["item_knn", "item_knn"]
    assert set(_table(url, "champion_recommendations")["model"]) == {"item_knn"}
    # Another data set in the same database is measured on other data: its champion is no bar.
    synthetic = RunConfig(models=["popularity", "item_knn"], top_n=5, output_dir=str(tmp_path / "var"))
    other = recommend(config=synthetic, db_url=url)
    assert other["champion"] is not None and "no previous champion" in other["champion_reason"]


def test_low_memory_is_warned_about_in_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory watch runs inside a real flow run, through training and publishing, and reports in its summary."""
    from flows.recommend import recommend

    monkeypatch.setenv("RECFORGE_LOW_MEMORY_FRACTION", "0.999")  # any machine is "low" by this bar
    config = RunConfig(models=["popularity"], top_n=5, output_dir=str(tmp_path / "var"))
    summary = recommend(config=config, db_url=f"sqlite:///{tmp_path / 'rf.db'}")
    assert summary["status"] == "completed"
    memory = summary["memory"]
    if Path("/proc/meminfo").exists():
        assert memory["low_memory_warnings"] == 2  # one while the model trained, one while the run published
        assert 0 < memory["lowest_available_gib"] <= memory["total_gib"]
    monkeypatch.setenv("RECFORGE_LOW_MEMORY_FRACTION", "0")  # disabled: no sampling at all
    summary = recommend(config=config, db_url=f"sqlite:///{tmp_path / 'rf.db'}")
    assert summary["memory"] == {"lowest_available_gib": None, "total_gib": None, "low_memory_warnings": 0}


def test_movielens_run_respects_as_of(tmp_path: Path, ml100k_dir: Path) -> None:
    from flows.recommend import recommend

    url = f"sqlite:///{tmp_path / 'ml.db'}"
    as_of = datetime(1998, 2, 1, tzinfo=UTC)
    config = RunConfig(
        source={"kind": "movielens-100k", "data_dir": str(ml100k_dir)},
        as_of=as_of,
        models=["popularity", "item_knn"],
        output_dir=str(tmp_path / "var"),
    )
    summary = recommend(config=config, db_url=url)
    assert summary["status"] == "completed"
    # MovieLens events run from 1997-09-20 to 1998-04-22: a February cut keeps part of them.
    assert 50_000 < summary["row_counts"]["before_as_of"] < 100_000
    board = pd.DataFrame(summary["leaderboard"]).set_index("model")
    assert 0.05 < board.loc["popularity", "ndcg"] < board.loc["item_knn", "ndcg"]
    store = Store(url)
    top = store.read_recommendations("1", model="item_knn", limit=5)
    assert list(top["rank"]) == [1, 2, 3, 4, 5]
    seen = pd.read_csv(ml100k_dir / "u.data", sep="\t", names=["u", "i", "r", "t"])
    seen_before = seen[(seen["u"] == 1) & (seen["t"] < as_of.timestamp())]["i"].astype(str)
    assert not set(top["item_id"]) & set(seen_before)


def _write_csv(path: Path, rows: list[tuple[object, object, object, int]]) -> Path:
    pd.DataFrame(rows, columns=["user", "item", "stars", "ts"]).to_csv(path, index=False)
    return path


def test_corrupted_input_fails_at_validation_and_keeps_published_rows(tmp_path: Path) -> None:
    from flows.recommend import recommend
    from recforge.validation import ValidationFailed

    url = f"sqlite:///{tmp_path / 'bad.db'}"
    good = generate_synthetic(n_users=200, n_items=120, n_events=4_000).interactions
    rows = [
        (u, i, r, int(t.timestamp()))
        for u, i, r, t in good[["user_id", "item_id", "rating", "timestamp"]].itertuples(index=False)
    ]
    columns = {"user_id": "user", "item_id": "item", "rating": "stars", "timestamp": "ts"}
    as_of = datetime(2025, 1, 1, tzinfo=UTC)  # after the synthetic log (2024)
    source = {
        "kind": "csv",
        "interactions": str(_write_csv(tmp_path / "good.csv", rows)),
        "columns": columns,
        "rating_range": [1, 5],
    }
    config = RunConfig(
        source=source, as_of=as_of, models=["popularity", "item_knn"], output_dir=str(tmp_path / "var"), top_n=10
    )
    recommend(config=config, db_url=url)
    before = {name: _sorted(_table(url, name)) for name in ("recommendations", "champions", "model_metrics")}

    corrupted = list(rows)
    corrupted[3] = (corrupted[3][0], corrupted[3][1], 11.0, corrupted[3][3])  # rating out of 1..5
    corrupted[7] = (None, corrupted[7][1], 4.0, corrupted[7][3])  # null user id
    bad_source = dict(source, interactions=str(_write_csv(tmp_path / "bad.csv", corrupted)))
    with pytest.raises(ValidationFailed) as excinfo:
        recommend(config=config.model_copy(update={"source": bad_source}), db_url=url)
    message = str(excinfo.value)
    assert "interactions" in message and "rating" in message and "user_id" in message

    for name, frame in before.items():
        pd.testing.assert_frame_equal(_sorted(_table(url, name)), frame)
    assert _table(url, "runs")["status"].tolist().count("failed") == 1


def test_cli_run_models_and_recommendations(
    tmp_path: Path, ml100k_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    code = main(
        [
            "run",
            "--dataset",
            "movielens-100k",
            "--data-dir",
            str(ml100k_dir),
            "--db-url",
            url,
            "--models",
            "popularity,item_knn",
            "--top-n",
            "15",
            "--output-dir",
            str(tmp_path / "var"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Leaderboard" in out and "item_knn" in out and "Champion: item_knn" in out
    assert main(["recommendations", "--user", "42", "--db-url", url, "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("item_knn") == 3
    assert main(["recommendations", "--user", "no-such-user", "--db-url", url]) == 1
    assert "no recommendations" in capsys.readouterr().err
    # An empty answer says why: a model never published, an as_of never published, or else the user id.
    assert main(["recommendations", "--user", "42", "--model", "als", "--db-url", url]) == 1
    assert "'als' was never published; published models: item_knn, popularity" in capsys.readouterr().err
    assert main(["recommendations", "--user", "42", "--as-of", "1990-01-01", "--db-url", url]) == 1
    assert (
        "nothing was published for as_of 1990-01-01 00:00:00+00:00; the latest published: " in capsys.readouterr().err
    )
    assert main(["recommendations", "--user", "no-such-user", "--model", "item_knn", "--db-url", url]) == 1
    assert capsys.readouterr().err.endswith("check the user id (as in the source data)\n")


def test_click_data_leaves_out_the_rating_models_it_was_not_asked_for(tmp_path: Path) -> None:
    """Interactions without ratings (clicks, purchases): the models that need ratings are left out of a family
    or the default set, and the run completes; named explicitly, such a model fails with its own error."""
    from flows.recommend import ModelsFailed, recommend

    path = tmp_path / "clicks.csv"
    write_synthetic_csv(path, n_users=150, n_items=90, n_events=3_000, drop=["rating"])
    url = f"sqlite:///{tmp_path / 'clicks.db'}"
    config = RunConfig(
        source={"kind": "csv", "interactions": str(path)},
        as_of=datetime(2025, 1, 1, tzinfo=UTC),
        families=["matrix_factorization"],
        top_n=5,
        output_dir=str(tmp_path / "var"),
    )
    state = recommend(config=config, db_url=url, return_state=True)
    summary = state.result()

    assert summary["status"] == "completed", summary["failed_models"]
    assert set(summary["skipped_models"]) == {"biased_mf", "nmf"}
    dashboard = _run_summary_markdown(state.state_details.flow_run_id)
    left_out = dashboard.split("## Left out for this data", 1)[1]
    assert "**biased_mf**: it needs ratings" in left_out and "**nmf**" in left_out
    assert "needs ratings" in summary["skipped_models"]["nmf"]
    assert set(pd.DataFrame(summary["leaderboard"])["model"]) == {"pure_svd", "als", "bpr"}
    assert set(_table(url, "recommendations")["model"]) == {"pure_svd", "als", "bpr"}

    asked = config.model_copy(update={"families": None, "models": ["popularity", "nmf"]})
    with pytest.raises(ModelsFailed, match=r"nmf needs ratings.*the others were published"):
        recommend(config=asked, db_url=url)
    alone = config.model_copy(update={"families": None, "models": ["nmf"]})
    with pytest.raises(ModelsFailed, match=r"nmf needs ratings.*nothing was published"):
        recommend(config=alone, db_url=url)
    # A rating error as the primary metric on clicks ended "completed" with no champion (exit 0); refused now,
    # before any model trains.
    from recforge.config import ConfigError

    by_rmse = config.model_copy(update={"families": None, "models": ["popularity"], "primary_metric": "rmse"})
    with pytest.raises(ConfigError, match=r"primary_metric 'rmse' cannot pick a champion: this data has no ratings"):
        recommend(config=by_rmse, db_url=url)


def _run_summary_markdown(flow_run_id: object) -> str:
    """The run-summary artifact a flow run shows in the Prefect dashboard."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["run-summary"]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )
    assert len(found) == 1
    return str(found[0].data)


def test_a_rating_error_as_primary_metric_needs_a_model_that_predicts_ratings() -> None:
    from flows.recommend import _refuse_unmeasurable_metric
    from recforge.config import ConfigError

    with pytest.raises(ConfigError, match=r"none of the models of this run \(popularity, als\) predicts ratings"):
        _refuse_unmeasurable_metric("mae", ["popularity", "als"], has_ratings=True)
    _refuse_unmeasurable_metric("mae", ["popularity", "biased_mf"], has_ratings=True)  # measurable: no error
    _refuse_unmeasurable_metric("ndcg", ["popularity"], has_ratings=False)
