"""BLAS thread limits shared by the threads of one process (recmodels.blas) and the flow's use of them."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.linalg  # noqa: F401  (loads scipy's own OpenBLAS, which must be limited too)
from prefect.task_runners import ThreadPoolTaskRunner
from threadpoolctl import threadpool_limits

from flows import runners
from recmodels.blas import blas_threads, current_blas_threads


@pytest.fixture
def three_threads() -> object:
    """A known starting count above 1 (whatever the machine's cores), so that a wrong restore shows."""
    with threadpool_limits(limits=3, user_api="blas"):
        assert set(current_blas_threads()) == {3}
        yield


def test_a_limit_holds_inside_and_is_restored_after(three_threads: object) -> None:
    with blas_threads(1):
        assert set(current_blas_threads()) == {1}
        np.ones((64, 64)) @ np.ones((64, 64))  # BLAS still works
    assert set(current_blas_threads()) == {3}


def test_overlapping_holders_keep_the_smallest_until_the_last_leaves(three_threads: object) -> None:
    # Holders that do not leave in reverse order, as tasks running side by side do.
    first, second = blas_threads(2), blas_threads(1)
    first.__enter__()
    second.__enter__()
    assert set(current_blas_threads()) == {1}
    first.__exit__(None, None, None)
    # A plain threadpool_limits would have restored 3 here, under the second holder's feet.
    assert set(current_blas_threads()) == {1}
    second.__exit__(None, None, None)
    assert set(current_blas_threads()) == {3}


def test_a_limit_set_in_the_flows_thread_reaches_the_task_threads(three_threads: object) -> None:
    seen: list[list[int]] = []
    with blas_threads(1):
        worker = threading.Thread(target=lambda: seen.append(current_blas_threads()))
        worker.start()
        worker.join(10)
    assert seen and set(seen[0]) == {1}


def test_the_larger_limit_applies_again_when_the_smaller_leaves(three_threads: object) -> None:
    with blas_threads(2):
        with blas_threads(1):
            assert set(current_blas_threads()) == {1}
        assert set(current_blas_threads()) == {2}
    assert set(current_blas_threads()) == {3}
    with pytest.raises(ValueError, match="threads must be"):
        blas_threads(0).__enter__()


def test_the_thread_runner_splits_the_cores_between_tasks_in_flight(
    three_threads: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in runners.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(runners, "available_cores", lambda: 4)
    with runners.shared_blas_threads(ThreadPoolTaskRunner(), 2):
        assert set(current_blas_threads()) == {2}
    with runners.shared_blas_threads(None, 8):
        assert set(current_blas_threads()) == {1}
    with runners.shared_blas_threads(ThreadPoolTaskRunner(), None):  # no cap: one per core in flight
        assert set(current_blas_threads()) == {1}
    assert set(current_blas_threads()) == {3}


def test_a_users_thread_variables_and_other_runners_are_left_alone(
    three_threads: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runners, "available_cores", lambda: 4)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    with runners.shared_blas_threads(ThreadPoolTaskRunner(), 2):
        assert set(current_blas_threads()) == {3}
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    for name in runners.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    process = runners.SharedCoresProcessPoolTaskRunner(max_workers=2)
    with runners.shared_blas_threads(process, 2):
        assert set(current_blas_threads()) == {3}


def test_each_task_on_the_thread_runner_gets_its_share_of_the_cores_for_torch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in runners.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(runners, "available_cores", lambda: 4)
    assert runners.task_threads(ThreadPoolTaskRunner(), 2) == 2
    assert runners.task_threads(None, 8) == 1
    assert runners.task_threads(ThreadPoolTaskRunner(), None) == 1  # no cap: one per core in flight
    assert runners.task_threads(runners.SharedCoresProcessPoolTaskRunner(max_workers=2), 2) is None  # environment
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runners.task_threads(ThreadPoolTaskRunner(), 2) is None  # the user's setting wins
