"""MovieLens 100K benchmark under the project's standard evaluation protocol (docs/BENCHMARKS.md).

    python -m bench.ml100k [--data-dir ../shared/data/ml-100k] [--models popularity,item_knn] [--repeats 3]

Prints markdown: top-N metrics @K per model on the per-user temporal holdout, RMSE/MAE on the random 80/20 row
split for models that predict ratings, and fit/recommend times as ratios to the popularity baseline measured in
the same run (absolute seconds depend on the machine; ratios travel better). Metrics come from the first
repetition; every repetition must reproduce them, and times are the median over repetitions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench import DEFAULT_DATA_DIR
from recforge.data.movielens import load_movielens_100k
from recforge.evaluation import evaluate_ratings, evaluate_topn
from recforge.metrics import TOPN_KEYS
from recforge.split import TemporalSplit, temporal_holdout
from recmodels.base import RunSettings
from recmodels.registry import get_model_class, model_names

BASELINE = "popularity"
_TIMING_KEYS = ("fit_seconds", "score_seconds", "predict_seconds")


@dataclass
class ModelResult:
    """One model's metrics (from the first repetition) and its timings (every repetition)."""

    name: str
    topn: dict[str, float]
    ratings: dict[str, float] | None = None
    fit_seconds: list[float] = field(default_factory=list)
    score_seconds: list[float] = field(default_factory=list)

    @property
    def fit_median(self) -> float:
        return statistics.median(self.fit_seconds)

    @property
    def score_median(self) -> float:
        return statistics.median(self.score_seconds)


def _metrics_only(values: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in values.items() if key not in _TIMING_KEYS}


def run_model(
    name: str,
    split: TemporalSplit,
    interactions: pd.DataFrame,
    k: int,
    repeats: int,
    settings: RunSettings,
) -> ModelResult:
    """Evaluate one registered model ``repeats`` times; fails loudly if a repetition changes the metrics."""
    cls = get_model_class(name)
    result: ModelResult | None = None
    for _ in range(repeats):
        topn = evaluate_topn(cls, split, k=k, settings=settings)
        if result is None:
            result = ModelResult(name, _metrics_only(topn))
        elif _metrics_only(topn) != result.topn:
            # Same data, same seed: a different answer is a bug (non-determinism), not noise to average.
            raise RuntimeError(f"{name}: metrics changed between repetitions: {result.topn} vs {topn}")
        result.fit_seconds.append(topn["fit_seconds"])
        result.score_seconds.append(topn["score_seconds"])
    assert result is not None  # repeats >= 1 is checked by the caller
    if cls.predicts_ratings:
        result.ratings = _metrics_only(evaluate_ratings(cls, interactions, seed=settings.seed, settings=settings))
    return result


def _ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.1f}×" if baseline > 0 else "n/a"


def topn_table(results: Sequence[ModelResult], k: int) -> str:
    """Markdown table of top-N metrics and time ratios; the first result is the popularity baseline."""
    base = results[0]
    labels = {"ndcg": "NDCG", "map": "MAP", "precision": "P", "recall": "R", "mrr": "MRR", "hit_rate": "HR"}
    order = ("ndcg", "map", "precision", "recall", "mrr", "hit_rate")
    assert set(order) == set(TOPN_KEYS)
    head = ["model", *(f"{labels[key]}@{k}" for key in order), "coverage", "fit time", "recommend time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        cells = [res.name, *(f"{res.topn[key]:.4f}" for key in order), f"{res.topn['coverage']:.4f}"]
        cells += [_ratio(res.fit_median, base.fit_median), _ratio(res.score_median, base.score_median)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratings_table(results: Sequence[ModelResult]) -> str | None:
    """Markdown table of RMSE/MAE for the models that predict ratings, or None when there are none."""
    rated = [res for res in results if res.ratings is not None]
    if not rated:
        return None
    lines = ["| model | RMSE | MAE | unknown test pairs |", "|---|---|---|---|"]
    for res in rated:
        assert res.ratings is not None
        r = res.ratings
        lines.append(f"| {res.name} | {r['rmse']:.4f} | {r['mae']:.4f} | {int(r['unknown_pairs'])} |")
    return "\n".join(lines)


def report(
    results: Sequence[ModelResult], split: TemporalSplit, interactions: pd.DataFrame, k: int, repeats: int
) -> str:
    """The whole markdown report printed by :func:`main`."""
    base = results[0]
    out = [
        f"## MovieLens 100K — standard protocol, top-{k}",
        "",
        f"{len(interactions):,} events; temporal holdout: {len(split.train):,} train / {len(split.test):,} test "
        f"events, {split.n_test_users} users evaluated; dropped {split.dropped_unseen_items} test events with "
        f"items unseen in train and {split.dropped_seen_pairs} repeats of train items; "
        f"{split.users_without_train} users without train events, {split.users_without_test} without test events.",
        "",
        topn_table(results, k),
        "",
        f"Times are medians of {repeats} run(s), as multiples of the popularity baseline in the same run "
        f"(popularity here: fit {base.fit_median * 1e3:.1f} ms, recommend {base.score_median * 1e3:.1f} ms "
        f"for {int(base.topn['users'])} users).",
    ]
    rating = ratings_table(results)
    if rating is not None:
        out += ["", "### Rating prediction — random 80/20 split (seed 42)", "", rating]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ml100k", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder with u.data")
    parser.add_argument(
        "--models",
        default=",".join(model_names()),
        help=f"comma-separated registered models (default: all: {','.join(model_names())}); "
        f"{BASELINE} always runs as the timing baseline",
    )
    parser.add_argument("--k", type=int, default=10, help="list length (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repetitions per model (default 3)")
    parser.add_argument("--seed", type=int, default=42, help="RunSettings seed and rating-split seed")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    for name in names:
        try:
            get_model_class(name)
        except ValueError as err:
            parser.error(str(err))
    names = [BASELINE, *(name for name in names if name != BASELINE)]

    started = time.perf_counter()
    interactions = load_movielens_100k(args.data_dir).interactions
    split = temporal_holdout(interactions)
    settings = RunSettings(seed=args.seed)
    results = []
    for name in names:
        print(f"[bench] {name} …", file=sys.stderr, flush=True)
        results.append(run_model(name, split, interactions, args.k, args.repeats, settings))
    print(report(results, split, interactions, args.k, args.repeats))
    print(f"[bench] done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
