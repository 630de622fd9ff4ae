"""Task runners compared: training the model set on MovieLens 100K in a plain loop vs Prefect thread, process and
Dask runners.

    python -m bench.runners [--data-dir ../shared/data/ml-100k] [--models popularity,item_knn] [--repeats 2]
    python -m bench.runners --synthetic 200000,20000,9000000 --models popularity,item_knn,als --repeats 1 --no-warmup

The data is loaded, validated and prepared once (as_of after the last event), outside any timing. Then every
model is evaluated on the temporal holdout and refitted to rank top-N for every user — the two tasks per model
of the ``recommend`` flow — first one after another in a plain Python loop, then as Prefect tasks under each
runner (all runners at 2 workers, against one ``prefect server start`` that this script starts and stops: the
process runner cannot work without a real server). ``dask`` starts a temporary cluster per flow run, as
``--task-runner dask`` does; ``dask-cluster`` reuses one cluster for every run, as ``--dask-address`` does.

Per runner it prints the *training wall* (first task submitted → last result back, inside the flow), the *total
wall* (the flow call: flow run creation and runner start-up included, e.g. spawning the Dask cluster), the sum
of the task bodies (each task times its own pipeline call), the speedup over the loop (loop wall / training
wall), the orchestration overhead (training wall − Σ bodies) / training wall, and the peak resident memory of
this process and its worker processes together (sampled every 0.2 s; the Prefect server is left out; in
brackets the same at the start, after a garbage collection and ``malloc_trim``). With two tasks running side by
side, Σ bodies can exceed the wall and the overhead turns negative: parallelism then pays more than
orchestration costs. Times are the median over ``--repeats``.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import DEFAULT_DATA_DIR

# "dask-cluster" reuses one LocalCluster for every run (a long-lived cluster); "dask" starts one per flow run.
RUNNERS = ("loop", "thread", "process", "dask", "dask-cluster")
WORKERS = 2


@dataclass
class Measurement:
    """One training of the whole model set."""

    training_wall: float
    total_wall: float
    bodies: float
    pids: set[int]
    ndcg: dict[str, float]
    peak_gb: float = float("nan")  # the most resident memory of this process and its workers together
    start_gb: float = float("nan")  # the same at the start (this process: the prepared data and what it kept)
    # The loop's (evaluation, refit) seconds per model: where the time of a model set goes, without overlap.
    per_model: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def overhead(self) -> float:
        return (self.training_wall - self.bodies) / self.training_wall


class TreeMemory:
    """Samples the resident memory of this process plus its descendants (workers, Dask nanny and workers) every
    0.2 s and keeps the peak; processes in ``exclude`` sessions (the Prefect server) are left out.

    A sum of VmRSS over processes: pages shared between them (forked-but-untouched memory) count once per process,
    so the figure is an upper bound of what the machine needed.
    """

    def __init__(self, exclude_sessions: set[int]) -> None:
        self.exclude = exclude_sessions
        self.peak_kb = 0
        self.start_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        _release_memory()
        self.start_kb = self._tree_kb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_gb(self) -> float:
        return self.peak_kb / 1e6

    @property
    def start_gb(self) -> float:
        return self.start_kb / 1e6

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self._tree_kb())
            self._stop.wait(0.2)

    def _tree_kb(self) -> int:
        parents: dict[int, int] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[3]) not in self.exclude:  # fields[3] is the session id
                    parents[int(entry.name)] = int(fields[1])
        children: dict[int, list[int]] = {}
        for pid, parent in parents.items():
            children.setdefault(parent, []).append(pid)
        tree, todo, total = [], [os.getpid()], 0
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        for pid in tree:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total


_SERVER_SESSIONS: set[int] = set()


def _release_memory() -> None:
    """Collect garbage and hand glibc's free heap pages back to the kernel before a measurement: memory freed by
    an earlier runner's threads stays resident in their malloc arenas and would count against the next runner."""
    from recforge.malloc import trim_heap

    gc.collect()
    trim_heap()


@contextmanager
def prefect_server() -> Iterator[str]:
    """``prefect server start`` on a free local port with a throwaway PREFECT_HOME; yields the API URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home = tempfile.mkdtemp(prefix="bench-prefect-")
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    prefect = Path(sys.executable).with_name("prefect")
    log = Path(home) / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _SERVER_SESSIONS.add(server.pid)  # it leads its own session: left out of the memory figures
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start; its log:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{api_url}/health", timeout=2):
                    break
            except OSError:
                time.sleep(1)
        # Settings must be in the environment before Prefect is imported (and for the spawned workers).
        os.environ.update(
            {"PREFECT_HOME": home, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        )
        yield api_url
    finally:
        _drain_prefect_clients()
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def _drain_prefect_clients(timeout: float = 120.0) -> None:
    """Send the log records and events this process still queues for the server, before the server stops.

    Prefect sends them from background workers in batches; at 9M events a run's last records were still queued
    when the server went, and the command's last line was "Error logging to API — All connection attempts
    failed". Draining first delivers them (a flow that logs 12,000 lines and returns showed the same error
    without it).
    """
    if "prefect" not in sys.modules:  # nothing was sent: no worker to drain
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout)


def _evaluate_body(name: str, data: Any, k: int, seed: int, threads: int | None = None) -> tuple[Any, float, int]:
    from recforge.handoff import resolve
    from recforge.pipeline import evaluate
    from recmodels.base import RunSettings
    from recmodels.torch_utils import torch_threads

    start = time.perf_counter()  # a worker's first task reads the handed-off data inside its body, as in the flow
    with torch_threads(threads):  # as the flow's tasks do (tasks.train)
        result = evaluate(name, resolve(data), k=k, seed=seed, settings=RunSettings(seed=seed))
    return result, time.perf_counter() - start, os.getpid()


def _refit_body(
    name: str, data: Any, top_n: int, seed: int, evaluated: tuple[Any, float, int], threads: int | None = None
) -> tuple[Any, float, int]:
    """The publishing refit as the flow's task does it: the evaluated config, from the evaluated weights if any."""
    from recforge.handoff import resolve
    from recforge.pipeline import fit_and_recommend
    from recmodels.base import RunSettings
    from recmodels.torch_utils import torch_threads

    evaluation = evaluated[0]
    start = time.perf_counter()
    with torch_threads(threads):  # as the flow's tasks do (tasks.train)
        result = fit_and_recommend(
            name,
            resolve(data),
            top_n=top_n,
            seed=seed,
            settings=RunSettings(seed=seed),
            config=evaluation.refit_config,
            weights=evaluation.weights,
        )
    return result, time.perf_counter() - start, os.getpid()


def run_loop(data: Any, names: Sequence[str], k: int, top_n: int, seed: int) -> Measurement:
    """The baseline: every model's evaluation and refit one after another, no Prefect at all."""
    start = time.perf_counter()
    bodies, ndcg, per_model = 0.0, {}, {}
    with TreeMemory(_SERVER_SESSIONS) as memory:
        for name in names:
            evaluated = _evaluate_body(name, data, k, seed)
            evaluation, seconds, _ = evaluated
            _, refit_seconds, _ = _refit_body(name, data, top_n, seed, evaluated)
            bodies += seconds + refit_seconds
            ndcg[name] = evaluation.metrics["ndcg"]
            per_model[name] = (seconds, refit_seconds)
    wall = time.perf_counter() - start
    return Measurement(wall, wall, bodies, {os.getpid()}, ndcg, memory.peak_gb, memory.start_gb, per_model)


def per_model_table(runs: Sequence[Measurement], k: int) -> list[str]:
    """Markdown lines: each model's evaluation and refit seconds in the loop (medians over ``runs``), costliest
    first, with its share of the loop's Σ bodies and its NDCG@k."""
    names = list(runs[0].per_model)
    evaluation = {n: statistics.median(m.per_model[n][0] for m in runs) for n in names}
    refit = {n: statistics.median(m.per_model[n][1] for m in runs) for n in names}
    total = sum(evaluation.values()) + sum(refit.values())
    lines = [f"| model | evaluation (s) | refit + top-N (s) | share of Σ bodies | NDCG@{k} |", "|---|---|---|---|---|"]
    for name in sorted(names, key=lambda n: -(evaluation[n] + refit[n])):
        share = (evaluation[name] + refit[name]) / total if total > 0 else float("nan")
        lines.append(
            f"| {name} | {evaluation[name]:.2f} | {refit[name]:.2f} | {share:.0%} | {runs[0].ndcg[name]:.4f} |"
        )
    return lines


# What the benchmark flow works on, set by build_flow. A module global, not a closure: process and Dask runners
# send the flow run's context (the flow object included) with every task, and a closure over the data would
# travel with it (334 MiB per task at 3M events), which the recommend flow (data made inside the flow) never does.
_FLOW_STATE: dict[str, Any] = {}


def _train_models(names: list[str], k: int, top_n: int, seed: int) -> dict[str, Any]:
    """The benchmark flow's body: both tasks of every model, submitted as the recommend flow submits them."""
    from prefect.context import FlowRunContext

    from flows.dispatch import run_model_tasks
    from flows.runners import data_for_tasks, shared_blas_threads, task_threads
    from recforge.handoff import remove
    from recmodels.registry import get_model_class

    evaluate_task, refit_task = _FLOW_STATE["evaluate"], _FLOW_STATE["refit"]
    start = time.perf_counter()
    task_data = data_for_tasks(_FLOW_STATE["data"], _FLOW_STATE["handoff_dir"])
    context = FlowRunContext.get()
    runner = context.task_runner if context is not None else None
    threads = task_threads(runner, WORKERS)  # torch's per task, as the recommend flow gives them
    with shared_blas_threads(runner, WORKERS):
        tasks = run_model_tasks(
            names,
            {n: get_model_class(n).training_cost for n in names},
            lambda n: evaluate_task.submit(n, task_data, k, seed, threads),
            lambda n, evaluation: refit_task.submit(n, task_data, top_n, seed, evaluation, threads),
            WORKERS,  # what the flow keeps in flight with --max-workers 2
        )
        evaluations, refits = tasks.evaluations, tasks.refits
        outcomes = [evaluations[n].result() for n in names] + [refits[n].result() for n in names]
    remove(task_data)
    return {
        "training_wall": time.perf_counter() - start,
        "bodies": sum(seconds for _, seconds, _ in outcomes),
        "pids": {pid for _, _, pid in outcomes},
        "ndcg": {n: outcome[0].metrics["ndcg"] for n, outcome in zip(names, outcomes, strict=False)},
    }


def build_flow(data: Any) -> Any:
    """The benchmark flow and its two tasks (built after the server is up: Prefect reads settings on import).

    The flow gets ``data`` through a module global instead of a parameter: flow parameters are sent to the API
    as JSON, which the recommend flow never does with its data (it prepares the data inside the flow). Like the
    recommend flow, it hands the data to process and Dask workers through one file (``data_for_tasks``); the
    time to write it counts in the training wall.
    """
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    _FLOW_STATE.update(
        data=data,
        handoff_dir=Path(tempfile.mkdtemp(prefix="bench-handoff-")),
        evaluate=task(_evaluate_body, name="evaluate-model", cache_policy=NO_CACHE),
        refit=task(_refit_body, name="fit-and-recommend", cache_policy=NO_CACHE),
    )
    return flow(name="bench-runners")(_train_models)


def run_runner(
    flow_fn: Any, runner: str, names: Sequence[str], k: int, top_n: int, seed: int, dask_address: str | None = None
) -> Measurement:
    """One flow run of ``flow_fn`` under ``runner`` (thread, process or dask; ``dask_address``: an existing cluster)."""
    from flows.runners import make_task_runner

    task_runner = make_task_runner(runner, max_workers=WORKERS, dask_address=dask_address)
    start = time.perf_counter()
    with TreeMemory(_SERVER_SESSIONS) as memory:
        out = flow_fn.with_options(task_runner=task_runner)(list(names), k, top_n, seed)
    total = time.perf_counter() - start
    return Measurement(
        out["training_wall"], total, out["bodies"], out["pids"], out["ndcg"], memory.peak_gb, memory.start_gb
    )


@contextmanager
def _dask_cluster(wanted: bool) -> Iterator[str | None]:
    """A LocalCluster of WORKERS single-threaded worker processes when ``wanted``, set up as ``--task-runner dask``
    sets up its own (see :func:`flows.runners.local_dask_cluster`); yields its address."""
    if not wanted:
        yield None
        return
    from flows.runners import local_dask_cluster

    with local_dask_cluster(n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def prepare_ml100k(data_dir: Path, as_of: datetime) -> Any:
    from recforge.data.movielens import load_movielens_100k
    from recforge.pipeline import prepare
    from recforge.validation import validate_dataset

    dataset = load_movielens_100k(data_dir=data_dir)
    report = validate_dataset(dataset, min_interactions=10)
    return prepare(dataset, report, as_of)


def prepare_synthetic(users: int, items: int, events: int, seed: int) -> Any:
    """The built-in synthetic source at the given size (as ``[run.source] kind = "synthetic"`` makes it),
    prepared with as_of after its last event."""
    from datetime import timedelta

    from recforge.data.synthetic import generate_synthetic
    from recforge.pipeline import prepare
    from recforge.validation import validate_dataset

    dataset = generate_synthetic(n_users=users, n_items=items, n_events=events, seed=seed)
    report = validate_dataset(dataset, min_interactions=10)
    last = dataset.interactions["timestamp"].max().to_pydatetime()
    return prepare(dataset, report, last + timedelta(days=1))


def _row(runner: str, runs: list[Measurement], loop_wall: float) -> str:
    """A markdown row; speedup is loop wall / training wall, overhead (training wall − Σ bodies) / training wall."""
    training = statistics.median(m.training_wall for m in runs)
    total = statistics.median(m.total_wall for m in runs)
    bodies = statistics.median(m.bodies for m in runs)
    overhead = statistics.median(m.overhead for m in runs)
    workers = statistics.median(len(m.pids - {os.getpid()}) for m in runs)
    peak = max(m.peak_gb for m in runs)
    at_start = min(m.start_gb for m in runs)
    where = "this process" if runs[0].pids == {os.getpid()} else f"{workers:.0f} worker processes per run"
    return (
        f"| {runner} | {training:.2f} | {total:.2f} | {bodies:.2f} | {loop_wall / training:.2f}× | "
        f"{overhead:+.0%} | {peak:.1f} ({at_start:.1f}) | {where} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="MovieLens 100K folder")
    parser.add_argument("--models", help="comma-separated models (default: the default model set)")
    parser.add_argument("--runners", default=",".join(RUNNERS), help=f"subset of {','.join(RUNNERS)}")
    parser.add_argument("--repeats", type=int, default=2, help="trainings per runner (median reported)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--top-n", type=int, default=50)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--synthetic",
        metavar="USERS,ITEMS,EVENTS",
        help="the synthetic source at this size instead of MovieLens 100K (e.g. 200000,20000,9000000)",
    )
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip each runner's untimed first run (imports, first API calls): for data where one run takes minutes",
    )
    args = parser.parse_args(argv)
    runners = [r for r in args.runners.split(",") if r]
    unknown = sorted(set(runners) - set(RUNNERS))
    if unknown:
        parser.error(f"unknown runners {unknown}; choose from {RUNNERS}")
    synthetic = None
    if args.synthetic:
        try:
            synthetic = tuple(int(v) for v in args.synthetic.split(","))
        except ValueError:
            synthetic = ()
        if len(synthetic) != 3:
            parser.error(f"--synthetic wants USERS,ITEMS,EVENTS (three integers), got {args.synthetic!r}")
    elif not (args.data_dir / "u.data").exists() and not (args.data_dir / "ml-100k.inter").exists():
        parser.error(f"no MovieLens 100K at {args.data_dir}; pass --data-dir")

    from recmodels.registry import DEFAULT_MODELS

    names = args.models.split(",") if args.models else list(DEFAULT_MODELS)
    if synthetic:
        started = time.perf_counter()
        data = prepare_synthetic(*synthetic, seed=args.seed)
        label = f"synthetic {synthetic[0]:,} users x {synthetic[1]:,} items x {synthetic[2]:,} events"
        print(f"{label}: prepared in {time.perf_counter() - started:.0f} s (not timed below)")
    else:
        data = prepare_ml100k(args.data_dir, datetime(1998, 4, 23, tzinfo=UTC))
        label = "MovieLens 100K"
    print(f"{label}: {data.row_counts}; models {names}; {os.cpu_count()} CPUs; {WORKERS} workers per runner")
    # Other work on the machine slows every runner; the load average tells how much (1.0 = one busy core).
    print(f"load average before: {os.getloadavg()[0]:.1f}")

    # The loop always runs: it is the reference of every speedup.
    results = {"loop": [run_loop(data, names, args.k, args.top_n, args.seed) for _ in range(args.repeats)]}
    loop_wall = statistics.median(m.training_wall for m in results["loop"])
    print(_row("loop", results["loop"], loop_wall))
    # Printed now, as each runner's row is: a later runner that is killed (memory at 9M events) loses nothing here.
    print("\nPer model, in the loop (one after another, nothing beside it):\n")
    print("\n".join(per_model_table(results["loop"], args.k)) + "\n", flush=True)
    flow_runners = [r for r in runners if r != "loop"]
    if flow_runners:
        with prefect_server():
            # From the importable module, not __main__ (``python -m``): cloudpickle sends __main__'s functions by
            # value with the globals they use, the data included; bench.runners' are sent by reference.
            from bench import runners as importable

            flow_fn = importable.build_flow(data)
            for runner in flow_runners:
                with _dask_cluster(runner == "dask-cluster") as address:
                    name = "dask" if runner == "dask-cluster" else runner

                    def once(name: str = name, address: str | None = address) -> Measurement:
                        return run_runner(flow_fn, name, names, args.k, args.top_n, args.seed, address)

                    if args.warmup:
                        once()  # untimed: imports and first API calls are paid once per runner
                    results[runner] = [once() for _ in range(args.repeats)]
                    # Printed as soon as measured: a later runner that fails (or is killed) loses only its own row.
                    print(_row(runner, results[runner], loop_wall), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print()
    header = ("runner", "training wall (s)", "total wall (s)", "Σ task bodies (s)", "speedup", "overhead")
    print("| " + " | ".join((*header, "peak memory (at start), GB", "tasks ran in")) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for runner, runs in results.items():
        print(_row(runner, runs, loop_wall))
    differing = ndcg_mismatches(results)
    for line in differing:
        print(f"different results, so the timings compare different work: {line}", file=sys.stderr)
    return 1 if differing else 0


#: How far a runner's NDCG may be from the loop's. Runners give torch and BLAS another thread count (process and
#: Dask workers split the cores), and sums split over other threads round differently: als's NDCG@10 moved by
#: 2.7e-7 on ML-100K and by 3.4e-6 on the 900k-event synthetic set (process runner, 2026-12-06). A runner that
#: changed the work (another seed, split or config) moves it by orders of magnitude more.
NDCG_TOLERANCE = 1e-4


def ndcg_mismatches(results: dict[str, list[Measurement]]) -> list[str]:
    """``runner model: NDCG vs the loop's`` for every run whose NDCG differs from the loop's first by more than
    :data:`NDCG_TOLERANCE` (checked after the tables are printed, so a long run never loses its numbers)."""
    reference = results["loop"][0].ndcg
    return [
        f"{runner} {name}: {run.ndcg[name]:.6f} vs {reference[name]:.6f}"
        for runner, runs in results.items()
        for run in runs
        for name in reference
        if abs(run.ndcg[name] - reference[name]) > NDCG_TOLERANCE
    ]


if __name__ == "__main__":
    sys.exit(main())
