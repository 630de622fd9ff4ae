"""Side-by-side benchmark of the numpy factorisation models and EASE on MovieLens 100K, in one run.

    python -m bench.compare_mf [--data-dir ../shared/data/ml-100k] [--repeats 3]

Rating prediction (random 80/20 split, seed 42, RMSE): ``biased_mf`` against surprise's SVD with its defaults
and with a "tuned-ish" config picked by a small grid on the *validation* rows (the training rows of the same
split, split again 80/20 with seed 43 — the test rows are never used to choose), and ``nmf`` against
surprise's NMF with its defaults. Both libraries see exactly the same train and test rows. Times are fit +
predict, reported as ratios ours / theirs from interleaved runs (ours, theirs, ours, …), medians over
``--repeats``.

Top-N (per-user temporal holdout 20%, NDCG@10): ``pure_svd``, ``ease`` (default and textbook), and the ranking
fits of ``biased_mf`` / ``nmf`` (missing-aware vs ranking by predicted rating), with fit + recommend time as a
ratio to popularity and to item_knn measured in the same run.

surprise is a benchmark-only dependency: ``pip install 'recforge[bench]'`` (or
``pip install scikit-surprise``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import DEFAULT_DATA_DIR
from recforge.data.contract import ITEM, RATING, USER
from recforge.data.movielens import load_movielens_100k
from recforge.evaluation import evaluate_ratings, evaluate_topn
from recforge.malloc import tune_malloc
from recforge.metrics import rmse
from recforge.split import random_rating_split, temporal_holdout
from recmodels.base import Recommender, RunSettings
from recmodels.baselines.ease import EASE, EASEConfig
from recmodels.mf.biased_mf import BiasedMF, BiasedMFConfig
from recmodels.mf.nmf import NMF, NMFConfig
from recmodels.registry import get_model_class

_EASE = EASEConfig()

# A small grid for surprise SVD, scored on the validation rows only (test rows never seen while choosing).
SURPRISE_SVD_GRID: tuple[dict[str, Any], ...] = (
    {"n_factors": 100, "n_epochs": 20, "lr_all": 0.005, "reg_all": 0.02},  # the defaults
    {"n_factors": 100, "n_epochs": 30, "lr_all": 0.01, "reg_all": 0.05},
    {"n_factors": 100, "n_epochs": 30, "lr_all": 0.01, "reg_all": 0.08},
    {"n_factors": 100, "n_epochs": 40, "lr_all": 0.01, "reg_all": 0.1},
    {"n_factors": 50, "n_epochs": 40, "lr_all": 0.01, "reg_all": 0.1},
)


def _import_surprise() -> Any:
    try:
        import surprise
    except ImportError as err:  # a benchmark-only dependency
        raise SystemExit(
            "bench.compare_mf needs scikit-surprise: pip install 'recforge[bench]' (or pip install scikit-surprise)"
        ) from err
    return surprise


@dataclass
class Timed:
    """One contender: its error metric (identical across repeats) and its fit + predict seconds per repeat."""

    label: str
    metric: float
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def surprise_rmse(
    surprise: Any, algo_factory: Callable[[], Any], train: pd.DataFrame, test: pd.DataFrame
) -> tuple[float, float]:
    """Fit a surprise algorithm on ``train`` and predict ``test``; returns (RMSE, fit + predict seconds)."""
    reader = surprise.Reader(rating_scale=(float(train[RATING].min()), float(train[RATING].max())))
    trainset = surprise.Dataset.load_from_df(train[[USER, ITEM, RATING]], reader).build_full_trainset()
    testset = list(zip(test[USER], test[ITEM], test[RATING].astype(float), strict=True))
    start = time.perf_counter()
    algo = algo_factory()
    algo.fit(trainset)
    predictions = algo.test(testset)
    seconds = time.perf_counter() - start
    estimates = np.array([p.est for p in predictions], dtype=np.float64)
    return rmse(estimates, test[RATING].to_numpy(dtype=np.float64)), seconds


def tune_surprise_svd(surprise: Any, interactions: pd.DataFrame, seed: int) -> tuple[dict[str, Any], str]:
    """Pick a surprise SVD config on the validation rows; returns it and a markdown table of the grid."""
    train, _ = random_rating_split(interactions, 0.2, seed)
    fit_rows, val_rows = random_rating_split(train.reset_index(drop=True), 0.2, seed + 1)
    lines = ["| n_factors | n_epochs | lr_all | reg_all | validation RMSE |", "|---|---|---|---|---|"]
    best: tuple[float, dict[str, Any]] | None = None
    for params in SURPRISE_SVD_GRID:
        score, _ = surprise_rmse(surprise, lambda p=params: surprise.SVD(random_state=seed, **p), fit_rows, val_rows)
        lines.append(
            f"| {params['n_factors']} | {params['n_epochs']} | {params['lr_all']} | {params['reg_all']} | {score:.4f} |"
        )
        if best is None or score < best[0]:
            best = (score, params)
    assert best is not None
    return best[1], "\n".join(lines)


def rating_section(interactions: pd.DataFrame, repeats: int, seed: int) -> str:
    """RMSE and interleaved fit + predict time ratios: ours vs surprise."""
    surprise = _import_surprise()
    print("[compare_mf] tuning surprise SVD on the validation rows …", file=sys.stderr, flush=True)
    tuned, grid_table = tune_surprise_svd(surprise, interactions, seed)
    train, test = random_rating_split(interactions, 0.2, seed)
    settings = RunSettings(seed=seed)
    pairs: list[tuple[str, Callable[[], Recommender], str, Callable[[], Any]]] = [
        (
            "biased_mf",
            lambda: BiasedMF(BiasedMFConfig(rank_by="rating")),
            "surprise SVD (defaults)",
            lambda: surprise.SVD(random_state=seed),
        ),
        (
            "biased_mf",
            lambda: BiasedMF(BiasedMFConfig(rank_by="rating")),
            f"surprise SVD (tuned-ish: {tuned})",
            lambda: surprise.SVD(random_state=seed, **tuned),
        ),
        (
            "biased_mf (factors=100, λ=0.13: best validation RMSE)",
            lambda: BiasedMF(BiasedMFConfig(factors=100, regularization=0.13, rank_by="rating")),
            f"surprise SVD (tuned-ish: {tuned})",
            lambda: surprise.SVD(random_state=seed, **tuned),
        ),
        (
            "nmf",
            lambda: NMF(NMFConfig(rank_by="rating")),
            "surprise NMF (defaults)",
            lambda: surprise.NMF(random_state=seed),
        ),
    ]
    lines = [
        "| ours | RMSE | theirs | RMSE | fit + predict time, ours / theirs |",
        "|---|---|---|---|---|",
    ]
    for ours_name, ours_factory, theirs_name, theirs_factory in pairs:
        print(f"[compare_mf] {ours_name} vs {theirs_name} …", file=sys.stderr, flush=True)
        ours: Timed | None = None
        theirs: Timed | None = None
        for _ in range(repeats):  # interleaved, so that load from other processes hits both alike
            result = evaluate_ratings(ours_factory, interactions, seed=seed, settings=settings)
            ours = ours or Timed(ours_name, result["rmse"])
            ours.seconds.append(result["fit_seconds"] + result["predict_seconds"])
            score, seconds = surprise_rmse(surprise, theirs_factory, train, test)
            theirs = theirs or Timed(theirs_name, score)
            theirs.seconds.append(seconds)
        assert ours is not None and theirs is not None
        lines.append(
            f"| {ours.label} | {ours.metric:.4f} | {theirs.label} | {theirs.metric:.4f} "
            f"| {ours.median / theirs.median:.2f}× ({ours.median:.2f} s / {theirs.median:.2f} s) |"
        )
    note = (
        "The ranking fit is switched off (rank_by='rating') for these rows: predict() never uses it. "
        "The default biased_mf/nmf fit that also builds the ranking model takes about twice as long."
    )
    return "\n".join(
        [
            "### Rating prediction — random 80/20 split (seed 42), ours vs surprise 1.1.5",
            "",
            "\n".join(lines),
            "",
            note,
            "",
            "surprise SVD grid on the validation rows (train rows split again 80/20, seed 43):",
            "",
            grid_table,
        ]
    )


def topn_section(interactions: pd.DataFrame, repeats: int, seed: int) -> str:
    """NDCG@10 and fit + recommend time ratios to popularity and item_knn, interleaved over repeats."""
    split = temporal_holdout(interactions)
    contenders: list[tuple[str, Callable[[], Recommender]]] = [
        ("popularity", get_model_class("popularity")),
        ("item_knn", get_model_class("item_knn")),
        ("pure_svd", get_model_class("pure_svd")),
        (f"ease (default: λ={_EASE.regularization:g}, recency half-life {_EASE.recency_half_life})", EASE),
        (
            "ease (textbook: λ=300, no recency)",
            lambda: EASE(EASEConfig(regularization=300.0, recency_half_life=None)),
        ),
        ("biased_mf (missing-aware ranking, default)", BiasedMF),
        ("biased_mf (rank by predicted rating)", lambda: BiasedMF(BiasedMFConfig(rank_by="rating"))),
        ("nmf (missing-aware ranking, default)", NMF),
        ("nmf (rank by predicted rating)", lambda: NMF(NMFConfig(rank_by="rating"))),
    ]
    results: dict[str, Timed] = {}
    for _ in range(repeats):
        for label, factory in contenders:  # one pass per repeat: every model sees similar machine load
            print(f"[compare_mf] top-N {label} …", file=sys.stderr, flush=True)
            out = evaluate_topn(factory, split, k=10, settings=RunSettings(seed=seed))
            timed = results.setdefault(label, Timed(label, out["ndcg"]))
            timed.seconds.append(out["fit_seconds"] + out["score_seconds"])
    pop, knn = results["popularity"], results["item_knn"]
    lines = [
        "| model | NDCG@10 | fit + recommend time / popularity | / item_knn |",
        "|---|---|---|---|",
    ]
    for timed in results.values():
        lines.append(
            f"| {timed.label} | {timed.metric:.4f} | {timed.median / pop.median:.1f}× "
            f"| {timed.median / knn.median:.2f}× |"
        )
    return "\n".join(
        [
            "### Top-N — per-user temporal holdout 20%, NDCG@10",
            "",
            "\n".join(lines),
            "",
            f"Medians of {repeats} run(s); popularity fit + recommend: {pop.median * 1e3:.0f} ms, "
            f"item_knn: {knn.median:.2f} s.",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare_mf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder with u.data")
    parser.add_argument("--repeats", type=int, default=3, help="timing repetitions (default 3)")
    parser.add_argument("--seed", type=int, default=42, help="rating-split seed and RunSettings seed")
    parser.add_argument("--skip-ratings", action="store_true", help="only the top-N part (no surprise needed)")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's default allocator settings (the flow's model tasks tune them: recforge.malloc)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    # As in the flow, whose model tasks all tune the allocator; surprise runs in this process too, so both sides
    # get the same settings.
    malloc_tuned = False if args.default_malloc else tune_malloc()
    interactions = load_movielens_100k(args.data_dir).interactions
    started = time.perf_counter()
    sections = [
        "## MovieLens 100K — numpy factorisation models and EASE",
        "",
        f"malloc tuned as in the flow (both libraries, one process): {malloc_tuned}.",
        "",
        topn_section(interactions, args.repeats, args.seed),
    ]
    if not args.skip_ratings:
        sections += ["", rating_section(interactions, args.repeats, args.seed)]
    print("\n".join(sections))
    print(f"[compare_mf] done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
