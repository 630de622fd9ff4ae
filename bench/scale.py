"""Scale benchmark: ``als`` and ``item_knn`` vs implicit on a synthetic 200,000 × 50,000 data set (~8.9M pairs).

    python -m bench.scale [--repeats 1] [--threads 2] [--iterations 15] [--only als,als_cg,item_knn]
                          [--recommend-threads N]
    python -m bench.scale --profile          # torch.profiler table of one recforge ALS iteration (CG, 1 thread)

The data set is deterministic (``--seed``, default 0): 200,000 users and 50,000 items; item popularity ∝
1/rank^0.9 (ranks shuffled over item ids); user activity lognormal(0, 1), scaled so that the expected number of
events is 10M, each user's count Poisson around it; repeated (user, item) events collapsed, which leaves about
8.9M distinct pairs. It is generated once per run and handed to the measurements through a temporary ``.npz``.

Every measurement runs in a fresh subprocess, so that its peak resident memory (the kernel's high-water mark
``VmHWM``; tracemalloc does not see torch's allocations, and ``ru_maxrss`` starts from the parent's peak) is its
own. A measurement loads the pairs and builds its input (recforge: the
``Interactions`` and its binary CSR; implicit: a CSR), then resets the process's high-water mark (Linux
``/proc/self/clear_refs``) so that building the input does not count, and notes the resident memory as its
*baseline*. It fits (→ *fit peak*: the most resident memory during the fit, input included; *fit growth*: fit
peak − baseline), resets the mark again and ranks the top 10 unseen items for 10,000 users, the same users for
every model (→ *recommend peak*). recforge's ``recommend`` ranks its batches on ``--threads`` threads unless
``--recommend-threads`` says otherwise (``--recommend-threads 1`` against the default is the A/B of the batch
threads; implicit keeps ``--threads``). Measurements are interleaved (recforge, implicit, …); figures are medians
over ``--repeats``. Compared:

- ``als``: recforge ALS defaults (alpha 0, every confidence 1: exact solves) vs implicit ALS alpha=1 (the same
  problem, 3 CG steps); ``als_cg``: recforge ALS alpha=1 (CG path) vs implicit alpha=2 (the same confidences).
  64 factors, 15 iterations, regularization 11.
- ``item_knn``: recforge item_knn (cosine, K=50) vs implicit CosineRecommender(K=50) (float64 CSR input, as it
  requires).

implicit is a benchmark-only dependency: ``pip install 'recforge[bench]'`` (or ``pip install implicit``).
"""

from __future__ import annotations

import os

# Passive OpenMP waiting for every child (inherited through the environment); see bench/compare_implicit.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

N_USERS = 200_000
N_ITEMS = 50_000
EVENTS = 10_000_000
POPULARITY_EXPONENT = 0.9
RECOMMEND_USERS = 10_000
FACTORS = 64

#: name → (recforge side, implicit side): what each comparison measures.
COMPARISONS: dict[str, tuple[str, str]] = {
    "als": ("recforge_als", "implicit_als"),
    "als_cg": ("recforge_als_cg", "implicit_als_cg"),
    "item_knn": ("recforge_item_knn", "implicit_cosine"),
}


def synthetic_pairs(
    n_users: int = N_USERS,
    n_items: int = N_ITEMS,
    events: int = EVENTS,
    exponent: float = POPULARITY_EXPONENT,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs (int32 arrays, sorted by user then item) of the synthetic data set."""
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.0, n_users)
    counts = rng.poisson(activity / activity.sum() * events)
    weights = 1.0 / np.arange(1, n_items + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights / weights.sum())
    item_of_rank = rng.permutation(n_items)  # popularity rank → item id, so ids carry no popularity
    total = int(counts.sum())
    rank = np.minimum(np.searchsorted(cdf, rng.random(total) * cdf[-1], side="right"), n_items - 1)
    item = item_of_rank[rank].astype(np.int64)
    user = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    key = np.unique(user * n_items + item)  # collapses repeats
    return (key // n_items).astype(np.int32), (key % n_items).astype(np.int32)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0  # reported in KiB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak_mb() -> float:
    # VmHWM rather than getrusage's ru_maxrss: a child's ru_maxrss starts from its parent's peak (it survives
    # fork + exec), so every measurement reported this script's own data-generation peak instead of its own.
    return _status_mb("VmHWM")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _reset_peak() -> float:
    """Start a new peak-memory window (Linux: ``clear_refs`` 5 resets the high-water mark); returns RSS now.

    Without it, the transient memory of building the input (COO → CSR) would hide the fit's own peak.
    """
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError as err:
        raise SystemExit(f"bench.scale needs Linux's /proc/self/clear_refs to measure peaks per phase: {err}") from err
    return _rss_mb()


def measure(
    kind: str, data_path: Path, threads: int, iterations: int, seed: int, recommend_threads: int | None = None
) -> dict[str, Any]:
    """Run one measurement in this (fresh) process; returns seconds and peak memory in MiB.

    recommend_threads: threads of recforge's ``recommend`` (``None``: ``threads``); implicit ignores it.
    """
    with np.load(data_path) as npz:
        user, item, users = npz["user"], npz["item"], npz["recommend_users"]
    if kind.startswith("recforge"):
        from recmodels.base import RunSettings
        from recmodels.data import Interactions
        from recmodels.knn.item import ItemKNN, ItemKNNConfig
        from recmodels.mf.als import ALS, ALSConfig

        data = Interactions.from_arrays(user, item, n_users=N_USERS, n_items=N_ITEMS)
        del user, item
        data.binary  # noqa: B018 (build the cached CSR before the baseline, as implicit gets its CSR ready-made)
        model: Any = {
            "recforge_als": lambda: ALS(ALSConfig(factors=FACTORS, iterations=iterations)),
            "recforge_als_cg": lambda: ALS(ALSConfig(factors=FACTORS, iterations=iterations, alpha=1.0)),
            "recforge_item_knn": lambda: ItemKNN(ItemKNNConfig(neighbors=50)),
        }[kind]()
        baseline = _reset_peak()
        start = time.perf_counter()
        model.fit(data, RunSettings(seed=seed, threads=threads))
        fit = time.perf_counter() - start
        fit_peak = _peak_mb()
        _reset_peak()
        start = time.perf_counter()
        model.recommend(users, 10, threads=recommend_threads or threads)
        recommend = time.perf_counter() - start
    else:
        import implicit.cpu.als
        import implicit.nearest_neighbours
        import scipy.sparse as sp
        import threadpoolctl

        dtype = np.float64 if kind == "implicit_cosine" else np.float32
        matrix = sp.csr_matrix((np.ones(len(user), dtype=dtype), (user, item)), shape=(N_USERS, N_ITEMS))
        del user, item
        reg = 11.0
        model = {
            "implicit_als": lambda: implicit.cpu.als.AlternatingLeastSquares(
                factors=FACTORS, iterations=iterations, regularization=reg, alpha=1.0, num_threads=threads,
                random_state=seed,
            ),
            "implicit_als_cg": lambda: implicit.cpu.als.AlternatingLeastSquares(
                factors=FACTORS, iterations=iterations, regularization=reg, alpha=2.0, num_threads=threads,
                random_state=seed,
            ),
            "implicit_cosine": lambda: implicit.nearest_neighbours.CosineRecommender(K=50, num_threads=threads),
        }[kind]()  # fmt: skip
        baseline = _reset_peak()
        with threadpoolctl.threadpool_limits(1, "blas"):  # implicit parallelises itself and asks for this
            start = time.perf_counter()
            model.fit(matrix, show_progress=False)
            fit = time.perf_counter() - start
            fit_peak = _peak_mb()
            _reset_peak()
            start = time.perf_counter()
            model.recommend(users, matrix[users], N=10, filter_already_liked_items=True)
            recommend = time.perf_counter() - start
    return {
        "kind": kind,
        "fit": fit,
        "recommend": recommend,
        "baseline_mb": baseline,
        "fit_peak_mb": fit_peak,
        "recommend_peak_mb": _peak_mb(),
    }


def _run_child(kind: str, data_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.scale", "--child", kind, "--data", str(data_path)]
    cmd += ["--threads", str(args.threads), "--iterations", str(args.iterations), "--seed", str(args.seed)]
    if args.recommend_threads is not None:
        cmd += ["--recommend-threads", str(args.recommend_threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"measurement {kind!r} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def profile_als(data_path: Path, seed: int) -> str:
    """torch.profiler summary (top ops by self CPU time) of one CG-path ALS iteration on the scale data.

    Runs on one thread: with more, the CG chunks run on a thread pool whose ops the profiler does not record.
    """
    from torch.profiler import ProfilerActivity, profile

    from recmodels.base import RunSettings
    from recmodels.data import Interactions
    from recmodels.mf.als import ALS, ALSConfig

    with np.load(data_path) as npz:
        data = Interactions.from_arrays(npz["user"], npz["item"], n_users=N_USERS, n_items=N_ITEMS)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ALS(ALSConfig(factors=FACTORS, iterations=1, alpha=1.0)).fit(data, RunSettings(seed=seed, threads=1))
    wall = time.perf_counter() - start
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return f"one ALS iteration (alpha 1, CG), 1 thread: fit {wall:.1f} s wall under the profiler\n{table}"


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, n_pairs: int, gen_s: float) -> str:
    """Markdown: per comparison, recforge vs implicit medians and ratios."""
    load = os.getloadavg()
    out = [
        f"## Scale: {N_USERS:,} users × {N_ITEMS:,} items, {n_pairs:,} distinct pairs (seed {args.seed})",
        "",
        f"{args.threads} thread(s) (recforge's recommend: {args.recommend_threads or args.threads}), "
        f"{FACTORS} factors, {args.iterations} ALS iterations, top-10 for "
        f"{RECOMMEND_USERS:,} users; medians of {args.repeats} interleaved run(s), each in a fresh process. "
        f"Data generation took {gen_s:.0f} s. Load average at the end: {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f}.",
        "",
        "| comparison | fit s (rf / imp) | fit ratio | recommend s (rf / imp) | recommend ratio "
        "| fit peak MiB (rf / imp) | fit peak ratio | fit growth MiB (rf / imp) | recommend peak MiB (rf / imp) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (ours, theirs) in COMPARISONS.items():
        if ours not in results:
            continue
        o, t = results[ours], results[theirs]
        cells = [name]
        for key, digits in (("fit", 1), ("recommend", 2), ("fit_peak_mb", 0)):
            a, b = _median(o, key), _median(t, key)
            cells += [f"{a:.{digits}f} / {b:.{digits}f}", f"{a / b:.2f}×"]
        growth = [_median(rows, "fit_peak_mb") - _median(rows, "baseline_mb") for rows in (o, t)]
        cells.append(f"{growth[0]:.0f} / {growth[1]:.0f}")
        cells.append(f"{_median(o, 'recommend_peak_mb'):.0f} / {_median(t, 'recommend_peak_mb'):.0f}")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repetitions (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both libraries (default 2)")
    parser.add_argument(
        "--recommend-threads", type=int, default=None, help="threads of recforge's recommend (default: --threads)"
    )
    parser.add_argument("--iterations", type=int, default=15, help="ALS iterations (default 15)")
    parser.add_argument("--seed", type=int, default=0, help="data and model seed (default 0)")
    parser.add_argument("--only", default=",".join(COMPARISONS), help=f"subset of {','.join(COMPARISONS)}")
    parser.add_argument("--profile", action="store_true", help="profile one recforge ALS CG iteration (1 thread)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        row = measure(args.child, args.data, args.threads, args.iterations, args.seed, args.recommend_threads)
        print(json.dumps(row))
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in COMPARISONS]
    if unknown or args.repeats < 1:
        parser.error(f"unknown comparison(s) {unknown}; choose from {', '.join(COMPARISONS)}; --repeats ≥ 1")
    if args.threads < 1 or (args.recommend_threads is not None and args.recommend_threads < 1):
        parser.error("--threads and --recommend-threads must be ≥ 1")
    if not args.profile:
        try:
            import implicit  # noqa: F401
        except ImportError:
            parser.error("this benchmark needs implicit: pip install 'recforge[bench]' (or pip install implicit)")

    start = time.perf_counter()
    user, item = synthetic_pairs(seed=args.seed)
    gen_s = time.perf_counter() - start
    recommend_users = np.sort(np.random.default_rng(args.seed + 1).choice(N_USERS, RECOMMEND_USERS, replace=False))
    with tempfile.TemporaryDirectory(prefix="recforge-scale-") as tmp:
        data_path = Path(tmp) / "pairs.npz"
        np.savez(data_path, user=user, item=item, recommend_users=recommend_users)
        if args.profile:
            print(profile_als(data_path, args.seed))
            return 0
        results: dict[str, list[dict[str, Any]]] = {}
        for repeat in range(args.repeats):
            for name in names:
                for kind in COMPARISONS[name]:
                    print(f"[scale] repeat {repeat + 1}/{args.repeats}: {kind} …", file=sys.stderr, flush=True)
                    row = _run_child(kind, data_path, args)
                    print(f"[scale]   {json.dumps(row)}", file=sys.stderr, flush=True)
                    results.setdefault(kind, []).append(row)
    print(report(results, args, len(user), gen_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
