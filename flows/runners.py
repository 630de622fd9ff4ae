"""Task runners by name: threads (default), a process pool, or a Dask cluster through prefect-dask."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self, TypeVar

from prefect.context import FlowRunContext
from prefect.logging import get_run_logger
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from recforge import handoff
from recforge.config import ConfigError
from recmodels.blas import blas_threads

T = TypeVar("T")


def make_task_runner(name: str, max_workers: int | None = None, dask_address: str | None = None) -> TaskRunner:
    """Build the task runner called ``name``; explains what is missing instead of failing deep inside Prefect."""
    if name == "thread":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    if name == "process":
        if not os.environ.get("PREFECT_API_URL"):
            # Without a server each worker process starts its own temporary API on one SQLite file and they
            # lock each other out (checked on Prefect 3.9); fail early with the fix instead.
            raise ConfigError(
                "--task-runner process needs a running Prefect server: start one with `prefect server start` "
                "and set PREFECT_API_URL=http://127.0.0.1:4200/api, or use --task-runner thread"
            )
        return SharedCoresProcessPoolTaskRunner(max_workers=max_workers)
    if name == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise ConfigError("--task-runner dask needs prefect-dask: pip install 'recforge[dask]'") from None
        if dask_address:
            return DaskTaskRunner(address=dask_address)
        workers = max_workers or 2
        return DaskTaskRunner(
            cluster_class=local_dask_cluster,
            cluster_kwargs={
                "n_workers": workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            },
        )
    raise ConfigError(f"unknown task runner {name!r}; choose thread, process or dask")


def check_dask_scheduler(address: str, timeout_s: float = 10.0) -> int:
    """Connect to the Dask scheduler at ``address`` once and return its worker count; a ConfigError naming
    ``--dask-address`` when it does not answer or has no worker.

    Prefect's Dask runner connects only when the first model task is submitted: a wrong address failed after
    ingest, validation and preparation, after two 30-second connection attempts; a scheduler without workers
    left the run waiting for ever (``--model-timeout`` starts only once a worker runs the task).
    """
    from distributed import Client

    try:
        with Client(address, timeout=timeout_s) as client:
            workers = len(client.scheduler_info().get("workers", {}))
    except ValueError as exc:  # not an address at all ("garbage addr"): a usage error like the others
        raise ConfigError(
            f"--dask-address {address!r} is not a Dask scheduler address ({exc}); give one such as "
            "tcp://10.0.0.5:8786, or leave it out for a local cluster"
        ) from None
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"--dask-address {address}: no Dask scheduler answered within {timeout_s:g} s ({type(exc).__name__}: "
            f"{exc}); start one (`dask scheduler`, then `dask worker {address}`), fix the address, or leave it out "
            "for a local cluster"
        ) from None
    if workers == 0:
        raise ConfigError(
            f"--dask-address {address}: the scheduler has no workers, so no model task would ever run; start some "
            f"(`dask worker {address}`) or leave the address out for a local cluster"
        )
    return workers


#: Thread-count variables read once by OpenBLAS (numpy, scipy), OpenMP (torch) and MKL when a process starts.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class SharedCoresProcessPoolTaskRunner(ProcessPoolTaskRunner):
    """Prefect's ProcessPoolTaskRunner whose worker processes split the cores instead of each using all of them.

    Every spawned worker would otherwise start OpenBLAS and torch with one thread per core, so N workers run
    N × cores busy threads. On 2 cores with 2 workers that made the numpy-heavy models 1.5–1.7× slower
    (evaluations on ML-100K: nmf 8.5 s instead of 4.7–5.1 s, biased_mf 5.1–5.3 s instead of 3.2–3.5 s; neumf
    unchanged; ``python -m bench.worker_env``). The workers inherit the
    environment when they are spawned, during the flow run, so ``__enter__`` sets :data:`THREAD_VARIABLES` to
    ``max(1, cores // workers)`` — only those the user has not set — and ``__exit__`` removes them again.
    """

    def __enter__(self) -> Self:
        threads = str(max(1, available_cores() // max(1, self._max_workers)))
        self._set_by_runner = [name for name in THREAD_VARIABLES if name not in os.environ]
        os.environ.update(dict.fromkeys(self._set_by_runner, threads))
        try:
            return super().__enter__()
        except BaseException:
            self._restore_environment()
            raise

    def __exit__(self, *exc_info: Any) -> None:
        try:
            super().__exit__(*exc_info)
        finally:
            self._restore_environment()

    def _restore_environment(self) -> None:
        for name in getattr(self, "_set_by_runner", ()):
            os.environ.pop(name, None)
        self._set_by_runner = []


def local_dask_cluster(**cluster_kwargs: Any) -> Any:
    """A ``distributed.LocalCluster`` whose worker processes keep glibc's own malloc tuning.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (config
    ``distributed.nanny.pre-spawn-environ``) so that they hand freed memory back to the OS. Setting that variable
    also switches off glibc's adaptive mmap threshold, so every array above 128 KiB is mapped and unmapped again
    on each allocation: the models' numpy and torch temporaries then cost page faults, and training took up to
    twice as long on Dask workers as in plain processes (evaluations on ML-100K, two workers: neumf 31.4–31.6 s
    with it, 17.3–17.6 s without; nmf 7.5 s vs 5.6–6.0 s; ``python -m bench.worker_env``). The workers get the
    rest of the pre-spawn environment (one OpenMP/BLAS thread per worker, which lets two workers share two cores
    well). A ``MALLOC_TRIM_THRESHOLD_`` in this process's own environment is still inherited by the workers
    (yours, or one that a cluster started with Dask's defaults in this process left there: its nanny copies its
    pre-spawn environment into ``os.environ``).
    """
    import dask
    from distributed import LocalCluster

    key = "distributed.nanny.pre-spawn-environ"
    environ = {name: value for name, value in dask.config.get(key).items() if name != "MALLOC_TRIM_THRESHOLD_"}
    # The nanny reads the setting when it is created and keeps it for restarts, so it need not outlive this call.
    with dask.config.set({key: environ}):
        return LocalCluster(**cluster_kwargs)


def worker_processes(task_runner: TaskRunner) -> int | None:
    """How many worker processes ``task_runner`` runs tasks in; None for threads, or when it cannot know (an
    existing Dask cluster, whose workers belong to whoever started it)."""
    if isinstance(task_runner, ThreadPoolTaskRunner):
        return None
    if isinstance(task_runner, ProcessPoolTaskRunner):
        return task_runner._max_workers
    return (getattr(task_runner, "cluster_kwargs", None) or {}).get("n_workers")


def model_task_slots(task_runner: TaskRunner | None, max_workers: int | None) -> int | None:
    """How many model tasks the flow keeps in flight (see :mod:`flows.dispatch`); None: no cap.

    ``--max-workers`` if given; else one per core on threads (more only share the cores: on 2 cores, three at a
    time trained the 12 models in 85 s and two in 68 s), one per worker process on a process pool or a local
    Dask cluster, and no cap on an existing Dask cluster, whose size this flow does not know.
    """
    if max_workers is not None:
        return max_workers
    if task_runner is None or isinstance(task_runner, ThreadPoolTaskRunner):
        return available_cores()
    return worker_processes(task_runner)


#: How many pipeline runs share this process's cores, one entry per :func:`runs_side_by_side` block in force.
_side_by_side: list[int] = []
_side_by_side_lock = threading.Lock()


@contextlib.contextmanager
def runs_side_by_side(runs: int) -> Iterator[None]:
    """While the block runs, ``runs`` pipeline runs share this process's cores (an in-process backfill's dates).

    :func:`task_threads` divides each model task's share by it, as the backfill divides the model slots and BLAS.
    """
    if runs < 1:
        raise ValueError(f"runs must be ≥ 1, got {runs}")
    with _side_by_side_lock:
        _side_by_side.append(runs)
    try:
        yield
    finally:
        with _side_by_side_lock:
            _side_by_side.remove(runs)


def task_threads(task_runner: TaskRunner | None, slots: int | None) -> int | None:
    """Threads for each model task that runs in this process (the thread runner), at least 1.

    ``cores // slots``, or ``cores // (runs × slots)`` inside :func:`runs_side_by_side`. None on other runners
    (their workers get the same split through :data:`THREAD_VARIABLES`) and when the user set one of those
    variables (theirs wins).
    """
    if not (task_runner is None or isinstance(task_runner, ThreadPoolTaskRunner)):
        return None
    if any(name in os.environ for name in THREAD_VARIABLES):
        return None
    cores = available_cores()
    with _side_by_side_lock:
        runs = max(_side_by_side, default=1)
    return max(1, cores // (max(1, slots or cores) * runs))


def shared_blas_threads(task_runner: TaskRunner | None, slots: int | None) -> contextlib.AbstractContextManager[None]:
    """While model tasks run in this process (the thread runner), BLAS gets :func:`task_threads` threads.

    Each task's numpy and scipy products would otherwise use one thread per core beside the other tasks doing
    the same (the process pool and Dask workers get the same split through :data:`THREAD_VARIABLES`). Nothing
    changes when the user set one of those variables, or on other runners (their tasks run elsewhere). torch's
    count is per task: the flow passes :func:`task_threads` to each task's ``RunSettings``.
    """
    threads = task_threads(task_runner, slots)
    return contextlib.nullcontext() if threads is None else blas_threads(threads)


def release_workers(task_runner: TaskRunner | None) -> str | None:
    """Free what worker processes hold once the flow's model tasks are done; returns what was done, or None.

    Each worker keeps the prepared data it read (:mod:`recforge.handoff`) and its last model's leftovers; the flow
    then builds and publishes every model's recommendations in its own process. At 7.9M events (popularity,
    item_knn, als; 2 process workers at 4.1–4.3 GB each, the flow at 9.6 GB) that left 414 MB of this 24 GB
    machine. A process pool is shut down — Prefect's own ``cancel_all``, which runs again, as a no-op, when the
    flow ends; nothing is pending by then — and every Dask worker drops the run's data (:func:`handoff.release`),
    a long-lived cluster's included. Threads share the flow's memory: nothing to do.
    """
    if isinstance(task_runner, ProcessPoolTaskRunner):
        task_runner.cancel_all()
        return "stopped the process pool's worker processes"
    if task_runner is not None and runner_name(task_runner) == "dask":
        released = task_runner.client.run(handoff.release)  # type: ignore[attr-defined]
        return f"{sum(released.values())} of {len(released)} Dask workers dropped the run's data"
    return None


def runner_name(task_runner: TaskRunner) -> str:
    """The ``--task-runner`` name of a task runner instance ("thread", "process", "dask"; else its class name)."""
    if isinstance(task_runner, ThreadPoolTaskRunner):
        return "thread"
    if isinstance(task_runner, ProcessPoolTaskRunner):
        return "process"
    # By name: prefect-dask is an optional extra.
    kind = type(task_runner).__name__
    return "dask" if kind == "DaskTaskRunner" else kind


def data_for_tasks(data: T, folder: Path) -> T | handoff.DataRef:
    """What model tasks receive in this flow run: ``data`` itself on threads, a reference to one file otherwise.

    Process and Dask runners serialise a task's parameters once per submission (two tasks per model) and keep
    every copy until the task has run; the file is written once and each worker process reads it once (see
    :mod:`recforge.handoff`). The caller removes the file with :func:`recforge.handoff.remove` afterwards.
    """
    context = FlowRunContext.get()
    if context is None or isinstance(context.task_runner, ThreadPoolTaskRunner):
        return data
    ref = handoff.write(data, folder)
    get_run_logger().info(
        "data handed to the %s tasks through %s (%.1f MB)",
        type(context.task_runner).__name__,
        ref.path,
        ref.nbytes / 1e6,
    )
    return ref
