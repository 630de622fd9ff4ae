"""recforge's torch ``als`` and ``bpr`` side by side with implicit's CPU models on MovieLens 100K.

    python -m bench.compare_implicit [--data-dir ../shared/data/ml-100k] [--repeats 5] [--threads 2]

Both libraries get the same training matrix (the standard per-user temporal holdout, 20%) and the same factor
count and iteration count, on the CPU. Each row of the table is one pair of equivalent configurations:

- ``als`` defaults (alpha 0: every confidence 1, which recforge solves exactly) vs implicit ALS with ``alpha=1``
  on the 0/1 matrix (also every confidence 1, solved by 3 CG steps per iteration); regularization 11.
- ``als`` with ``alpha=1`` (confidence 2 on observed pairs: recforge's CG path) vs implicit with ``alpha=2``
  (implicit's confidence is ``alpha·r``, recforge's ``1 + alpha·r``).
- ``bpr`` defaults (60 epochs, the learning rate falling linearly from 0.2 to 0; chosen on the validation slice)
  and with 100 epochs (the same schedule) vs implicit's BPR with its defaults at 64 factors and 100 iterations
  (one iteration = as many sampled triples as observed pairs, like one recforge epoch).

Runs are interleaved (recforge, implicit, recforge, implicit, …) so that load from other processes hits both,
and times are medians over ``--repeats``. "fit" is model training, "recommend" the top-10 unseen items for every
evaluated user (943). Ratios are recforge / implicit: below 1 means recforge is faster. NDCG@10 is scored by
:func:`recforge.metrics.topn_metrics` for both, from the first repetition.

implicit is a benchmark-only dependency: ``pip install 'recforge[bench]'`` (or ``pip install implicit``).
"""

from __future__ import annotations

import os

from bench import DEFAULT_DATA_DIR

# OpenMP threads that spin while waiting wreck torch (and implicit) on a CPU shared with other work: an ALS fit
# on ML-100K took 28 s instead of 1 s with 2 spinning threads on this busy 2-core machine. libgomp reads this
# once, when torch loads, so it must be set before the imports below (an explicit setting is kept).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from recforge.data.movielens import load_movielens_100k
from recforge.evaluation import relevance_matrix
from recforge.ids import IdIndex
from recforge.malloc import tune_malloc
from recforge.metrics import topn_metrics
from recforge.split import temporal_holdout
from recmodels.base import Recommender, RunSettings
from recmodels.data import Interactions
from recmodels.mf.als import ALS, ALSConfig
from recmodels.mf.bpr import BPR, BPRConfig
from recmodels.torch_utils import torch_threads

K = 10


def _import_implicit() -> Any:
    try:
        import implicit.cpu.als
        import implicit.cpu.bpr
        import threadpoolctl
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SystemExit(
            f"this benchmark needs implicit ({err}); install it with: pip install 'recforge[bench]' "
            "(or pip install implicit)"
        ) from err
    return implicit, threadpoolctl


@dataclass
class Timing:
    """Fit and recommend seconds of one side of a pair, per repetition, and its NDCG@10 (first repetition)."""

    fit: list[float] = field(default_factory=list)
    recommend: list[float] = field(default_factory=list)
    ndcg: float | None = None


@dataclass
class Pair:
    """A recforge model and the implicit model solving the same problem."""

    label: str
    ours: Callable[[], Recommender]
    theirs: Callable[[], Any]
    ours_t: Timing = field(default_factory=Timing)
    theirs_t: Timing = field(default_factory=Timing)


def _ndcg(items: np.ndarray, relevant: sp.csr_matrix, n_items: int) -> float:
    return float(topn_metrics(items, relevant, k=K, n_items=n_items)["ndcg"])


def run_ours(
    make: Callable[[], Recommender],
    train: Interactions,
    users: np.ndarray,
    relevant: sp.csr_matrix,
    settings: RunSettings,
    timing: Timing,
) -> None:
    """Fit and rank with a recforge model; appends its times to ``timing``."""
    model = make()
    # The thread count for the ranking too, as implicit's num_threads: a fit puts torch's own count back.
    with torch_threads(settings.threads):
        start = time.perf_counter()
        model.fit(train, settings)
        timing.fit.append(time.perf_counter() - start)
        start = time.perf_counter()
        items, _ = model.recommend(users, K)
        timing.recommend.append(time.perf_counter() - start)
    if timing.ndcg is None:
        timing.ndcg = _ndcg(items, relevant, train.n_items)


def run_theirs(
    make: Callable[[], Any],
    matrix: sp.csr_matrix,
    users: np.ndarray,
    relevant: sp.csr_matrix,
    threadpoolctl: Any,
    timing: Timing,
) -> None:
    """Fit and rank with an implicit model (BLAS limited to 1 thread, as implicit asks for); appends its times."""
    model = make()
    with threadpoolctl.threadpool_limits(1, "blas"):
        start = time.perf_counter()
        model.fit(matrix, show_progress=False)
        timing.fit.append(time.perf_counter() - start)
        start = time.perf_counter()
        items, _ = model.recommend(users, matrix[users], N=K, filter_already_liked_items=True)
        timing.recommend.append(time.perf_counter() - start)
    if timing.ndcg is None:
        timing.ndcg = _ndcg(np.asarray(items, dtype=np.int64), relevant, matrix.shape[1])


def make_pairs(implicit: Any, threads: int, seed: int) -> list[Pair]:
    """The equivalent configurations compared (see the module docstring)."""
    als, bpr = implicit.cpu.als.AlternatingLeastSquares, implicit.cpu.bpr.BayesianPersonalizedRanking
    reg = ALSConfig().regularization

    def implicit_als(alpha: float) -> Any:
        return als(factors=64, iterations=15, regularization=reg, alpha=alpha, num_threads=threads, random_state=seed)

    return [
        Pair(
            "als defaults (α 0) vs implicit ALS α=1",
            lambda: ALS(),
            lambda: implicit_als(1.0),
        ),
        Pair(
            "als α=1 (CG) vs implicit ALS α=2",
            lambda: ALS(ALSConfig(alpha=1.0)),
            lambda: implicit_als(2.0),
        ),
        Pair(
            f"bpr defaults ({BPRConfig().epochs} epochs) vs implicit BPR 100 it",
            lambda: BPR(),
            lambda: bpr(factors=64, iterations=100, num_threads=threads, random_state=seed),
        ),
        Pair(
            "bpr 100 epochs vs implicit BPR 100 it",
            lambda: BPR(BPRConfig(epochs=100)),
            lambda: bpr(factors=64, iterations=100, num_threads=threads, random_state=seed),
        ),
    ]


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def table(pairs: Sequence[Pair]) -> str:
    """Markdown table: NDCG of both, median times and recforge/implicit ratios."""
    head = [
        "pair",
        "NDCG@10 recforge",
        "NDCG@10 implicit",
        "fit ratio",
        "recommend ratio",
        "fit ms (rf / imp)",
        "recommend ms (rf / imp)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in pairs:
        of, tf = _median_ms(p.ours_t.fit), _median_ms(p.theirs_t.fit)
        orec, trec = _median_ms(p.ours_t.recommend), _median_ms(p.theirs_t.recommend)
        cells = [
            p.label,
            f"{p.ours_t.ndcg:.4f}",
            f"{p.theirs_t.ndcg:.4f}",
            f"{of / tf:.2f}×",
            f"{orec / trec:.2f}×",
            f"{of:.0f} / {tf:.0f}",
            f"{orec:.1f} / {trec:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare_implicit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder with u.data")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions per pair (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both libraries (default 2)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's default allocator settings (the flow's model tasks tune them: recforge.malloc)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")
    malloc_tuned = False if args.default_malloc else tune_malloc()
    implicit, threadpoolctl = _import_implicit()

    split = temporal_holdout(load_movielens_100k(args.data_dir).interactions, test_fraction=0.2)
    index = IdIndex.from_frame(split.train)
    train = index.interactions(split.train, ratings=True)
    users, relevant = relevance_matrix(index, split.test)
    matrix = train.binary.astype(np.float32)  # implicit's input: the same 0/1 matrix
    settings = RunSettings(seed=args.seed, threads=args.threads)
    pairs = make_pairs(implicit, args.threads, args.seed)

    for repeat in range(args.repeats):
        for pair in pairs:
            print(f"[bench] repeat {repeat + 1}/{args.repeats}: {pair.label}", file=sys.stderr, flush=True)
            run_ours(pair.ours, train, users, relevant, settings, pair.ours_t)
            run_theirs(pair.theirs, matrix, users, relevant, threadpoolctl, pair.theirs_t)

    load = os.getloadavg()
    print(f"## recforge vs implicit {implicit.__version__} — MovieLens 100K, CPU, {args.threads} thread(s)\n")
    print(
        f"{train.n_users} users × {train.n_items} items, {train.binary.nnz:,} training pairs; 64 factors; top-{K} "
        f"for {len(users)} users. Medians of {args.repeats} interleaved runs; ratios are recforge / implicit. "
        f"torch {torch.__version__}; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
        f"malloc tuned as in the flow (both libraries, one process): {malloc_tuned}.\n"
    )
    print(table(pairs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
