"""recforge's neighbourhood models side by side with implicit and scikit-surprise on MovieLens 100K.

    python -m bench.compare_knn [--data-dir ../shared/data/ml-100k] [--repeats 3]

Two comparisons, each run in one process with the timings interleaved (recforge, reference, recforge, …) and
reported as medians and as ratios recforge / reference, next to the accuracy of both:

1. Ranking (standard temporal holdout, NDCG@10): ``item_knn`` in implicit mode (its defaults, and the plain
   cosine with K = 50) against implicit's ``CosineRecommender(K=50)``; time = fit + top-10 for every evaluated
   user. implicit gets the same binary train matrix as float64 CSR (what it requires).
2. Rating prediction (random 80/20 split, seed 42, RMSE): ``item_knn`` / ``user_knn`` in rating mode against
   surprise's ``KNNBaseline`` / ``KNNWithMeans`` (pearson_baseline); time = fit + predict every test pair.
   Each recforge default is listed together with its "surprise-equivalent" config (same similarity, shrinkage
   100, k = 40, same centring), which should reproduce surprise's RMSE — a check of the formulas, not a race.

The process tunes glibc's allocator first, as the flow's model tasks do (``recforge.malloc``; ``--default-malloc``
keeps glibc's defaults, under which both libraries' large temporaries are mapped fresh from the kernel each run).

implicit and surprise are benchmark-only dependencies: ``pip install 'recforge[bench]'``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bench import DEFAULT_DATA_DIR
from recforge.data.contract import ITEM, RATING, USER
from recforge.data.movielens import load_movielens_100k
from recforge.evaluation import relevance_matrix
from recforge.ids import IdIndex
from recforge.malloc import tune_malloc
from recforge.metrics import rmse, topn_metrics
from recforge.split import random_rating_split, temporal_holdout
from recmodels.base import Recommender
from recmodels.knn.item import ItemKNN, ItemKNNConfig, KNNConfig
from recmodels.knn.user import UserKNN, UserKNNConfig

K = 10


@dataclass
class Entry:
    """One contender: what it is, its accuracy (identical on every repetition) and its timings."""

    label: str
    run: Callable[[], tuple[float, float]]  # returns (metric, seconds)
    metric: float | None = None
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def _import_references() -> tuple[Any, Any]:
    try:
        import implicit.nearest_neighbours as implicit_nn
        import surprise
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SystemExit(
            f"bench.compare_knn needs the reference libraries ({err.name} is missing): "
            "pip install 'recforge[bench]'  (implicit, scikit-surprise)"
        ) from err
    return implicit_nn, surprise


def _measure(entries: Sequence[Entry], repeats: int) -> None:
    """Run every entry ``repeats`` times, interleaved; the metric must not change between repetitions."""
    for _ in range(repeats):
        for entry in entries:
            metric, seconds = entry.run()
            if entry.metric is not None and abs(metric - entry.metric) > 1e-9:
                raise RuntimeError(f"{entry.label}: metric changed between repetitions ({entry.metric} → {metric})")
            entry.metric = metric
            entry.seconds.append(seconds)


# ---- ranking ------------------------------------------------------------------------------------------------
def ranking_entries(interactions: pd.DataFrame, implicit_nn: Any) -> tuple[list[Entry], list[tuple[str, str]]]:
    """item_knn (defaults; plain cosine K=50) and implicit's CosineRecommender(K=50) on the temporal holdout."""
    split = temporal_holdout(interactions, 0.2)
    index = IdIndex.from_frame(split.train)
    train = index.interactions(split.train, ratings=False)
    users, relevant = relevance_matrix(index, split.test)
    user_items = sp.csr_matrix(train.binary, dtype=np.float64)  # implicit wants float64 CSR

    def ndcg(items: np.ndarray) -> float:
        return topn_metrics(items, relevant, k=K, n_items=index.n_items)["ndcg"]

    def ours(config: ItemKNNConfig) -> Callable[[], tuple[float, float]]:
        def run() -> tuple[float, float]:
            start = time.perf_counter()
            items, _ = ItemKNN(config).fit(train).recommend(users, K)
            return ndcg(items), time.perf_counter() - start

        return run

    def theirs() -> tuple[float, float]:
        start = time.perf_counter()
        model = implicit_nn.CosineRecommender(K=50)
        model.fit(user_items, show_progress=False)
        items, _ = model.recommend(users, user_items[users], N=K, filter_already_liked_items=True)
        return ndcg(np.asarray(items, dtype=np.int64)), time.perf_counter() - start

    # Per-history pruning (the default) is implicit's convention, so this is its formula; per-target pruning keeps
    # each target's 50 nearest instead (classic item-kNN).
    cosine50 = ItemKNNConfig(neighbors=50, alpha=0.5, exponent=1.0, pruning="history")
    cosine50_target = dataclasses.replace(cosine50, pruning="target")
    entries = [
        Entry("recforge item_knn (defaults)", ours(ItemKNNConfig())),
        Entry("recforge item_knn cosine K=50", ours(cosine50)),
        Entry("recforge item_knn cosine K=50, per-target", ours(cosine50_target)),
        Entry("implicit CosineRecommender K=50", theirs),
    ]
    pairs = [(entry.label, entries[-1].label) for entry in entries[:-1]]
    return entries, pairs


# ---- rating prediction --------------------------------------------------------------------------------------
def rating_entries(interactions: pd.DataFrame, surprise: Any) -> tuple[list[Entry], list[tuple[str, str]]]:
    """Rating-mode item_knn / user_knn against surprise's KNNBaseline / KNNWithMeans on the random split."""
    train_df, test_df = random_rating_split(interactions, 0.2, 42)
    index = IdIndex.from_frame(train_df)
    train = index.interactions(train_df, ratings=True)
    test_users = index.user_codes(test_df[USER])
    test_items = index.item_codes(test_df[ITEM])
    truth = test_df[RATING].to_numpy(dtype=np.float64)
    reader = surprise.Reader(rating_scale=(float(train_df[RATING].min()), float(train_df[RATING].max())))
    trainset = surprise.Dataset.load_from_df(train_df[[USER, ITEM, RATING]], reader).build_full_trainset()
    test_pairs = list(zip(test_df[USER], test_df[ITEM], strict=True))

    def ours(cls: type[Recommender], config: KNNConfig) -> Callable[[], tuple[float, float]]:
        def run() -> tuple[float, float]:
            start = time.perf_counter()
            pred = cls(config).fit(train).predict(test_users, test_items)
            return rmse(pred, truth), time.perf_counter() - start

        return run

    def theirs(make: Callable[[], Any]) -> Callable[[], tuple[float, float]]:
        def run() -> tuple[float, float]:
            start = time.perf_counter()
            algo = make().fit(trainset)
            pred = np.array([algo.predict(u, i).est for u, i in test_pairs])
            return rmse(pred, truth), time.perf_counter() - start

        return run

    def sim(user_based: bool) -> dict[str, Any]:
        return {"name": "pearson_baseline", "user_based": user_based, "shrinkage": 100}

    surprise_like = {"similarity": "pearson_baseline", "rating_shrinkage": 100.0, "rating_neighbors": 40}
    item_default = ItemKNNConfig.rating_defaults()
    user_default = UserKNNConfig.rating_defaults()
    entries = [
        Entry("recforge item_knn rating (defaults)", ours(ItemKNN, item_default)),
        Entry(
            "recforge item_knn rating, KNNBaseline-equivalent",
            ours(ItemKNN, dataclasses.replace(item_default, centering="baseline", **surprise_like)),
        ),
        Entry(
            "surprise KNNBaseline item pearson_baseline",
            theirs(lambda: surprise.KNNBaseline(k=40, sim_options=sim(False), verbose=False)),
        ),
        Entry(
            "recforge item_knn rating, KNNWithMeans-equivalent",
            ours(ItemKNN, dataclasses.replace(item_default, centering="mean", **surprise_like)),
        ),
        Entry(
            "surprise KNNWithMeans item pearson_baseline",
            theirs(lambda: surprise.KNNWithMeans(k=40, sim_options=sim(False), verbose=False)),
        ),
        Entry("recforge user_knn rating (defaults)", ours(UserKNN, user_default)),
        Entry(
            "recforge user_knn rating, KNNWithMeans-equivalent",
            ours(UserKNN, dataclasses.replace(user_default, centering="mean", **surprise_like)),
        ),
        Entry(
            "surprise KNNWithMeans user pearson_baseline",
            theirs(lambda: surprise.KNNWithMeans(k=40, sim_options=sim(True), verbose=False)),
        ),
    ]
    by_label = {e.label: e for e in entries}
    pairs = [
        ("recforge item_knn rating (defaults)", "surprise KNNBaseline item pearson_baseline"),
        ("recforge item_knn rating, KNNBaseline-equivalent", "surprise KNNBaseline item pearson_baseline"),
        ("recforge item_knn rating, KNNWithMeans-equivalent", "surprise KNNWithMeans item pearson_baseline"),
        ("recforge user_knn rating (defaults)", "surprise KNNWithMeans user pearson_baseline"),
        ("recforge user_knn rating, KNNWithMeans-equivalent", "surprise KNNWithMeans user pearson_baseline"),
    ]
    assert all(a in by_label and b in by_label for a, b in pairs)
    return entries, pairs


# ---- report -------------------------------------------------------------------------------------------------
def table(entries: Sequence[Entry], pairs: Sequence[tuple[str, str]], metric: str, lower_is_better: bool) -> str:
    """Markdown: each contender's metric and median time, then recforge / reference time ratios."""
    lines = [f"| model | {metric} | median time (s) |", "|---|---|---|"]
    lines += [f"| {e.label} | {e.metric:.4f} | {e.median:.3f} |" for e in entries]
    by_label = {e.label: e for e in entries}
    lines += [
        "",
        f"| recforge | reference | {metric} difference | time ratio recforge / reference |",
        "|---|---|---|---|",
    ]
    for ours, theirs in pairs:
        a, b = by_label[ours], by_label[theirs]
        assert a.metric is not None and b.metric is not None
        diff = a.metric - b.metric
        better = (diff < 0) == lower_is_better
        verdict = "same" if abs(diff) < 5e-5 else "better" if better else "worse"  # "same" at printed precision
        lines.append(f"| {ours} | {theirs} | {diff:+.4f} ({verdict}) | {a.median / b.median:.2f}× |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare_knn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder with u.data")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing repetitions (default 3)")
    parser.add_argument("--skip-ratings", action="store_true", help="only the ranking comparison")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's default allocator settings (the flow's model tasks tune them: recforge.malloc)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    malloc_tuned = False if args.default_malloc else tune_malloc()
    implicit_nn, surprise = _import_references()
    import implicit
    import implicit.utils

    # CosineRecommender converts its own normalised COO matrix to CSR and warns about it on every fit.
    warnings.filterwarnings("ignore", category=implicit.utils.ParameterWarning)

    started = time.perf_counter()
    interactions = load_movielens_100k(args.data_dir).interactions
    print(f"## kNN models vs reference libraries — MovieLens 100K, {args.repeats} interleaved repetitions\n")
    print(
        f"implicit {implicit.__version__}, scikit-surprise {surprise.__version__}, numpy {np.__version__}; "
        f"malloc tuned as in the flow (both libraries, one process): {malloc_tuned}.\n"
    )

    print("[bench] ranking …", file=sys.stderr, flush=True)
    entries, pairs = ranking_entries(interactions, implicit_nn)
    _measure(entries, args.repeats)
    print(f"### Ranking: temporal holdout, NDCG@{K}; time = fit + top-{K} for all 943 test users\n")
    print(table(entries, pairs, f"NDCG@{K}", lower_is_better=False))

    if not args.skip_ratings:
        print("[bench] ratings …", file=sys.stderr, flush=True)
        entries, pairs = rating_entries(interactions, surprise)
        _measure(entries, args.repeats)
        print("\n### Rating prediction: random 80/20 split (seed 42), RMSE; time = fit + predict all test pairs\n")
        print(table(entries, pairs, "RMSE", lower_is_better=True))
    print(f"[bench] done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
