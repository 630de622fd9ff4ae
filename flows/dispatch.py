"""When each model's tasks are handed to the task runner: a few at a time, the longest remaining work first.

Every model has two tasks, its evaluation and then its publishing refit. Handing all of them to the runner at once
lets them share the cores evenly, so the costliest model (a deep network) crawls beside a dozen others, and its
refit starts last and then runs alone on one core: on the 2-core reference machine the 12-model run on ML-100K
spent 87–91 s training. Here at most ``limit`` tasks are in flight (by default one per core), and when a slot
frees, the ready task with the longest remaining chain goes next — an evaluation counts its model's whole cost,
a refit half of it (list scheduling by critical path). The same run then trained in 70 s (docs/BENCHMARKS.md).
The costs are each model's seconds in the last run on the same data set when the database has them (a large
catalogue makes EASE costly, many events ALS), else the model classes' ``training_cost`` hints.

The runner still runs every task (threads, processes or Dask); this only decides when to submit, from the
flow run's thread, with Prefect futures.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefect.futures import PrefectFuture

SubmitEvaluation = Callable[[str], PrefectFuture[Any]]
SubmitRefit = Callable[[str, PrefectFuture[Any]], PrefectFuture[Any]]


def estimated_costs(hints: Mapping[str, float], measured: Mapping[str, float]) -> dict[str, float]:
    """Each model's expected training cost: its measured seconds from earlier runs on the same data where known,
    else its class's ``training_cost`` hint scaled by the median measured / hint ratio of the models that have both
    (hints are seconds on ML-100K; the measurements are seconds on this data and machine)."""
    ratios = sorted(measured[n] / hints[n] for n in hints if n in measured and hints[n] > 0)
    scale = ratios[len(ratios) // 2] if ratios else 1.0
    return {name: measured.get(name, hint * scale) for name, hint in hints.items()}


@dataclass
class ModelTasks:
    """The futures of every model's evaluation and of the refits submitted (those whose evaluation completed), by
    model name, in the order they were submitted."""

    evaluations: dict[str, PrefectFuture[Any]] = field(default_factory=dict)
    refits: dict[str, PrefectFuture[Any]] = field(default_factory=dict)
    # Tasks given up on (see ``run_model_tasks``' ``deadline``), by model and "evaluation" / "refit": why. Their
    # futures may never finish, so nothing may wait on them.
    overdue: dict[tuple[str, str], str] = field(default_factory=dict)


def run_model_tasks(
    names: Sequence[str],
    cost: Mapping[str, float],
    submit_evaluation: SubmitEvaluation,
    submit_refit: SubmitRefit,
    limit: int | None,
    deadline: float | None = None,
) -> ModelTasks:
    """Submit each model's evaluation, then its refit once the evaluation has completed.

    ``cost`` estimates each model's evaluation plus refit (only the order matters); ``limit`` caps the tasks in
    flight (``None``: no cap, everything is submitted at once, costliest first, refits as their evaluations
    end). Returns when every task has finished. A refit receives its finished evaluation's future, so the
    dependency shows in the Prefect UI. An evaluation task that did not complete (timed out, crashed, its worker
    killed) gets no refit, so ``refits`` lacks that model: submitted anyway, the process runner resolved the failed
    input in the flow's process and raised from ``wait()``, which failed the whole run instead of that model.

    ``deadline``: seconds without any task finishing after which the runner is taken to have stopped making progress
    and every task in flight is given up on (recorded in ``ModelTasks.overdue``, cancelled where the runner can).
    Each task's own time budget is enforced where it runs, so a working runner finishes some task at least once
    per budget, queued tasks included; a task whose worker is gone (every worker of a Dask cluster lost) never
    finishes, and the run waited for it until a new worker came. Counted from each submission instead, healthy
    tasks that waited in a busy cluster's queue were given up on.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be ≥ 1 or None, got {limit}")
    # Stable sort: models of equal cost keep the caller's order.
    waiting = sorted(names, key=lambda name: -cost.get(name, 1.0))
    ready_refits: list[str] = []
    in_flight: dict[PrefectFuture[Any], tuple[str, bool]] = {}  # future → (model, is_refit)
    finished: queue.SimpleQueue[PrefectFuture[Any]] = queue.SimpleQueue()  # filled by the runner's callbacks
    tasks = ModelTasks()

    last_progress = time.monotonic()  # the latest finish (or the start)

    def track(future: PrefectFuture[Any], name: str, is_refit: bool) -> PrefectFuture[Any]:
        in_flight[future] = (name, is_refit)
        future.add_done_callback(finished.put)
        return future

    def next_finished() -> list[PrefectFuture[Any]]:
        """What has finished, waiting for the first; everything in flight given up on once the runner has made no
        progress for ``deadline`` seconds."""
        nonlocal last_progress
        while True:
            wait = None if deadline is None else max(0.0, last_progress + deadline - time.monotonic())
            try:
                done = [finished.get(timeout=wait)]
            except queue.Empty:
                assert deadline is not None
                for future, (name, is_refit) in list(in_flight.items()):
                    tasks.overdue[(name, "refit" if is_refit else "evaluation")] = (
                        f"given up: no model task finished for {deadline:.0f} s, although each one's time budget "
                        "ends it sooner; the task runner stopped making progress (its workers lost, or a task stuck "
                        "where its budget cannot stop it)"
                    )
                    del in_flight[future]
                    _cancel(future)
                last_progress = time.monotonic()  # the tasks submitted next get a deadline of their own
                return []
            while not finished.empty():
                done.append(finished.get())
            # A callback of a task given up on may still come: it is no longer in flight.
            done = [f for f in done if f in in_flight]
            if done:
                last_progress = time.monotonic()
                return done

    def remaining(name: str, is_refit: bool) -> float:
        return cost.get(name, 1.0) / (2.0 if is_refit else 1.0)

    while waiting or ready_refits or in_flight:
        while (limit is None or len(in_flight) < limit) and (waiting or ready_refits):
            refit = max(ready_refits, key=lambda n: remaining(n, True), default=None)
            evaluation = waiting[0] if waiting else None
            if refit is not None and (evaluation is None or remaining(refit, True) >= remaining(evaluation, False)):
                ready_refits.remove(refit)
                tasks.refits[refit] = track(submit_refit(refit, tasks.evaluations[refit]), refit, True)
            else:
                assert evaluation is not None
                waiting.pop(0)
                tasks.evaluations[evaluation] = track(submit_evaluation(evaluation), evaluation, False)
        if not in_flight:
            continue
        # Everything that has finished by now, not just the first: the next choice sees every ready refit.
        for future in next_finished():
            name, is_refit = in_flight.pop(future)
            if not is_refit and _completed(future):
                ready_refits.append(name)
    return tasks


def _cancel(future: PrefectFuture[Any]) -> None:
    """Ask the runner to drop a task given up on (a Dask future is cancelled on the scheduler); best effort."""
    wrapped = getattr(future, "wrapped_future", None)
    try:
        if wrapped is not None and hasattr(wrapped, "cancel"):
            wrapped.cancel()
    except Exception:  # a lost cluster may not answer: the task is given up on all the same
        pass


def _completed(future: PrefectFuture[Any]) -> bool:
    """Whether the finished task completed; a state that cannot even be read counts as not.

    ``wait()`` first: on a finished future it returns at once and keeps the final state, which ``state`` would
    otherwise ask the API for (and, in the runner's done callback, find not yet written).
    """
    try:
        future.wait()
        return future.state.is_completed()
    except Exception:
        return False
