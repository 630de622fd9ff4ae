"""A self-contained HTML report of one recommend run: what went in, how the models compare, what came out.

The report is one file, ``<output_dir>/reports/<run_id>/index.html``, with every plot embedded as a base64 PNG
(matplotlib's Agg renderer, no pyplot state, so it is safe from worker threads) and no external CSS or script:
it can be mailed, archived or opened from a Prefect link artifact. Sections:

- run header: data set, ``as_of``, status, champion and why, database, Data Docs link;
- overview: rows per stage, validation outcome, cleaning, timings per stage and per model;
- the leaderboard table (champion highlighted, failed models with their error);
- metric bars per model at the evaluation cut-off, with confidence intervals when the metrics carry
  ``ci_low``/``ci_high``;
- metric@K curves when several cut-offs were evaluated (else one point per model);
- training curves of iterative models (see :func:`training_curves_of` for the convention);
- popularity bias and catalogue coverage of the published recommendations;
- sample recommendations for a few users next to the items they interacted with (titles when the items table
  has a ``title`` column).

Every input except the run summary is optional: a missing piece leaves its section with a sentence saying what
is missing instead of failing the report. The inputs are plain data (the flow's summary dict,
:class:`~recforge.pipeline.PreparedData`, frames), so the report is built and tested without Prefect.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from recforge.data.contract import ITEM, RATING, TIMESTAMP, USER, title_column

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from recforge.pipeline import PreparedData

logger = logging.getLogger(__name__)

# Numbers the evaluation reports that are counts or timings, not quality metrics: never plotted as metrics.
COUNTERS = frozenset(
    {
        "users",
        "users_without_train",
        "users_without_test",
        "dropped_unseen_items",
        "test_rows",
        "rating_test_rows",
        "unknown_pairs",
    }
)
# Leaderboard columns that are not metrics.
_NOT_METRICS = frozenset({"model", "family", "seconds", "error"})
LOWER_IS_BETTER = frozenset({"rmse", "mae"})
# Metrics shown as "lower is better": the rating errors plus how concentrated recommendations are on few or
# popular items (the champion is still picked by the primary metric alone).
SHOWN_LOWER_IS_BETTER = LOWER_IS_BETTER | {"gini", "popularity_bias"}
# Metrics drawn as metric@K curves when several cut-offs exist, in this order.
CURVE_METRICS = ("ndcg", "recall", "precision", "hit_rate", "map", "mrr")
_CI_SUFFIXES = {"_ci_low": "ci_low", "_ci_high": "ci_high"}
# Order of user activity groups in the by-group plot; unknown groups follow alphabetically.
_GROUP_ORDER = ("cold", "regular", "heavy", "all")
# One colour per model, in leaderboard order, the same in every plot.
_PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974")

Curve = Sequence[tuple[float, float]]


@dataclass(frozen=True)
class ReportInputs:
    """Everything the report shows. Only ``summary`` is required.

    ``summary`` is the dict the recommend flow returns (``run_id``, ``status``, ``dataset``, ``as_of``,
    ``champion``, ``champion_reason``, ``leaderboard`` records, ``row_counts``, ``timings``,
    ``failed_models``, ``skipped_models``, ``database``, ``data_docs``); missing keys are shown as absent.
    """

    summary: Mapping[str, Any]
    # Cut-off of the top-N metrics and the metric that picked the champion.
    k: int = 10
    primary_metric: str = "ndcg"
    # The prepared data: events before as_of (popularity, histories), items table (titles), cleaning report.
    data: PreparedData | None = None
    # Published top-N rows of every model: model, user_id, rank, item_id[, score].
    recommendations: pd.DataFrame | None = None
    # Long metrics: model, metric, k, value, optionally ci_low, ci_high (``pipeline.metrics_frame`` output).
    # Metric names may carry their cut-off (``ndcg@20``) and CIs may come as ``<metric>_ci_low`` rows.
    # When absent, the metrics come from ``summary["leaderboard"]``.
    metrics: pd.DataFrame | None = None
    # Validation outcomes as ``ValidationReport.to_records()`` rows, and its one-paragraph summary.
    validation: Sequence[Mapping[str, Any]] | None = None
    validation_summary: str | None = None
    # Per model timings of the publishing refit: {"item_knn": {"fit_seconds": 1.2, "recommend_seconds": 0.4}}.
    refit_timings: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # Per model, named curves of (epoch, value): {"gru4rec": {"train_loss": [(1, 0.9), ...]}}.
    training_curves: Mapping[str, Mapping[str, Curve]] = field(default_factory=dict)
    # How many users the sample-recommendations section shows, and how many items per list.
    sample_users: int = 4
    sample_items: int = 10


def report_path(output_dir: str | Path, run_id: str) -> Path:
    """Where the report of ``run_id`` lives: ``<output_dir>/reports/<run_id>/index.html``."""
    if not run_id or "/" in run_id or "\\" in run_id or run_id in {".", ".."}:
        raise ValueError(f"report_path: run id {run_id!r} cannot name a folder; expected the run's uuid")
    return Path(output_dir) / "reports" / run_id / "index.html"


def write_report(inputs: ReportInputs, output_dir: str | Path) -> Path:
    """Render the report and write it to :func:`report_path`; returns the file's path."""
    run_id = str(inputs.summary.get("run_id") or "")
    path = report_path(output_dir, run_id)
    document = render_report(inputs, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(document, encoding="utf-8")
    tmp.replace(path)  # a reader (the browser, a link) never sees a half-written file
    return path


# ---- training curves convention ----------------------------------------------------------------------------


def training_curves_of(model: object) -> dict[str, list[tuple[float, float]]]:
    """The named training curves a fitted model exposes, as ``{name: [(epoch, value), ...]}``.

    Convention for iterative models: set a ``training_curve_`` attribute in ``fit``, either a list of
    ``(epoch, value)`` pairs (shown as ``"training"``) or a mapping from curve name to such a list, e.g.
    ``{"train_loss": [(1, 0.71), (2, 0.52)], "validation_ndcg": [(1, 0.08), (2, 0.11)]}``. Models built
    on ``recmodels.neural`` are also read from their ``training_log_`` (``train_loss`` and
    ``validation_ndcg`` per epoch). A model without either gives ``{}``, and the report skips it.
    """
    curves: dict[str, list[tuple[float, float]]] = {}
    declared = getattr(model, "training_curve_", None)
    if isinstance(declared, Mapping):
        for name, points in declared.items():
            curves[str(name)] = _points(points, f"training_curve_[{name!r}]")
    elif declared is not None:
        curves["training"] = _points(declared, "training_curve_")
    log = getattr(model, "training_log_", None)
    for name in ("train_loss", "validation_ndcg"):
        values = getattr(log, name, None)
        if values and name not in curves:
            curves[name] = [(float(epoch), float(v)) for epoch, v in enumerate(values, start=1)]
    return {name: points for name, points in curves.items() if points}


def _points(points: Iterable[Any], what: str) -> list[tuple[float, float]]:
    out = []
    for point in points:
        try:
            epoch, value = point
            out.append((float(epoch), float(value)))
        except (TypeError, ValueError):
            raise ValueError(
                f"{what} must hold (epoch, value) pairs of numbers; got {point!r}. "
                "Store e.g. [(1, 0.52), (2, 0.47)] in the model's fit"
            ) from None
    return out


# ---- metrics -----------------------------------------------------------------------------------------------


def metrics_long(metrics: pd.DataFrame | None, leaderboard: Sequence[Mapping[str, Any]] | None, k: int) -> pd.DataFrame:
    """Quality metrics as rows of model, metric, k, group, value, ci_low, ci_high (k is NaN for rmse/mae).

    Reads the long ``metrics`` frame when given, else the wide leaderboard records. Timings and counters are
    left out; ``ndcg@20`` names set k to 20; ``<metric>_ci_low``/``_ci_high`` rows or keys become the interval
    of ``<metric>`` at the same k. ``group`` (user activity group such as ``cold``/``heavy``) comes from a
    ``group`` column when the frame has one, else it is ``all``.
    """
    rows: list[tuple[str, str, float, str, float, float, float]] = []
    if metrics is not None and len(metrics):
        missing = {"model", "metric", "value"} - set(metrics.columns)
        if missing:
            raise ValueError(
                f"report metrics frame lacks column(s) {sorted(missing)}; found {list(metrics.columns)}. "
                "Pass pipeline.metrics_frame(...) output (model, metric, k, value[, group, ci_low, ci_high])"
            )
        for record in metrics.to_dict(orient="records"):
            group = record.get("group")
            if _missing(group):
                # pipeline.metrics_frame marks per-group rows with split "<protocol>:<group>".
                split = record.get("split")
                group = str(split).partition(":")[2] if not _missing(split) and ":" in str(split) else "all"
            rows.append(
                (
                    str(record["model"]),
                    str(record["metric"]),
                    _float(record.get("k")),
                    str(group),
                    _float(record["value"]),
                    _float(record.get("ci_low")),
                    _float(record.get("ci_high")),
                )
            )
    else:
        for record in leaderboard or []:
            model = str(record.get("model"))
            for name, value in record.items():
                if name in _NOT_METRICS or not _is_number(value):
                    continue
                rows.append((model, str(name), float(k), "all", float(value), math.nan, math.nan))
    empty = {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    values: dict[tuple[str, str, float, str], dict[str, float]] = {}
    intervals: dict[tuple[str, str, float, str], dict[str, float]] = {}
    for model, name, row_k, group, value, low, high in rows:
        target = values
        for suffix, column in _CI_SUFFIXES.items():
            if name.endswith(suffix):
                name, target = name[: -len(suffix)], intervals
                low, high = (value, math.nan) if column == "ci_low" else (math.nan, value)
                break
        base, at = _split_cutoff(name)
        if base.endswith("_seconds") or base in COUNTERS:
            continue
        if base in LOWER_IS_BETTER:
            key_k = math.nan
        else:
            key_k = at if at is not None else (row_k if not math.isnan(row_k) else float(k))
        entry = target.setdefault((model, base, key_k, group), dict(empty))
        if target is values:
            entry["value"] = value
        for column, number in (("ci_low", low), ("ci_high", high)):
            if not math.isnan(number):
                entry[column] = number
    for key, interval in intervals.items():
        if key in values:
            for column in ("ci_low", "ci_high"):
                if not math.isnan(interval[column]):
                    values[key][column] = interval[column]
    frame = pd.DataFrame(
        [(m, name, kk, g, e["value"], e["ci_low"], e["ci_high"]) for (m, name, kk, g), e in values.items()],
        columns=["model", "metric", "k", "group", "value", "ci_low", "ci_high"],
    )
    numeric = {"k": "float64", "value": "float64", "ci_low": "float64", "ci_high": "float64"}
    return frame.astype({"model": object, "metric": object, "group": object, **numeric})


def _split_cutoff(name: str) -> tuple[str, float | None]:
    """``ndcg@20`` → (``ndcg``, 20.0); ``ndcg`` → (``ndcg``, None)."""
    match = re.fullmatch(r"(.+)@(\d+)", name)
    return (match.group(1), float(match.group(2))) if match else (name, None)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _float(value: Any) -> float:
    if value is None or value is pd.NA:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# ---- popularity bias and coverage --------------------------------------------------------------------------


def item_popularity(interactions: pd.DataFrame, items: pd.DataFrame | None = None) -> pd.Series:
    """Events per item before as_of, most popular first; items of the items table without events count 0.

    Ties are broken by item id so that the order (and the popularity bins built on it) is reproducible.
    """
    counts = interactions[ITEM].astype(str).value_counts()
    if items is not None and ITEM in items.columns:
        extra = pd.Index(items[ITEM].astype(str).unique()).difference(counts.index)
        counts = pd.concat([counts, pd.Series(0, index=extra, dtype=counts.dtype)])
    frame = pd.DataFrame({ITEM: counts.index.astype(str), "events": counts.to_numpy()})
    frame = frame.sort_values(["events", ITEM], ascending=[False, True], kind="stable")
    return pd.Series(frame["events"].to_numpy(), index=pd.Index(frame[ITEM], name=ITEM), name="events")


def popularity_profile(popularity: pd.Series, recommendations: pd.DataFrame, bins: int = 10) -> pd.DataFrame:
    """Share of each model's recommendation slots per item-popularity bin, next to the share of events.

    The catalogue (``popularity``, most popular first) is cut into ``bins`` bins of (nearly) equal item count:
    bin 1 holds the most popular items. Rows: ``model`` (``"events before as_of"`` for the reference), ``bin``
    (1-based), ``share`` (each model's shares sum to 1). Recommended items absent from ``popularity`` are left
    out. An unbiased recommender would spread its slots like the events do, or flatter.
    """
    n_items = len(popularity)
    bins = max(1, min(bins, n_items))
    bin_of = pd.Series(np.arange(n_items) * bins // max(n_items, 1) + 1, index=popularity.index)
    rows = []
    total = float(popularity.sum())
    event_share = popularity.groupby(bin_of).sum() / total if total else pd.Series(0.0, index=bin_of.unique())
    rows += [("events before as_of", int(b), float(s)) for b, s in event_share.items()]
    for model, group in recommendations.groupby("model", sort=False):
        slot_bins = bin_of.reindex(group[ITEM].astype(str)).dropna().astype(int)
        shares = slot_bins.value_counts(normalize=True).reindex(range(1, bins + 1), fill_value=0.0)
        rows += [(str(model), int(b), float(s)) for b, s in shares.items()]
    return pd.DataFrame(rows, columns=["model", "bin", "share"])


def recommendation_stats(popularity: pd.Series, recommendations: pd.DataFrame) -> pd.DataFrame:
    """Per model: users served, catalogue coverage, popularity of what it recommends, and concentration.

    Columns: ``users``; ``slots`` (rows); ``items`` (distinct items recommended); ``coverage`` (``items`` over
    the catalogue size); ``head_share`` (share of slots on the 10% most popular items, at least one item);
    ``mean_events`` (mean event count of recommended items, over slots); ``gini`` (Gini coefficient of how
    often each catalogue item is recommended: 0 every item equally often, near 1 all slots on one item).
    """
    n_items = len(popularity)
    head = set(popularity.index[: max(1, math.ceil(n_items * 0.1))]) if n_items else set()
    rows = []
    for model, group in recommendations.groupby("model", sort=False):
        items = group[ITEM].astype(str)
        per_item = items.value_counts().reindex(popularity.index, fill_value=0).to_numpy(dtype=np.float64)
        rows.append(
            {
                "model": str(model),
                "users": int(group[USER].nunique()),
                "slots": len(group),
                "items": int(items.nunique()),
                "coverage": items.nunique() / n_items if n_items else math.nan,
                "head_share": float(items.isin(head).mean()) if len(items) else math.nan,
                "mean_events": float(popularity.reindex(items).fillna(0).mean()) if len(items) else math.nan,
                "gini": gini(per_item),
            }
        )
    return pd.DataFrame(
        rows, columns=["model", "users", "slots", "items", "coverage", "head_share", "mean_events", "gini"]
    )


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts: 0 when all are equal, (n-1)/n when one holds everything."""
    values = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(values), float(values.sum())
    if n == 0 or total == 0:
        return math.nan
    ranks = np.arange(1, n + 1)
    return float((2.0 * (ranks * values).sum()) / (n * total) - (n + 1) / n)


# ---- sample users ------------------------------------------------------------------------------------------


def sample_users(interactions: pd.DataFrame, recommended_users: Iterable[str], n: int) -> list[str]:
    """Up to ``n`` users spread over activity: the lightest, the heaviest and evenly spaced ones between.

    Only users with events and recommendations qualify; ties in activity go by user id, so the pick is
    reproducible.
    """
    if n < 1:
        return []
    counts = interactions[USER].astype(str).value_counts()
    eligible = counts[counts.index.isin(pd.Index([str(u) for u in recommended_users]))]
    if eligible.empty:
        return []
    order = pd.DataFrame({USER: eligible.index, "events": eligible.to_numpy()})
    order = order.sort_values(["events", USER], kind="stable").reset_index(drop=True)
    positions = np.unique(np.linspace(0, len(order) - 1, num=min(n, len(order))).round().astype(int))
    return order.loc[positions, USER].tolist()


# ---- rendering ---------------------------------------------------------------------------------------------


def render_report(inputs: ReportInputs, location: Path | None = None) -> str:
    """The report as one HTML document (a string); ``location``: where it will be written, so that links to local
    files (the Data Docs) are relative and survive moving or archiving the output folder."""
    summary = inputs.summary
    board = pd.DataFrame(list(summary.get("leaderboard") or []))
    models = [str(m) for m in board["model"]] if "model" in board.columns else []
    if inputs.recommendations is not None and "model" in inputs.recommendations.columns:
        models += [str(m) for m in inputs.recommendations["model"].unique() if str(m) not in models]
    colors = {model: _PALETTE[i % len(_PALETTE)] for i, model in enumerate(models)}
    by_group = metrics_long(inputs.metrics, summary.get("leaderboard"), inputs.k)
    metrics = by_group[by_group["group"] == "all"]
    sections = [
        ("overview", "Overview", lambda: _overview(inputs)),
        ("leaderboard", "Leaderboard", lambda: _leaderboard(inputs, board)),
        ("metrics", f"Metrics @{inputs.k}", lambda: _metric_bars(inputs, metrics, models, colors)),
        ("cutoffs", "Metrics by cut-off K", lambda: _cutoff_curves(inputs, metrics, models, colors)),
        ("groups", "Metrics by user activity", lambda: _groups(inputs, by_group, models, colors)),
        ("training", "Training curves", lambda: _training(inputs, colors)),
        ("popularity", "Popularity bias and coverage", lambda: _popularity(inputs, models, colors)),
        ("samples", "Sample recommendations", lambda: _samples(inputs, models)),
    ]
    body = [_header(summary, location)]
    nav = " · ".join(f'<a href="#{anchor}">{html.escape(title)}</a>' for anchor, title, _ in sections)
    body.append(f'<nav class="toc">{nav}</nav>')
    for anchor, title, build in sections:
        body.append(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{_guarded(title, build)}</section>')
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    body.append(f"<footer>Generated by recforge at {generated}.</footer>")
    title = f"recforge run {summary.get('run_id', '?')} — {summary.get('dataset', '?')}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _guarded(title: str, build: Callable[[], str]) -> str:
    """One section's HTML; an unexpected error becomes a visible note instead of losing the whole report."""
    try:
        return build()
    except Exception as exc:  # a broken plot must not hide the rest of the run's report
        logger.exception("report section %r failed", title)
        return (
            f'<p class="section-error">This section could not be drawn: {html.escape(type(exc).__name__)}: '
            f"{html.escape(str(exc))}</p>"
        )


def _header(summary: Mapping[str, Any], location: Path | None = None) -> str:
    status = str(summary.get("status") or "unknown")
    champion = summary.get("champion")
    reason = summary.get("champion_reason")
    facts = [
        ("data set", summary.get("dataset")),
        ("as of", summary.get("as_of")),
        ("database", summary.get("database")),
        ("rows written", _inline_mapping(summary.get("rows_written"))),
    ]
    items = "".join(
        f"<dt>{html.escape(name)}</dt><dd>{html.escape(str(value)) if value not in (None, '') else '—'}</dd>"
        for name, value in facts
    )
    docs = summary.get("data_docs")
    if docs:
        items += (
            f'<dt>validation details</dt><dd><a href="{html.escape(_file_url(docs, location))}">Great Expectations '
            "Data Docs</a></dd>"
        )
    champion_html = (
        f'<p class="champion">Champion: <strong>{html.escape(str(champion))}</strong>'
        f"{' — ' + html.escape(str(reason)) if reason else ''}</p>"
        if champion
        else '<p class="champion">No champion was chosen: no model produced the primary metric.</p>'
    )
    failed = summary.get("failed_models") or {}
    failed_html = (
        '<ul class="failed">'
        + "".join(
            f"<li><strong>{html.escape(str(m))}</strong> failed: {html.escape(str(e))}</li>" for m, e in failed.items()
        )
        + "</ul>"
        if failed
        else ""
    )
    skipped = summary.get("skipped_models") or {}
    skipped_html = "".join(
        f'<p class="skipped"><strong>{html.escape(str(m))}</strong> left out: {html.escape(str(why))}</p>'
        for m, why in skipped.items()
    )
    return (
        f"<header><h1>recforge run <code>{html.escape(str(summary.get('run_id', '?')))}</code> "
        f'<span class="status status-{html.escape(status)}">{html.escape(status)}</span></h1>'
        f"{champion_html}<dl>{items}</dl>{failed_html}{skipped_html}</header>"
    )


def _overview(inputs: ReportInputs) -> str:
    summary = inputs.summary
    parts = ['<div class="grid">']
    counts = summary.get("row_counts") or {}
    if counts:
        rows = "".join(
            f"<tr><td>{html.escape(str(s))}</td><td class='num'>{int(n):,}</td></tr>" for s, n in counts.items()
        )
        parts.append(
            f'<div class="card"><h3>Rows per stage</h3><table><tr><th>stage</th><th>rows</th></tr>{rows}</table>'
        )
    else:
        parts.append('<div class="card"><h3>Rows per stage</h3><p class="absent">No row counts were recorded.</p>')
    if inputs.data is not None:
        parts.append(f"<p><strong>Cleaning:</strong> {html.escape(inputs.data.cleaning.summary())}</p>")
    parts.append("</div>")
    parts.append(f'<div class="card"><h3>Validation</h3>{_validation(inputs)}</div>')
    parts.append("</div>")
    parts.append(_timings(inputs))
    return "".join(parts)


def _validation(inputs: ReportInputs) -> str:
    records = list(inputs.validation or [])
    if not records and not inputs.validation_summary:
        return '<p class="absent">No validation outcomes were passed to the report.</p>'
    out = []
    if records:
        failed = [r for r in records if not r.get("success")]
        critical = [r for r in failed if r.get("severity") == "critical"]
        verdict = "passed" if not critical else "FAILED"
        out.append(
            f"<p>{len(records)} checks: <strong>{len(records) - len(failed)} passed</strong>, "
            f"{len(critical)} critical failures, {len(failed) - len(critical)} warnings — {verdict}.</p>"
        )
        if failed:
            rows = "".join(
                f"<tr><td>{html.escape(str(r.get('severity', '')))}</td>"
                f"<td>{html.escape(_where(r))}</td>"
                f"<td>{html.escape(str(r.get('expectation', '')))}</td>"
                f"<td class='num'>{html.escape(str(r.get('unexpected', '')))}</td>"
                f"<td title='{html.escape(str(r.get('sample', '')), quote=True)}'>"
                f"{html.escape(_shorten(str(r.get('sample', ''))))}</td></tr>"
                for r in failed
            )
            out.append(
                "<div class='scroll'><table>"
                "<tr><th>severity</th><th>where</th><th>check</th><th>rows</th><th>sample</th></tr>"
                f"{rows}</table></div>"
            )
    elif inputs.validation_summary:
        out.append(f"<pre>{html.escape(inputs.validation_summary)}</pre>")
    return "".join(out)


def _where(record: Mapping[str, Any]) -> str:
    """``table.column`` of a validation outcome, or just ``table`` for table-level checks."""
    table, column = str(record.get("table") or ""), str(record.get("column") or "")
    return f"{table}.{column}" if column else table


def _shorten(text: str, limit: int = 160) -> str:
    """``text`` cut to ``limit`` characters (the full text stays in the cell's tooltip)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _timings(inputs: ReportInputs) -> str:
    stages = {str(k): float(v) for k, v in (inputs.summary.get("timings") or {}).items() if _is_number(v)}
    per_model = _model_timings(inputs)
    if not stages and per_model.empty:
        return '<p class="absent">No timings were recorded.</p>'
    fig = _figure(10, 0.45 * max(len(stages), len(per_model), 3) + 1.2)
    axes = fig.subplots(1, 2) if stages and not per_model.empty else [fig.subplots(1, 1)]
    position = 0
    if stages:
        ax = axes[position]
        names = list(stages)[::-1]
        ax.barh(names, [stages[n] for n in names], color="#4C72B0")
        ax.set_xlabel("seconds")
        ax.set_title("Wall-clock time per stage")
        for y, name in enumerate(names):
            ax.annotate(f" {stages[name]:.2f}", (stages[name], y), va="center", fontsize=8)
        position += 1
    if not per_model.empty:
        ax = axes[position]
        frame = per_model.iloc[::-1]
        left = np.zeros(len(frame))
        colors = ("#4C72B0", "#8DA0CB", "#DD8452", "#F2B37F")
        for column, color in zip(frame.columns, colors, strict=False):
            values = frame[column].fillna(0.0).to_numpy()
            ax.barh(frame.index, values, left=left, color=color, label=column.replace("_", " "))
            left += values
        ax.set_xlabel("seconds")
        ax.set_title("Time per model")
        ax.legend(fontsize=8, loc="lower right")
    table = per_model.reset_index().rename(columns={"index": "model"})
    table_html = _table(table, float_format="{:.3f}") if not per_model.empty else ""
    return _png(fig, "Bar charts of the seconds each stage and each model took") + table_html


def _model_timings(inputs: ReportInputs) -> pd.DataFrame:
    """Seconds per model: evaluation fit and scoring (from the leaderboard) and refit/recommend (if given)."""
    rows: dict[str, dict[str, float]] = {}
    for record in inputs.summary.get("leaderboard") or []:
        model = str(record.get("model"))
        entry = rows.setdefault(model, {})
        for source, column in (("fit_seconds", "evaluation fit"), ("score_seconds", "evaluation scoring")):
            if _is_number(record.get(source)):
                entry[column] = float(record[source])
    for model, timing in inputs.refit_timings.items():
        entry = rows.setdefault(str(model), {})
        for source, column in (("fit_seconds", "refit"), ("recommend_seconds", "recommend all users")):
            if _is_number(timing.get(source)):
                entry[column] = float(timing[source])
    columns = ["evaluation fit", "evaluation scoring", "refit", "recommend all users"]
    frame = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=columns)
    frame = frame.dropna(axis=1, how="all").dropna(axis=0, how="all")
    return frame.astype("float64")


def _leaderboard(inputs: ReportInputs, board: pd.DataFrame) -> str:
    if board.empty:
        return '<p class="absent">No models were evaluated.</p>'
    shown = board.drop(columns=[c for c in board.columns if c.endswith("_seconds") or c in COUNTERS])
    if "error" in shown.columns and shown["error"].isna().all():
        shown = shown.drop(columns="error")
    # A metric with <metric>_ci_low / _ci_high columns shows as one cell "value [low, high]".
    with_ci = [c for c in shown.columns if f"{c}_ci_low" in shown.columns and f"{c}_ci_high" in shown.columns]
    for column in with_ci:
        shown[column] = [
            _WithCI(_float(v), _float(lo), _float(hi))
            for v, lo, hi in zip(shown[column], shown[f"{column}_ci_low"], shown[f"{column}_ci_high"], strict=True)
        ]
    shown = shown.drop(columns=[f"{c}_ci_{side}" for c in with_ci for side in ("low", "high")])
    champion = inputs.summary.get("champion")
    lower = inputs.primary_metric in LOWER_IS_BETTER
    note = (
        f"<p>Sorted by <strong>{html.escape(inputs.primary_metric)}</strong>"
        f"{'' if lower else '@' + str(inputs.k)} ({'lower' if lower else 'higher'} is better) on the "
        "per-user temporal holdout; <em>seconds</em> is the whole evaluation of the model."
        f"{' Brackets hold the confidence interval.' if with_ci else ''}</p>"
    )
    return note + _table(shown, float_format="{:.4f}", highlight=("model", champion))


class _WithCI(NamedTuple):
    """A leaderboard value with its confidence interval, rendered in one cell."""

    value: float
    low: float
    high: float


def _metric_bars(inputs: ReportInputs, metrics: pd.DataFrame, models: list[str], colors: dict[str, str]) -> str:
    at_k = metrics[(metrics["k"] == inputs.k) | metrics["k"].isna()]
    at_k = at_k[np.isfinite(at_k["value"])]
    if at_k.empty:
        return '<p class="absent">No metrics to plot.</p>'
    names = list(dict.fromkeys(at_k["metric"]))
    has_ci = bool(np.isfinite(at_k["ci_low"]).any() or np.isfinite(at_k["ci_high"]).any())
    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    fig = _figure(3.0 * columns, 2.6 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    order = [m for m in models if m in set(at_k["model"])] + sorted(set(at_k["model"]) - set(models))
    for ax, name in zip(axes, names, strict=False):
        part = (
            at_k[at_k["metric"] == name]
            .set_index("model")
            .reindex([m for m in order if m in set(at_k[at_k["metric"] == name]["model"])])
        )
        x = np.arange(len(part))
        values = part["value"].to_numpy()
        ax.bar(x, values, color=[colors.get(m, "#888888") for m in part.index])
        low = part["ci_low"].to_numpy()
        high = part["ci_high"].to_numpy()
        with_ci = np.isfinite(low) & np.isfinite(high)
        if with_ci.any():
            err = np.vstack([values - low, high - values])[:, with_ci]
            ax.errorbar(x[with_ci], values[with_ci], yerr=np.clip(err, 0, None), fmt="none", ecolor="black", capsize=3)
        # Labels sit above the interval's top, where there is one, so they never overlap the error bar.
        tops = np.where(np.isfinite(high), np.fmax(values, high), values)
        for xi, v, top in zip(x, values, tops, strict=True):
            ax.annotate(
                f"{v:.3f}",
                (xi, top),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.set_xticks(x, [str(m) for m in part.index], rotation=30, ha="right", fontsize=8)
        label = name if name in LOWER_IS_BETTER else f"{name}@{inputs.k}"
        ax.set_title(f"{label} ({'lower' if name in SHOWN_LOWER_IS_BETTER else 'higher'} is better)", fontsize=9)
        ax.margins(y=0.15)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    note = (
        "<p>Error bars are the confidence intervals the evaluation reported.</p>"
        if has_ci
        else "<p>No confidence intervals were reported for these metrics, so the bars carry none.</p>"
    )
    return _png(fig, f"Bar charts of each metric at K={inputs.k} per model") + note


def _cutoff_curves(inputs: ReportInputs, metrics: pd.DataFrame, models: list[str], colors: dict[str, str]) -> str:
    ranked = metrics[metrics["k"].notna() & np.isfinite(metrics["value"])]
    if ranked.empty:
        return '<p class="absent">No top-N metrics to plot.</p>'
    several = [m for m in CURVE_METRICS if ranked[ranked["metric"] == m]["k"].nunique() > 1]
    single = not several
    names = several or [m for m in (inputs.primary_metric, "ndcg") if m in set(ranked["metric"])][:1]
    if not names:
        return '<p class="absent">No NDCG values to plot.</p>'
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig = _figure(4.0 * columns, 3.0 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes, names, strict=False):
        part = ranked[ranked["metric"] == name]
        for model in [m for m in models if m in set(part["model"])] + sorted(set(part["model"]) - set(models)):
            curve = part[part["model"] == model].sort_values("k")
            ax.plot(curve["k"], curve["value"], marker="o", label=model, color=colors.get(model, "#888888"))
            low, high = curve["ci_low"].to_numpy(), curve["ci_high"].to_numpy()
            if np.isfinite(low).all() and np.isfinite(high).all() and len(curve) > 1:
                ax.fill_between(curve["k"], low, high, color=colors.get(model, "#888888"), alpha=0.15)
        ks = sorted(part["k"].unique())
        ax.set_xticks(ks, [f"{k:g}" for k in ks])
        if len(ks) == 1:
            ax.set_xlim(ks[0] - 1, ks[0] + 1)
        ax.set_xlabel("K (list length)")
        ax.set_title(f"{name}@K")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    text = (
        f"<p>Only K={inputs.k} was evaluated, so each model is one point; evaluate several cut-offs to see "
        "how quality changes with the list length.</p>"
        if single
        else "<p>How each metric grows with the length K of the recommended list.</p>"
    )
    return _png(fig, "Line charts of metrics by cut-off K per model") + text


def _groups(inputs: ReportInputs, metrics: pd.DataFrame, models: list[str], colors: dict[str, str]) -> str:
    """The primary metric per user-activity group (cold / regular / heavy users), with intervals if given."""
    name = inputs.primary_metric
    part = metrics[(metrics["metric"] == name) & np.isfinite(metrics["value"])]
    part = part[part["k"].isna()] if name in LOWER_IS_BETTER else part[part["k"] == inputs.k]
    groups = [g for g in _GROUP_ORDER if g in set(part["group"])]
    groups += sorted(set(part["group"]) - set(groups))
    if set(groups) <= {"all"}:
        return (
            '<p class="absent">The evaluation did not break the metrics down by user activity group '
            "(cold, regular, heavy users).</p>"
        )
    order = [m for m in models if m in set(part["model"])] + sorted(set(part["model"]) - set(models))
    fig = _figure(max(5.0, 1.3 * len(groups) * max(len(order), 1) * 0.6 + 2), 3.4)
    ax = fig.subplots(1, 1)
    width = 0.8 / max(len(order), 1)
    x = np.arange(len(groups))
    for position, model in enumerate(order):
        rows = part[part["model"] == model].set_index("group").reindex(groups)
        values = rows["value"].to_numpy()
        offsets = x - 0.4 + width * (position + 0.5)
        ax.bar(offsets, values, width=width, label=model, color=colors.get(model, "#888888"))
        low, high = rows["ci_low"].to_numpy(), rows["ci_high"].to_numpy()
        with_ci = np.isfinite(low) & np.isfinite(high) & np.isfinite(values)
        if with_ci.any():
            err = np.clip(np.vstack([values - low, high - values])[:, with_ci], 0, None)
            ax.errorbar(offsets[with_ci], values[with_ci], yerr=err, fmt="none", ecolor="black", capsize=3)
    ax.set_xticks(x, groups)
    label = name if name in LOWER_IS_BETTER else f"{name}@{inputs.k}"
    ax.set_title(f"{label} by user activity group")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    text = (
        "<p>Users grouped by how many training events they have: a model that only serves heavy users well "
        "shows it here. Error bars are the reported confidence intervals, where there are any.</p>"
    )
    return _png(fig, f"Bar chart of {label} per user activity group and model") + text


def _training(inputs: ReportInputs, colors: dict[str, str]) -> str:
    curves = {m: {n: list(p) for n, p in named.items() if len(p)} for m, named in inputs.training_curves.items()}
    curves = {m: named for m, named in curves.items() if named}
    if not curves:
        return (
            '<p class="absent">No model in this run reported training curves. Iterative models show them by '
            "exposing <code>training_curve_</code> (see <code>recforge.report.training_curves_of</code>).</p>"
        )
    from matplotlib.ticker import MaxNLocator

    names = list(dict.fromkeys(n for named in curves.values() for n in named))
    fig = _figure(4.2 * len(names), 3.0)
    axes = np.atleast_1d(fig.subplots(1, len(names), squeeze=False)).ravel()
    for ax, name in zip(axes, names, strict=True):
        for model, named in curves.items():
            if name in named:
                epochs, values = zip(*named[name], strict=True)
                ax.plot(epochs, values, marker=".", label=model, color=colors.get(model, "#888888"))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(name.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig, "Training curves per epoch of the iterative models")


def _popularity(inputs: ReportInputs, models: list[str], colors: dict[str, str]) -> str:
    if inputs.data is None or inputs.recommendations is None or inputs.recommendations.empty:
        return '<p class="absent">Needs the prepared data and the published recommendations; one is missing.</p>'
    popularity = item_popularity(inputs.data.interactions, inputs.data.items)
    recs = inputs.recommendations
    profile = popularity_profile(popularity, recs)
    stats = recommendation_stats(popularity, recs)
    order = [m for m in models if m in set(stats["model"])] + [m for m in stats["model"] if m not in models]
    stats = stats.set_index("model").loc[order].reset_index()
    fig = _figure(11, 3.6)
    left, right = fig.subplots(1, 2, width_ratios=[1.6, 1])
    reference = profile[profile["model"] == "events before as_of"]
    left.bar(
        reference["bin"],
        reference["share"],
        color="#DDDDDD",
        edgecolor="#999999",
        label="events before as_of",
    )
    for model in order:
        part = profile[profile["model"] == model]
        left.plot(part["bin"], part["share"], marker="o", label=model, color=colors.get(model, "#888888"))
    n_bins = int(profile["bin"].max())
    left.set_xticks(range(1, n_bins + 1))
    left.set_xlabel(f"item popularity bin (1 = most popular {100 // n_bins}% of {len(popularity):,} items)")
    left.set_ylabel("share")
    left.set_title("Where recommendation slots go, by item popularity")
    left.legend(fontsize=8)
    x = np.arange(len(stats))
    right.bar(x, stats["coverage"], color=[colors.get(m, "#888888") for m in stats["model"]])
    for xi, v in zip(x, stats["coverage"], strict=True):
        right.annotate(
            f"{v:.1%}",
            (xi, v),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    right.set_xticks(x, stats["model"], rotation=30, ha="right", fontsize=8)
    right.set_ylim(0, 1.05)
    right.set_title("Catalogue coverage of the published lists")
    table = stats.rename(
        columns={
            "coverage": "catalogue coverage",
            "head_share": "slots on top-10% items",
            "mean_events": "mean events of recommended items",
            "gini": "Gini of item exposure",
        }
    )
    note = (
        "<p>The grey bars show how the events before <em>as_of</em> spread over the catalogue's popularity "
        "bins; a line above them at bin 1 means the model concentrates on already-popular items. Coverage is "
        "the share of the catalogue that appears in at least one user's list.</p>"
    )
    return (
        _png(fig, "Recommendation share by item popularity bin, and catalogue coverage per model")
        + note
        + _table(table, float_format="{:.3f}")
    )


def _samples(inputs: ReportInputs, models: list[str]) -> str:
    if inputs.data is None or inputs.recommendations is None or inputs.recommendations.empty:
        return '<p class="absent">Needs the prepared data and the published recommendations; one is missing.</p>'
    recs = inputs.recommendations
    interactions = inputs.data.interactions
    titles = _titles(inputs.data.items)
    champion = inputs.summary.get("champion")
    # Membership and string ids computed once: the frames hold one row per (model, user, rank), 47,150 per model
    # on ML-100K, and per-model / per-user recomputation took seconds of the report task.
    published_models = set(recs["model"].unique())
    shown_models = [m for m in [champion, *models] if m and m in published_models]
    shown_models = list(dict.fromkeys(shown_models))[:4]
    users = sample_users(interactions, recs[USER].astype(str).unique(), inputs.sample_users)
    if not users:
        return '<p class="absent">No user has both events and recommendations.</p>'
    recs = recs[recs["model"].isin(shown_models)]
    recs = recs.assign(**{USER: recs[USER].astype(str)})
    recs = recs[recs[USER].isin(users)]
    cards = []
    user_events = interactions[interactions[USER].astype(str).isin(users)]
    for user in users:
        history = user_events[user_events[USER].astype(str) == user].sort_values(TIMESTAMP, ascending=False)
        lines = []
        for row in history.head(inputs.sample_items).itertuples(index=False):
            item = str(getattr(row, ITEM))
            when = getattr(row, TIMESTAMP)
            rating = getattr(row, RATING, None) if RATING in history.columns else None
            stars = f" <span class='muted'>★{rating:g}</span>" if rating is not None and pd.notna(rating) else ""
            date = f" <span class='muted'>{when:%Y-%m-%d}</span>" if pd.notna(when) else ""
            lines.append(f"<li>{_item_label(item, titles)}{stars}{date}</li>")
        columns = [
            f'<div class="col"><h4>Latest of {len(history):,} events</h4><ol class="plain">{"".join(lines)}</ol></div>'
        ]
        for model in shown_models:
            top = recs[(recs["model"] == model) & (recs[USER] == user)]
            top = (
                top.sort_values("rank").head(inputs.sample_items)
                if "rank" in top.columns
                else top.head(inputs.sample_items)
            )
            items = "".join(f"<li>{_item_label(str(i), titles)}</li>" for i in top[ITEM])
            badge = " <span class='badge'>champion</span>" if model == champion else ""
            columns.append(f'<div class="col"><h4>{html.escape(model)}{badge}</h4><ol>{items}</ol></div>')
        cards.append(
            f'<div class="user"><h3>User <code>{html.escape(user)}</code></h3>'
            f'<div class="cols">{"".join(columns)}</div></div>'
        )
    note = (
        f"<p>{len(users)} users picked across activity levels (lightest to heaviest); their latest events "
        f"before <em>as_of</em> next to the top {inputs.sample_items} of {len(shown_models)} model(s).</p>"
    )
    return note + "".join(cards)


def _titles(items: pd.DataFrame | None) -> dict[str, str]:
    if items is None or ITEM not in items.columns:
        return {}
    column = title_column(items)
    if column is None:
        return {}
    named = items[[ITEM, column]].dropna()
    return dict(zip(named[ITEM].astype(str), named[column].astype(str), strict=True))


def _item_label(item: str, titles: Mapping[str, str]) -> str:
    title = titles.get(item)
    if title:
        return f"{html.escape(title)} <span class='muted'>({html.escape(item)})</span>"
    return f"<code>{html.escape(item)}</code>"


# ---- small helpers -----------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    """A pyplot-free figure: no global state, so concurrent tasks can draw at the same time."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _table(frame: pd.DataFrame, float_format: str = "{:.4f}", highlight: tuple[str, Any] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for record in frame.to_dict(orient="records"):
        marked = highlight is not None and highlight[1] is not None and record.get(highlight[0]) == highlight[1]
        cells = "".join(_cell(v, float_format) for v in record.values())
        row_class = ' class="highlight"' if marked else ""
        body.append(f"<tr{row_class}>{cells}</tr>")
    # Wide tables scroll inside their own box instead of widening the whole page.
    return f"<div class='scroll'><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _cell(value: Any, float_format: str) -> str:
    if isinstance(value, _WithCI):
        if math.isnan(value.value):
            return "<td class='muted'>—</td>"
        interval = (
            ""
            if math.isnan(value.low) or math.isnan(value.high)
            else f" <span class='muted'>[{float_format.format(value.low)}, {float_format.format(value.high)}]</span>"
        )
        return f"<td class='num'>{float_format.format(value.value)}{interval}</td>"
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "<td class='muted'>—</td>"
    if isinstance(value, (float, np.floating)):
        return f"<td class='num'>{float_format.format(value)}</td>"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"<td class='num'>{int(value):,}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def _inline_mapping(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v}" for k, v in value.items()) or None
    return None if value is None else str(value)


def _file_url(path: str, location: Path | None = None) -> str:
    """A link to ``path``: relative to the folder of ``location`` (the page linking to it) when given."""
    if "://" in path:
        return path
    if location is None:
        return Path(path).resolve().as_uri()
    relative = os.path.relpath(Path(path).resolve(), location.parent.resolve())
    return urllib.parse.quote(Path(relative).as_posix())


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;
padding:1rem 2rem;color:#1d2430;line-height:1.45}
h1{font-size:1.5rem;margin:.3rem 0} h2{border-bottom:1px solid #d8dee8;padding-bottom:.2rem;margin-top:2rem}
h3{margin:.4rem 0} h4{margin:.2rem 0 .3rem;font-size:.95rem}
code{background:#f1f3f7;padding:0 .25rem;border-radius:3px}
.status{font-size:.8rem;padding:.15rem .5rem;border-radius:1rem;vertical-align:middle;color:#fff;
background:#777}
.status-completed{background:#2e8540}.status-partial{background:#c7831a}.status-failed{background:#b3261e}
.champion{font-size:1.1rem} dl{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem}
dt{color:#5b6475} dd{margin:0} .toc{margin:1rem 0;font-size:.9rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.88rem}
th,td{border:1px solid #d8dee8;padding:.2rem .5rem}
th{background:#f4f6fa;text-align:left} td{max-width:28rem;overflow-wrap:break-word}
.scroll{overflow-x:auto;max-width:100%} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.highlight td{background:#eaf5ec;font-weight:600}
.grid{display:grid;grid-template-columns:minmax(260px,1fr) minmax(320px,2fr);gap:1rem}
.card{border:1px solid #d8dee8;border-radius:6px;padding:.6rem 1rem}
img.plot{max-width:100%;height:auto;display:block;margin:.5rem 0}
.absent{color:#5b6475;font-style:italic} .section-error{color:#b3261e;font-weight:600}
.muted{color:#7a8394;font-size:.85em} .badge{background:#2e8540;color:#fff;border-radius:1rem;padding:0 .4rem;
font-size:.75rem} .user{border:1px solid #d8dee8;border-radius:6px;padding:.5rem 1rem;margin:.8rem 0}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(220px,1fr));gap:1rem}
ol{margin:0;padding-left:1.4rem;font-size:.88rem} ol.plain{list-style:none;padding-left:0}
ul.failed{color:#b3261e} pre{white-space:pre-wrap;font-size:.85rem}
footer{margin:2rem 0 1rem;color:#7a8394;font-size:.8rem}
"""
