"""BLAS thread limits that several threads of one process can hold at once.

numpy's and scipy's OpenBLAS pools are process-wide: a limit set by one thread applies to all, and a plain
``threadpoolctl.threadpool_limits`` block restores the counts it found when it ends — even while another thread
still relies on its own limit, and to a value that may itself be another thread's (two overlapping blocks
can leave the process at one thread for good). :func:`blas_threads` keeps one list of the limits in force:
the smallest applies while any is held, and the original counts come back when the last one ends.

OpenBLAS (0.3.30 here) takes a new count only from the thread that loaded it, the main thread: a limit set
from a task's thread changes nothing (measured: ``threadpool_limits`` in a worker thread leaves the counts as
they were), while one set in the main thread applies to BLAS calls from every thread. The flow therefore sets
it from the flow's own (main) thread around its model tasks (``flows.runners.shared_blas_threads``).

Why limits at all: models trained side by side in threads (the flow's default task runner) each call BLAS
with one thread per core, so two tasks on two cores run four busy threads. On MovieLens 100K the flow's
training stage took 61.6 / 62.4 s with OpenBLAS's default and 57.2 / 58.1 s with one thread per task
(``OPENBLAS_NUM_THREADS=1``, alternating runs, 2026-12-05; docs/BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from threadpoolctl import threadpool_limits

_lock = threading.Lock()
_held: list[int] = []
_original: Any = None  # the outermost threadpool_limits, which knows the counts to restore


@contextlib.contextmanager
def blas_threads(threads: int) -> Iterator[None]:
    """BLAS (OpenBLAS, MKL) limited to at most ``threads`` threads in this process while the block runs.

    Overlapping blocks (from any thread) share the limit: the smallest held applies; leaving the last block
    restores the counts from before the first.
    """
    if threads < 1:
        raise ValueError(f"threads must be ≥ 1, got {threads}")
    global _original
    with _lock:
        if not _held:
            _original = threadpool_limits(limits=threads, user_api="blas")
        _held.append(threads)
        threadpool_limits(limits=min(_held), user_api="blas")
    try:
        yield
    finally:
        with _lock:
            _held.remove(threads)
            if _held:
                threadpool_limits(limits=min(_held), user_api="blas")
            else:
                _original.restore_original_limits()
                _original = None


def current_blas_threads() -> list[int]:
    """The thread count of every BLAS library loaded in this process (for tests and diagnostics)."""
    from threadpoolctl import threadpool_info

    return [int(info["num_threads"]) for info in threadpool_info() if info["user_api"] == "blas"]
