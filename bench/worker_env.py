"""What a worker process's start-up environment costs the models: plain processes vs Dask workers.

    python -m bench.worker_env [--data-dir ../shared/data/ml-100k] [--models nmf,biased_mf,item_knn,neumf]
        [--setups spawn,spawn-shared,dask-default,dask-recforge]

Each set-up starts two worker processes and gives both the same list of evaluations at once (temporal holdout,
ML-100K, seed 42), as two tasks of a flow run side by side on a 2-core machine. Per worker and model it prints
the wall and CPU seconds of the evaluation, with the worker's thread settings. Set-ups:

- ``spawn``: ``multiprocessing`` spawn, environment as inherited (one BLAS/OpenMP thread per core per worker:
  Prefect's ProcessPoolTaskRunner before recforge split the cores);
- ``spawn-shared``: the same with ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` = cores ÷ 2
  (what ``--task-runner process`` sets now);
- ``dask-default``: a ``distributed.LocalCluster`` with Dask's own worker environment (one thread each and
  ``MALLOC_TRIM_THRESHOLD_=65536``);
- ``dask-recforge``: the cluster ``--task-runner dask`` starts (:func:`flows.runners.local_dask_cluster`: the same
  without ``MALLOC_TRIM_THRESHOLD_``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import DEFAULT_DATA_DIR
from flows.runners import THREAD_VARIABLES, available_cores, local_dask_cluster

SETUPS = ("spawn", "spawn-shared", "dask-default", "dask-recforge")


def evaluate_models(data_dir: str, models: Sequence[str]) -> dict[str, Any]:
    """In the worker: evaluate each model once; its environment, torch threads, and (wall, CPU) seconds."""
    import torch

    from recforge.data.movielens import load_movielens_100k
    from recforge.evaluation import evaluate_topn
    from recforge.split import temporal_holdout
    from recmodels.base import RunSettings
    from recmodels.registry import get_model_class

    split = temporal_holdout(load_movielens_100k(data_dir).interactions, 0.2)
    result: dict[str, Any] = {
        "env": {name: os.environ.get(name) for name in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")},
        "torch_threads": torch.get_num_threads(),
    }
    for name in models:
        model_class = get_model_class(name)
        wall, cpu = time.perf_counter(), time.process_time()
        evaluate_topn(model_class, split, settings=RunSettings(seed=42))
        result[name] = (round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2))
    return result


@contextmanager
def _restored_environment(names: Sequence[str]) -> Iterator[None]:
    """Put these environment variables back as they were afterwards (set, changed or removed inside)."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_setup(setup: str, data_dir: str, models: Sequence[str]) -> list[dict[str, Any]]:
    """Both workers' results for one set-up."""
    if setup.startswith("spawn"):
        with _restored_environment(THREAD_VARIABLES):
            if setup == "spawn-shared":
                os.environ.update(dict.fromkeys(THREAD_VARIABLES, str(max(1, available_cores() // 2))))
            with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(evaluate_models, data_dir, models) for _ in range(2)]
                return [future.result() for future in futures]
    from distributed import Client, LocalCluster

    start_cluster = LocalCluster if setup == "dask-default" else local_dask_cluster
    # Dask's nanny copies its pre-spawn environment into this process's os.environ, where later clusters'
    # workers would inherit it: put it back as it was, so that set-ups do not leak into each other.
    with (
        _restored_environment(["MALLOC_TRIM_THRESHOLD_"]),
        start_cluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        workers = list(client.scheduler_info()["workers"])
        futures = [client.submit(evaluate_models, data_dir, models, workers=[w], pure=False) for w in workers]
        return [future.result() for future in futures]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--models", default="nmf,biased_mf,item_knn,neumf")
    parser.add_argument("--setups", default=",".join(SETUPS))
    args = parser.parse_args(argv)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    setups = [name.strip() for name in args.setups.split(",") if name.strip()]
    unknown = sorted(set(setups) - set(SETUPS))
    if unknown:
        parser.error(f"unknown set-up(s) {unknown}; choose from {', '.join(SETUPS)}")
    print(
        "| set-up | worker | MALLOC_TRIM_THRESHOLD_ | OMP_NUM_THREADS | torch threads | "
        + " | ".join(f"{name} wall / CPU s" for name in models)
        + " |"
    )
    print("|---|---|---|---|---|" + "---|" * len(models))
    for setup in setups:
        for worker, result in enumerate(run_setup(setup, str(args.data_dir.resolve()), models)):
            cells = [f"{result[name][0]:.2f} / {result[name][1]:.2f}" for name in models]
            env = result["env"]
            print(
                f"| {setup} | {worker} | {env['MALLOC_TRIM_THRESHOLD_']} | {env['OMP_NUM_THREADS']} | "
                f"{result['torch_threads']} | " + " | ".join(cells) + " |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
