"""A free-memory watch for the training stage of a flow run.

When a machine runs out of memory, Linux kills a process (a model worker, or the flow itself) with SIGKILL: no
Python error, no traceback, only a task that "crashed" or a run that stopped. At 9M events the process and Dask
runners came within 1–2 GB of this 24 GB machine's memory (each worker holds its own copy of the data; see
docs/benchmarks/runners.md), so the flow samples the memory still available while models train and writes a
warning into the run's log while there is still some left — naming what holds the memory and what to change.

Linux only (``/proc/meminfo``); elsewhere the watch does nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

GIB = 1024**3

#: Warn when the memory still available falls below this fraction of the machine's total (override:
#: ``RECFORGE_LOW_MEMORY_FRACTION``, 0 disables the warning).
LOW_MEMORY_FRACTION = 0.10
#: Seconds between two samples.
INTERVAL_S = 2.0


def read_meminfo(path: Path = Path("/proc/meminfo")) -> tuple[int, int] | None:
    """``(available, total)`` bytes of this machine's memory, or None where ``/proc/meminfo`` is missing."""
    try:
        text = path.read_text()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0]) * 1024  # reported in KiB
    if "MemAvailable" not in fields or "MemTotal" not in fields:
        return None
    return fields["MemAvailable"], fields["MemTotal"]


def low_memory_fraction() -> float:
    """The warning threshold: :data:`LOW_MEMORY_FRACTION` unless ``RECFORGE_LOW_MEMORY_FRACTION`` says otherwise."""
    setting = os.environ.get("RECFORGE_LOW_MEMORY_FRACTION")
    if setting is None:
        return LOW_MEMORY_FRACTION
    try:
        value = float(setting)
    except ValueError:
        raise ValueError(
            f"RECFORGE_LOW_MEMORY_FRACTION must be a number between 0 and 1 (0 disables the warning), got {setting!r}"
        ) from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"RECFORGE_LOW_MEMORY_FRACTION must lie in [0, 1), got {value}")
    return value


class MemoryWatch:
    """Context manager: samples available memory in a daemon thread and calls ``warn`` once each time it falls
    below ``fraction`` of the total (re-armed once it is back above 1.5× that, or when :meth:`switch` starts
    another stage).

    ``advice`` ends the warning: what holds memory in this run and what to change. ``lowest_available`` and
    ``total`` (bytes) are known after the first sample; both stay None where memory cannot be read.
    """

    def __init__(
        self,
        warn: Callable[[str], None],
        advice: str,
        fraction: float | None = None,
        interval_s: float = INTERVAL_S,
        read: Callable[[], tuple[int, int] | None] = read_meminfo,
    ) -> None:
        self.warn = warn
        self.advice = advice
        self.stage = "while models train"
        self.fraction = low_memory_fraction() if fraction is None else fraction
        self.interval_s = interval_s
        self.read = read
        self.lowest_available: int | None = None
        self.total: int | None = None
        self.warnings = 0
        self._armed = True
        self._stop = threading.Event()
        self._lock = threading.Lock()  # sample() runs in the watch's thread, and in the caller's on switch()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        """Take one sample (the thread calls this every ``interval_s``)."""
        reading = self.read()
        if reading is None:
            return
        with self._lock:
            self._record(*reading)

    def _record(self, available: int, total: int) -> None:
        """Note one reading (under the lock) and warn if it starts a low episode."""
        self.total = total
        self.lowest_available = available if self.lowest_available is None else min(self.lowest_available, available)
        floor = self.fraction * total
        if available < floor and self._armed:
            self._armed = False
            self.warn(
                f"memory is running low {self.stage}: {available / GIB:.1f} GiB of {total / GIB:.1f} GiB "
                f"available (warning below {self.fraction:.0%}). If it runs out, the kernel kills a worker or "
                f"this run without a Python error. {self.advice}"
            )
            self.warnings += 1
        elif available > 1.5 * floor:
            self._armed = True

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def summary(self) -> dict[str, float | int | None]:
        """For the run summary: the lowest available and the total memory seen (GiB), and the warnings given."""
        return {
            "lowest_available_gib": None if self.lowest_available is None else round(self.lowest_available / GIB, 2),
            "total_gib": None if self.total is None else round(self.total / GIB, 2),
            "low_memory_warnings": self.warnings,
        }

    def switch(self, stage: str, advice: str) -> None:
        """Go on watching through another stage of the run (e.g. ``"while the recommendations are published"``),
        whose warning names it and ends with its own ``advice``; re-armed, so a low episode that began in the
        previous stage is warned about again under the new stage's name."""
        with self._lock:
            self.stage, self.advice, self._armed = stage, advice, True
        if self._thread is not None:
            self.sample()  # at once: the new stage may be short, and may begin low

    def start(self) -> MemoryWatch:
        """Start sampling (nothing happens where memory cannot be read or the fraction is 0); returns self."""
        if self._thread is None and self.fraction > 0 and self.read() is not None:
            self._thread = threading.Thread(target=self._loop, name="recforge-memory-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling; safe to call more than once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> MemoryWatch:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def runner_advice(runner: str, workers: int | None, data_bytes: int | None) -> str:
    """What holds memory in a run on ``runner`` and what to change, for :class:`MemoryWatch`'s warning."""
    if runner == "thread":
        return (
            "The thread runner shares one copy of the data among its models; train fewer models at once "
            "(--max-workers), fewer models (--models), or on a machine with more memory."
        )
    size = f" ({data_bytes / GIB:.1f} GiB on disk)" if data_bytes else ""
    count = f"each of its {workers}" if workers else "each of its"
    return (
        f"The {runner} runner keeps a copy of the prepared data{size} and its model's working set in {count} "
        "worker processes; --task-runner thread shares one copy, and fewer workers (--max-workers) hold fewer."
    )


def publish_advice(rows: int) -> str:
    """What holds memory while a run publishes, and what to change, for :meth:`MemoryWatch.switch`."""
    return (
        f"Publishing holds every model's recommendations in the flow's process ({rows:,} rows); publish fewer rows "
        "per user (--top-n), fewer models (--models), or give the flow more memory."
    )
