"""EASE on large catalogues: fit time and peak memory of ``ease`` on ``bench.scale``'s synthetic data.

    python -m bench.ease_scale [--items 8000,20000] [--users 200000] [--events 9000000] [--threads 2]

For each catalogue size the data set of :func:`bench.scale.synthetic_pairs` (same generator and seed as the
scale benchmark, with that many items and expected events) is fitted by ``EASE`` with its defaults, in a fresh
process, and 10,000 users get their top 10. Peak memory is the kernel's high-water mark (``VmHWM``) reset after
the input is built, as in ``bench.scale``: *fit peak* includes the input, *fit growth* is what the fit added.
EASE holds a dense ``n_items × n_items`` float64 array while fitting (about ``12 · n_items²`` bytes with the
float32 result; recmodels/baselines/ease.py), so this is the model's limit, not its speed on MovieLens.
``--threads`` sets BLAS threads in the child (the Cholesky factorisation and the inverse are BLAS-bound).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.scale import _peak_mb, _reset_peak, synthetic_pairs

RECOMMEND_USERS = 10_000


def measure(data_path: Path, seed: int) -> dict[str, Any]:
    """Fit EASE (defaults) on the pairs in ``data_path`` in this process; seconds and MiB."""
    from recmodels.base import RunSettings
    from recmodels.baselines.ease import EASE, EASEConfig
    from recmodels.data import Interactions

    with np.load(data_path) as npz:
        user, item, n_users, n_items = npz["user"], npz["item"], int(npz["n_users"]), int(npz["n_items"])
    data = Interactions.from_arrays(user, item, n_users=n_users, n_items=n_items)
    del user, item
    data.binary  # noqa: B018 (the cached CSR is input, built before the baseline)
    # No timestamps here, so the default recency weighting scores with the binary history.
    model = EASE(EASEConfig(max_items=max(n_items, EASEConfig().max_items)))
    baseline = _reset_peak()
    start = time.perf_counter()
    model.fit(data, RunSettings(seed=seed))
    fit = time.perf_counter() - start
    fit_peak = _peak_mb()
    _reset_peak()
    users = np.random.default_rng(seed).choice(n_users, size=min(RECOMMEND_USERS, n_users), replace=False)
    start = time.perf_counter()
    model.recommend(users, 10)
    recommend = time.perf_counter() - start
    return {
        "items": n_items,
        "pairs": data.binary.nnz,
        "fit": fit,
        "recommend": recommend,
        "baseline_mb": baseline,
        "fit_peak_mb": fit_peak,
        "recommend_peak_mb": _peak_mb(),
    }


def _run_child(data_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = os.environ | {"OPENBLAS_NUM_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "bench.ease_scale", "--child", str(data_path), "--seed", str(args.seed)]
    done = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env=env, cwd=Path(__file__).resolve().parents[1]
    )
    if done.returncode != 0:
        raise RuntimeError(f"EASE measurement failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ease_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--items", default="8000,20000", help="comma-separated catalogue sizes")
    parser.add_argument("--users", type=int, default=200_000, help="users (default 200,000)")
    parser.add_argument("--events", type=int, default=9_000_000, help="expected events (default 9M)")
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads in the measuring process")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, args.seed)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="recforge-ease-") as folder:
        for n_items in (int(part) for part in args.items.split(",")):
            user, item = synthetic_pairs(args.users, n_items, args.events, seed=args.seed)
            path = Path(folder) / f"pairs-{n_items}.npz"
            np.savez(path, user=user, item=item, n_users=args.users, n_items=n_items)
            del user, item
            rows.append(_run_child(path, args))
            path.unlink()
    print(f"## EASE (defaults) on {args.users:,} users, {args.events:,} expected events, {args.threads} BLAS thread(s)")
    print()
    print("| items | pairs | fit s | fit peak MiB | fit growth MiB | 12·n² MiB | top-10 for 10,000 users s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        expected = 12 * row["items"] ** 2 / 2**20
        print(
            f"| {row['items']:,} | {row['pairs']:,} | {row['fit']:.1f} | {row['fit_peak_mb']:.0f} | "
            f"{row['fit_peak_mb'] - row['baseline_mb']:.0f} | {expected:.0f} | {row['recommend']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
