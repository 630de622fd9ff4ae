"""The run report: its numbers on small hand-computed cases, the HTML on a real small run, and the Prefect task."""

from __future__ import annotations

import html
import math
import re
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recforge.data.synthetic import generate_synthetic
from recforge.pipeline import (
    PreparedData,
    choose_champion,
    evaluate,
    fit_and_recommend,
    leaderboard,
    metrics_frame,
    prepare,
)
from recforge.report import (
    ReportInputs,
    gini,
    item_popularity,
    metrics_long,
    popularity_profile,
    recommendation_stats,
    render_report,
    report_path,
    sample_users,
    training_curves_of,
    write_report,
)
from recforge.validation import ValidationReport

SECTION_IDS = ("overview", "leaderboard", "metrics", "cutoffs", "groups", "training", "popularity", "samples")


def _events(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """Interactions with one event per (user, item) pair, a day apart in list order."""
    start = pd.Timestamp("2024-01-01", tz="UTC")
    return pd.DataFrame(
        {
            "user_id": [u for u, _ in pairs],
            "item_id": [i for _, i in pairs],
            "timestamp": [start + pd.Timedelta(days=n) for n in range(len(pairs))],
        }
    )


def _recs(model: str, rows: list[tuple[str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id"])
    frame.insert(0, "model", model)
    frame["rank"] = frame.groupby("user_id").cumcount() + 1
    return frame


# ---- numbers ------------------------------------------------------------------------------------------------


def test_item_popularity_orders_by_events_then_id_and_adds_unseen_catalogue_items() -> None:
    events = _events([("u1", "b"), ("u2", "b"), ("u1", "a"), ("u2", "c"), ("u3", "a"), ("u3", "b")])
    items = pd.DataFrame({"item_id": ["a", "b", "c", "z"]})
    popularity = item_popularity(events, items)
    assert list(popularity.index) == ["b", "a", "c", "z"]
    assert popularity.tolist() == [3, 2, 1, 0]


def test_popularity_profile_and_stats_on_a_hand_computed_catalogue() -> None:
    # Popularity a:4 b:3 c:2 d:1 (10 events). Two bins: {a, b} holds 7 events, {c, d} holds 3.
    popularity = pd.Series([4, 3, 2, 1], index=pd.Index(["a", "b", "c", "d"], name="item_id"))
    recs = pd.concat(
        [
            _recs("m", [("u1", "a"), ("u1", "c"), ("u2", "a"), ("u2", "b")]),
            _recs("flat", [("u1", "a"), ("u1", "b"), ("u2", "c"), ("u2", "d")]),
        ]
    )
    profile = popularity_profile(popularity, recs, bins=2).set_index(["model", "bin"])["share"]
    assert profile[("events before as_of", 1)] == pytest.approx(0.7)
    assert profile[("events before as_of", 2)] == pytest.approx(0.3)
    assert profile[("m", 1)] == pytest.approx(0.75)  # a, a, b in the head bin; c in the tail
    assert profile[("m", 2)] == pytest.approx(0.25)
    assert profile[("flat", 1)] == pytest.approx(0.5)

    stats = recommendation_stats(popularity, recs).set_index("model")
    assert stats.loc["m", "users"] == 2 and stats.loc["m", "slots"] == 4 and stats.loc["m", "items"] == 3
    assert stats.loc["m", "coverage"] == pytest.approx(0.75)
    # The top 10% of 4 items rounds up to one item, "a": 2 of m's 4 slots.
    assert stats.loc["m", "head_share"] == pytest.approx(0.5)
    assert stats.loc["m", "mean_events"] == pytest.approx((4 + 2 + 4 + 3) / 4)
    # Exposure counts a:2 b:1 c:1 d:0 → sorted 0,1,1,2: 2·(1·0+2·1+3·1+4·2)/(4·4) − 5/4 = 0.375.
    assert stats.loc["m", "gini"] == pytest.approx(0.375)
    assert stats.loc["flat", "gini"] == pytest.approx(0.0)
    assert stats.loc["flat", "coverage"] == pytest.approx(1.0)


def test_gini_extremes() -> None:
    assert gini(np.array([3, 3, 3])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 5])) == pytest.approx(0.75)  # (n-1)/n
    assert math.isnan(gini(np.array([0, 0])))


def test_metrics_long_reads_cutoffs_intervals_and_groups_and_drops_timings() -> None:
    frame = pd.DataFrame(
        {
            "model": ["m", "m", "m", "m", "m", "m", "m"],
            "metric": ["ndcg", "ndcg@20", "ndcg_ci_low", "rmse", "fit_seconds", "users_without_train", "ndcg"],
            "k": [10, None, 10, None, None, 10, 10],
            "value": [0.30, 0.40, 0.25, 0.90, 1.5, 3.0, 0.10],
            "group": ["all", "all", "all", "all", "all", "all", "cold"],
            "ci_high": [0.35, math.nan, math.nan, math.nan, math.nan, math.nan, 0.2],
        }
    )
    long = metrics_long(frame, None, k=10).set_index(["metric", "k", "group"])
    assert set(long.index.get_level_values("metric")) == {"ndcg", "rmse"}
    assert long.loc[("ndcg", 10.0, "all"), "value"] == pytest.approx(0.30)
    assert long.loc[("ndcg", 10.0, "all"), "ci_low"] == pytest.approx(0.25)  # from the ndcg_ci_low row
    assert long.loc[("ndcg", 10.0, "all"), "ci_high"] == pytest.approx(0.35)  # from the ci_high column
    assert long.loc[("ndcg", 20.0, "all"), "value"] == pytest.approx(0.40)
    assert long.loc[("ndcg", 10.0, "cold"), "value"] == pytest.approx(0.10)
    rmse = long.xs("rmse", level="metric")
    assert len(rmse) == 1 and math.isnan(rmse.index[0][0])


def test_metrics_long_from_leaderboard_records_without_a_metrics_frame() -> None:
    board = [
        {"model": "a", "family": "x", "ndcg": 0.2, "recall@5": 0.1, "seconds": 2.0, "error": None},
        {"model": "b", "family": "y", "ndcg": 0.3, "ndcg_ci_high": 0.33, "fit_seconds": 1.0, "error": None},
    ]
    long = metrics_long(None, board, k=10).set_index(["model", "metric", "k"])
    assert long.loc[("a", "ndcg", 10.0), "value"] == pytest.approx(0.2)
    assert long.loc[("a", "recall", 5.0), "value"] == pytest.approx(0.1)
    assert long.loc[("b", "ndcg", 10.0), "ci_high"] == pytest.approx(0.33)
    assert "seconds" not in set(long.index.get_level_values("metric"))


def test_metrics_long_names_missing_columns() -> None:
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['value'\]"):
        metrics_long(pd.DataFrame({"model": ["m"], "metric": ["ndcg"]}), None, k=10)


def test_sample_users_spans_activity_and_needs_recommendations() -> None:
    pairs = [("light", "a")] + [("mid", i) for i in "abc"] + [("heavy", i) for i in "abcdef"] + [("norecs", "a")] * 9
    events = _events(pairs)
    assert sample_users(events, ["light", "mid", "heavy"], 2) == ["light", "heavy"]
    assert sample_users(events, ["light", "mid", "heavy"], 3) == ["light", "mid", "heavy"]
    assert sample_users(events, ["heavy", "ghost"], 5) == ["heavy"]
    assert sample_users(events, ["light"], 0) == []


def test_training_curves_of_reads_the_convention() -> None:
    listed = SimpleNamespace(training_curve_=[(1, 0.9), (2, 0.5)])
    assert training_curves_of(listed) == {"training": [(1.0, 0.9), (2.0, 0.5)]}
    named = SimpleNamespace(training_curve_={"loss": [(1, 2.0)], "ndcg": []})
    assert training_curves_of(named) == {"loss": [(1.0, 2.0)]}
    neural = SimpleNamespace(training_log_=SimpleNamespace(train_loss=[0.7, 0.6], validation_ndcg=[]))
    assert training_curves_of(neural) == {"train_loss": [(1.0, 0.7), (2.0, 0.6)]}
    assert training_curves_of(object()) == {}
    with pytest.raises(ValueError, match=r"\(epoch, value\) pairs"):
        training_curves_of(SimpleNamespace(training_curve_=[0.5, 0.4]))


def test_report_path_rejects_ids_that_are_not_a_folder_name(tmp_path: Path) -> None:
    assert report_path(tmp_path, "abc-1") == tmp_path / "reports" / "abc-1" / "index.html"
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError, match="cannot name a folder"):
            report_path(tmp_path, bad)


# ---- the HTML on a real small run ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run() -> dict[str, Any]:
    """A two-model run on small synthetic data through the pipeline functions (no Prefect)."""
    dataset = generate_synthetic(n_users=120, n_items=80, n_events=2_400)
    report = ValidationReport(outcomes=[], failing_rows={}, dataset_name=dataset.name)
    data = prepare(dataset, report, datetime(2030, 1, 1, tzinfo=UTC))
    names = ["popularity", "item_knn"]
    results = [evaluate(n, data, k=10) for n in names]
    refits = [fit_and_recommend(n, data, top_n=10) for n in names]
    champion = choose_champion(results)
    summary = {
        "run_id": "run-1",
        "status": "completed",
        "dataset": dataset.name,
        "as_of": "2030-01-01T00:00:00+00:00",
        "database": "sqlite:///test.db",
        "champion": champion.model,
        "champion_reason": champion.reason,
        "leaderboard": leaderboard(results).to_dict(orient="records"),
        "rows_written": {"recommendations": 2_400},
        "row_counts": data.row_counts,
        "timings": {"ingest": 0.1, "validate": 1.5, "prepare": 0.2},
        "failed_models": {},
        "data_docs": None,
    }
    return {
        "summary": summary,
        "data": data,
        "recommendations": pd.concat([r.frame for r in refits], ignore_index=True),
        "metrics": metrics_frame(results, 10),
        "refit_timings": {
            r.model: {"fit_seconds": r.fit_seconds, "recommend_seconds": r.recommend_seconds} for r in refits
        },
    }


def _images(document: str) -> list[str]:
    return re.findall(r'<img class="plot" alt="([^"]*)" src="data:image/png;base64,', document)


def _section(document: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', document, flags=re.S)
    assert match, f"section {anchor!r} missing"
    return match.group(1)


def test_full_report_has_every_section_plot_and_sample(small_run: dict[str, Any]) -> None:
    data: PreparedData = small_run["data"]
    curves = {"item_knn": {"train_loss": [(1, 0.9), (2, 0.7)]}}
    checks = {"table": "interactions", "expectation": "between", "unexpected": 0, "sample": ""}
    validation = [
        {**checks, "column": "rating", "severity": "critical", "success": True},
        {**checks, "column": "", "severity": "warning", "success": False, "unexpected": 4, "sample": "u1,i2"},
    ]
    document = render_report(ReportInputs(**small_run, validation=validation, training_curves=curves))

    assert '<p class="section-error' not in document
    for anchor in SECTION_IDS:
        _section(document, anchor)
    summary = small_run["summary"]
    champion = summary["champion"]
    assert f"<strong>{champion}</strong>" in document and html.escape(summary["champion_reason"]) in document
    # Champion row highlighted in the leaderboard.
    assert re.search(rf'<tr class="highlight"><td>{champion}</td>', _section(document, "leaderboard"))
    # One plot each: timings, metric bars, metric@K curves, activity groups (pipeline.metrics_frame reports
    # them), training curves, popularity.
    assert len(_images(_section(document, "overview"))) == 1
    for anchor in ("metrics", "cutoffs", "groups", "training", "popularity"):
        assert len(_images(_section(document, anchor))) == 1, anchor
    # Validation: 2 checks, 1 warning listed with its sample.
    overview = _section(document, "overview")
    assert "2 checks: <strong>1 passed</strong>, 0 critical failures, 1 warnings" in overview
    assert "u1,i2" in overview
    assert data.cleaning.summary().replace("->", "-&gt;") in overview
    # Samples show titles from the items table next to ids, and both models' lists.
    samples = _section(document, "samples")
    assert samples.count('<div class="user">') == 4
    assert "<h4>popularity</h4>" in samples and "champion</span>" in samples
    recs = small_run["recommendations"]
    titles = data.items.set_index("item_id")["title"]
    first = sample_users(data.interactions, recs["user_id"].unique(), 4)[0]
    latest = data.interactions[data.interactions["user_id"] == first].sort_values("timestamp")["item_id"].iloc[-1]
    top = recs[(recs["model"] == champion) & (recs["user_id"] == first) & (recs["rank"] == 1)]["item_id"].iloc[0]
    card = samples.split('<div class="user">')[1]
    assert f"<code>{first}</code>" in card
    assert f"<li>{html.escape(titles[latest])} <span class='muted'>({latest})</span>" in card
    assert f"<ol><li>{html.escape(titles[top])} <span class='muted'>({top})</span></li>" in card
    # Coverage table numbers come from the published recommendations.
    n_catalogue = len(item_popularity(data.interactions, data.items))
    coverage = recs[recs["model"] == "popularity"]["item_id"].nunique() / n_catalogue
    assert f"<td class='num'>{coverage:.3f}</td>" in _section(document, "popularity")


def test_intervals_several_cutoffs_and_groups_change_the_plots(small_run: dict[str, Any]) -> None:
    rows = []
    for model, base in (("popularity", 0.2), ("item_knn", 0.3)):
        for k in (5, 10, 20):
            for group in ("all", "cold", "heavy"):
                value = base + k / 100
                rows.append((model, "ndcg", k, group, value, value - 0.02, value + 0.02))
    metrics = pd.DataFrame(rows, columns=["model", "metric", "k", "group", "value", "ci_low", "ci_high"])
    document = render_report(ReportInputs(summary=small_run["summary"], metrics=metrics))
    assert '<p class="section-error' not in document
    assert "Error bars are the confidence intervals" in _section(document, "metrics")
    assert "grows with the length K" in _section(document, "cutoffs")
    assert len(_images(_section(document, "groups"))) == 1


def test_leaderboard_only_run_has_one_cutoff_no_intervals_no_groups(small_run: dict[str, Any]) -> None:
    board = [
        {"model": "a", "family": "x", "ndcg": 0.3, "recall": 0.5, "seconds": 1.0, "error": None},
        {"model": "b", "family": "x", "ndcg": 0.2, "recall": 0.4, "seconds": 1.0, "error": None},
    ]
    document = render_report(ReportInputs(summary={**small_run["summary"], "leaderboard": board, "champion": "a"}))
    assert '<p class="section-error' not in document
    assert "Only K=10 was evaluated" in _section(document, "cutoffs")
    assert "No confidence intervals were reported" in _section(document, "metrics")
    assert "did not break the metrics down" in _section(document, "groups")
    assert _images(_section(document, "groups")) == []
    assert "Brackets hold" not in _section(document, "leaderboard")


def test_leaderboard_folds_interval_columns_into_the_metric_cell() -> None:
    board = [{"model": "a", "ndcg": 0.3, "ndcg_ci_low": 0.25, "ndcg_ci_high": 0.35, "recall": 0.5, "error": None}]
    section = _section(render_report(ReportInputs(summary={"run_id": "r", "leaderboard": board})), "leaderboard")
    assert "<td class='num'>0.3000 <span class='muted'>[0.2500, 0.3500]</span></td>" in section
    assert "<td class='num'>0.5000</td>" in section
    assert "ndcg_ci_low" not in section and "Brackets hold the confidence interval" in section


def test_metrics_long_reads_groups_from_the_split_column() -> None:
    frame = pd.DataFrame(
        {
            "model": ["m", "m", "m"],
            "metric": ["ndcg", "ndcg", "fit_seconds"],
            "k": [10, 10, None],
            "value": [0.3, 0.1, 2.0],
            "split": ["temporal_holdout", "temporal_holdout:cold", "timing"],
        }
    )
    long = metrics_long(frame, None, k=10).set_index("group")["value"]
    assert long.to_dict() == {"all": 0.3, "cold": 0.1}


def test_report_with_only_a_summary_explains_what_is_missing() -> None:
    summary = {
        "run_id": "r",
        "status": "partial",
        "dataset": "<b>evil</b>",
        "failed_models": {"bad": "Boom <x>"},
        "skipped_models": {"nmf": "it needs <ratings>"},
    }
    document = render_report(ReportInputs(summary=summary))
    assert "<strong>nmf</strong> left out: it needs &lt;ratings&gt;" in document
    assert '<p class="section-error' not in document
    assert "<b>evil</b>" not in document and "&lt;b&gt;evil&lt;/b&gt;" in document
    assert "Boom &lt;x&gt;" in document and "status-partial" in document
    assert "No models were evaluated" in _section(document, "leaderboard")
    assert "Needs the prepared data" in _section(document, "samples")
    assert "No champion was chosen" in document
    assert _images(document) == []


def test_a_failing_section_is_reported_in_place(small_run: dict[str, Any]) -> None:
    broken = small_run["recommendations"].drop(columns=["user_id"])
    document = render_report(ReportInputs(**{**small_run, "recommendations": broken}))
    assert "could not be drawn: KeyError" in _section(document, "popularity")
    assert "could not be drawn" not in _section(document, "leaderboard")


def test_write_report_writes_the_file_in_place(small_run: dict[str, Any], tmp_path: Path) -> None:
    path = write_report(ReportInputs(summary=small_run["summary"]), tmp_path)
    assert path == tmp_path / "reports" / "run-1" / "index.html"
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in path.parent.iterdir()] == ["index.html"]


# ---- the Prefect task ---------------------------------------------------------------------------------------


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_harness")
def test_report_task_writes_the_file_and_a_link_artifact(small_run: dict[str, Any], tmp_path: Path) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks.report import write_run_report

    @flow
    def report_flow(summary: dict[str, Any]) -> tuple[str | None, str]:
        from prefect.runtime import flow_run

        path = write_run_report(summary, tmp_path, data=small_run["data"], recommendations=small_run["recommendations"])
        return path, str(flow_run.id)

    path, flow_run_id = report_flow(small_run["summary"])
    assert path == str((tmp_path / "reports" / "run-1" / "index.html").resolve())
    assert Path(path).is_file()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])),
        )
    links = [a for a in artifacts if a.key == "report"]
    assert len(links) == 1
    assert f"]({Path(path).as_uri()})" in str(links[0].data)

    # A summary without a run id cannot name the report's folder: the task logs it and returns None.
    bad, flow_run_id = report_flow({"status": "completed"})
    assert bad is None
    with get_client(sync_client=True) as client:
        assert not client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])),
        )


def test_the_data_docs_link_is_relative_so_a_moved_output_folder_keeps_it(
    small_run: dict[str, Any], tmp_path: Path
) -> None:
    docs = tmp_path / "var" / "gx" / "data docs" / "index.html"
    docs.parent.mkdir(parents=True)
    docs.write_text("<html></html>")
    summary = {**small_run["summary"], "data_docs": str(docs)}
    written = write_report(ReportInputs(**{**small_run, "summary": summary}), tmp_path / "var")
    href = re.search(r'<a href="([^"]+)">Great Expectations Data Docs</a>', written.read_text()).group(1)
    assert href == "../../gx/data%20docs/index.html"
    assert (written.parent / urllib.parse.unquote(href)).resolve() == docs.resolve()
