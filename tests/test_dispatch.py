"""flows.dispatch: model tasks submitted a few at a time, longest remaining work first, refits after evaluations."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from prefect import flow, task
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from flows.dispatch import estimated_costs, run_model_tasks
from flows.runners import available_cores, model_task_slots

pytestmark = pytest.mark.usefixtures("prefect_harness")

_lock = threading.Lock()
_events: list[tuple[str, str, float, float]] = []  # (model, kind, start, end)


@task
def _evaluate(name: str, seconds: float, fail: bool = False) -> str:
    start = time.perf_counter()
    time.sleep(seconds)
    with _lock:
        _events.append((name, "evaluation", start, time.perf_counter()))
    if fail:
        raise RuntimeError(f"{name} crashed")
    return name


@task
def _refit(name: str, evaluation: str, seconds: float) -> str:
    start = time.perf_counter()
    time.sleep(seconds)
    with _lock:
        _events.append((name, "refit", start, time.perf_counter()))
    return evaluation


def _run(cost: dict[str, float], limit: int | None, failing: frozenset[str] = frozenset()) -> dict[str, dict[str, str]]:
    """Run the dispatch in a flow; the final state type of every task, by kind and model."""
    _events.clear()
    unit = 0.1  # seconds of sleep per unit of cost (half of it each for the evaluation and the refit)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=16))
    def models() -> dict[str, dict[str, str]]:
        tasks = run_model_tasks(
            list(cost),
            cost,
            lambda n: _evaluate.submit(n, cost[n] * unit / 2, n in failing),
            lambda n, evaluation: _refit.submit(n, evaluation, cost[n] * unit / 2),
            limit,
        )
        for future in [*tasks.evaluations.values(), *tasks.refits.values()]:
            future.wait()
        # Plain values: a flow's returned futures would be resolved into their results.
        return {
            "evaluations": {n: f.state.type.value for n, f in tasks.evaluations.items()},
            "refits": {n: f.state.type.value for n, f in tasks.refits.items()},
        }

    return models()


def _most_at_once() -> int:
    marks = sorted([(start, 1) for *_, start, _ in _events] + [(end, -1) for *_, end in _events])
    running = most = 0
    for _, step in marks:  # at equal times an end (-1) sorts before a start (+1)
        running += step
        most = max(most, running)
    return most


def test_one_slot_runs_the_longest_chain_first_and_each_refit_after_its_evaluation() -> None:
    # Equal remaining work (a's refit 2 vs b's evaluation + refit 2): the refit goes first.
    _run({"c": 1.0, "a": 4.0, "b": 2.0}, limit=1)
    order = [(name, kind) for name, kind, *_ in sorted(_events, key=lambda e: e[2])]
    assert order == [
        ("a", "evaluation"),
        ("a", "refit"),
        ("b", "evaluation"),
        ("b", "refit"),
        ("c", "evaluation"),
        ("c", "refit"),
    ]
    assert _most_at_once() == 1


def test_two_slots_keep_two_in_flight_and_start_the_costliest_models() -> None:
    cost = {"small": 1.0, "tiny": 0.5, "big": 8.0, "mid": 6.0, "other": 1.0}
    states = _run(cost, limit=2)
    assert _most_at_once() == 2
    first_two = {name for name, *_ in sorted(_events, key=lambda e: e[2])[:2]}
    assert first_two == {"big", "mid"}
    assert states["evaluations"] == states["refits"] == dict.fromkeys(cost, "COMPLETED")
    ends = {(name, kind): end for name, kind, _, end in _events}
    starts = {(name, kind): start for name, kind, start, _ in _events}
    for name in cost:
        assert starts[(name, "refit")] >= ends[(name, "evaluation")]
    # mid's evaluation ends first and its refit (remaining 3) beats the small evaluations (≤ 1); when big's
    # evaluation ends, its refit (remaining 4) is taken before them too.
    assert starts[("big", "refit")] < starts[("small", "evaluation")]


def test_no_limit_submits_every_evaluation_at_once() -> None:
    cost = {"a": 4.0, "b": 4.0, "c": 4.0, "d": 4.0}
    _run(cost, limit=None)
    assert _most_at_once() == 4


def test_a_crashed_evaluation_gets_no_refit_and_the_rest_run() -> None:
    # Submitted anyway, a's refit could not run; on the process runner it raised from wait() in the flow's process
    # ("UpstreamTaskError"), which failed the whole run and published nothing (checked with a real flow there).
    cost = {"a": 2.0, "b": 1.0}
    states = _run(cost, limit=1, failing=frozenset({"a"}))
    assert states["evaluations"] == {"a": "FAILED", "b": "COMPLETED"}
    assert states["refits"] == {"b": "COMPLETED"}
    assert ("a", "refit") not in {(name, kind) for name, kind, *_ in _events}


_lost_worker = threading.Event()


@task
def _never_answers(name: str) -> str:
    _lost_worker.wait(30)  # as a task on a Dask worker that was killed: no result ever comes back
    return name


def test_a_task_that_never_finishes_is_given_up_after_the_deadline_and_the_rest_run() -> None:
    # Every worker of a Dask cluster lost: the task's own time budget, enforced on the worker, never fires, and
    # the run waited for it until a new worker came.
    _events.clear()
    _lost_worker.clear()

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def models() -> tuple[dict[tuple[str, str], str], dict[str, str], float]:
        start = time.perf_counter()
        tasks = run_model_tasks(
            ["lost", "fine"],
            {"lost": 2.0, "fine": 1.0},
            lambda n: _never_answers.submit(n) if n == "lost" else _evaluate.submit(n, 0.05),
            lambda n, evaluation: _refit.submit(n, evaluation, 0.05),
            limit=1,
            deadline=1.0,
        )
        took = time.perf_counter() - start
        _lost_worker.set()  # let the thread end, so that the flow's runner can shut down
        for future in tasks.refits.values():
            future.wait()
        return tasks.overdue, {n: f.state.type.value for n, f in tasks.refits.items()}, took

    overdue, refits, took = models()
    assert (
        list(overdue) == [("lost", "evaluation")]
        and "no model task finished for 1 s" in overdue[("lost", "evaluation")]
    )
    assert refits == {"fine": "COMPLETED"}  # the slot was freed for the next model
    assert took < 10


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="limit"):
        run_model_tasks(["a"], {}, lambda n: Any, lambda n, e: Any, 0)  # type: ignore[arg-type,return-value]


def test_slots_follow_max_workers_then_the_runner() -> None:
    assert model_task_slots(ThreadPoolTaskRunner(), 5) == 5
    assert model_task_slots(ThreadPoolTaskRunner(), None) == available_cores()
    assert model_task_slots(None, None) == available_cores()
    assert model_task_slots(ProcessPoolTaskRunner(max_workers=3), None) == 3
    assert model_task_slots(DaskTaskRunner(address="tcp://127.0.0.1:1"), None) is None
    local = DaskTaskRunner(cluster_kwargs={"n_workers": 3})
    assert model_task_slots(local, None) == 3


def test_costs_prefer_measured_seconds_and_scale_the_hints_of_the_others() -> None:
    hints = {"a": 10.0, "b": 1.0, "c": 2.0, "d": 4.0}
    # measured / hint: a 3.0, b 2.0, c 5.0 → median 3.0 scales d's hint.
    assert estimated_costs(hints, {"a": 30.0, "b": 2.0, "c": 10.0}) == {"a": 30.0, "b": 2.0, "c": 10.0, "d": 12.0}
    assert estimated_costs(hints, {}) == hints
    assert estimated_costs({"a": 1.0}, {"a": 7.0, "gone": 3.0}) == {"a": 7.0}


@task
def _queued(name: str, seconds: float) -> str:
    time.sleep(seconds)
    return name


def test_tasks_waiting_in_a_busy_runners_queue_are_not_given_up() -> None:
    # An existing Dask cluster takes every task at once (no slot limit) and queues what its threads cannot run: the
    # deadline counted from submission gave up on healthy queued tasks and blamed a lost worker.
    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))  # one thread: the others wait in the runner's queue
    def models() -> tuple[dict[tuple[str, str], str], int]:
        names = ["a", "b", "c", "d"]
        tasks = run_model_tasks(
            names, {}, lambda n: _queued.submit(n, 0.6), lambda n, e: _queued.submit(n, 0.01), None, deadline=1.0
        )
        for future in tasks.refits.values():
            future.wait()
        return tasks.overdue, len(tasks.refits)

    overdue, refits = models()
    assert overdue == {} and refits == 4  # 4 × 0.6 s queued behind one another, each finishing within the deadline
