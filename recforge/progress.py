"""A tiny terminal progress reporter for long stages (training epochs, similarity blocks, scoring all users).

Models report through ``RunSettings.progress`` as ``progress(stage, fraction_done)``.
:func:`progress_callback` turns that into:

- on an interactive terminal (stderr is a TTY and ``$CI`` is not true): one status line on stderr, redrawn in
  place, shared by every model running at the same time, e.g.
  ``item_knn item similarities [#######-----]  58% | ease gram matrix [------------]   0%``; a model's entry
  disappears when its stage reaches 100%, and the line is cleared when nothing is left;
- elsewhere (CI logs, files, pipes): one line per quarter reached (25%, 50%, 75%, 100%) handed to ``log``
  (a Prefect run logger's ``info``, say), or nothing when no ``log`` is given. Progress never floods a log.

Thread-safe: models trained in worker threads share one :class:`ProgressBoard` per stream.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from recmodels.base import ProgressCallback

__all__ = [
    "MilestoneLog",
    "ProgressBoard",
    "RunInterrupted",
    "interactive",
    "interrupt",
    "progress_callback",
    "stoppable",
]

MILESTONES = (0.25, 0.5, 0.75, 1.0)
_TRUE = frozenset({"1", "true", "yes", "on"})


def interactive(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is a terminal and ``$CI`` is not set to a true value (1/true/yes/on)."""
    env = os.environ if environ is None else environ
    if env.get("CI", "").strip().lower() in _TRUE:
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class ProgressBoard:
    """One status line on a terminal stream, holding the latest (stage, fraction) of every active model."""

    def __init__(
        self,
        stream: TextIO,
        bar_width: int = 12,
        min_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        columns: Callable[[], int] | None = None,
    ) -> None:
        self.stream = stream
        self.bar_width = bar_width
        # Redraw at most this often (seconds), except when a model starts or finishes a stage.
        self.min_interval = min_interval
        self._clock = clock
        self._columns = columns or (lambda: shutil.get_terminal_size((100, 20)).columns)
        self._entries: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._last_draw = -float("inf")
        self._drawn = False

    def update(self, name: str, stage: str, fraction: float) -> None:
        """Record ``name``'s progress and redraw; a fraction of 1 or more removes ``name`` from the line."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        with self._lock:
            previous = self._entries.get(name)
            if fraction >= 1.0:
                self._entries.pop(name, None)
                force = True
            else:
                self._entries[name] = (stage, fraction)
                force = previous is None or previous[0] != stage
            now = self._clock()
            if force or now - self._last_draw >= self.min_interval:
                self._draw()
                self._last_draw = now

    def line(self) -> str:
        """The status line as it would be drawn now (without control characters)."""
        parts = []
        for name, (stage, fraction) in self._entries.items():
            filled = round(fraction * self.bar_width)
            bar = "#" * filled + "-" * (self.bar_width - filled)
            parts.append(f"{name} {stage} [{bar}] {fraction:4.0%}")
        text = " | ".join(parts)
        width = max(self._columns() - 1, 10)
        return text if len(text) <= width else text[: width - 1] + "…"

    def _draw(self) -> None:
        text = self.line()
        if not text and not self._drawn:
            return
        # \r and "erase line" redraw in place; an empty line just clears what was there.
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self._drawn = bool(text)


class MilestoneLog:
    """Hands ``log`` one line per quarter of a stage reached, e.g. ``item_knn: item similarities 50%``.

    A fraction lower than the last one starts the stage over (the same model fitted again), so each fit logs
    its own milestones.
    """

    def __init__(self, name: str, log: Callable[[str], None]) -> None:
        self.name = name
        self.log = log
        self._reached: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, stage: str, fraction: float) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        with self._lock:
            last = self._reached.get(stage, -1.0)
            if fraction < last:
                last = -1.0
            passed = [m for m in MILESTONES if last < m <= fraction]
            self._reached[stage] = fraction
        if passed:
            self.log(f"{self.name}: {stage} {passed[-1]:.0%}")


_boards: dict[int, ProgressBoard] = {}
_boards_lock = threading.Lock()


def _board_for(stream: TextIO) -> ProgressBoard:
    with _boards_lock:
        board = _boards.get(id(stream))
        if board is None or board.stream is not stream:
            board = _boards[id(stream)] = ProgressBoard(stream)
        return board


def progress_callback(
    model_name: str,
    *,
    log: Callable[[str], None] | None = None,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> ProgressCallback:
    """A ``RunSettings.progress`` callback for ``model_name``: a shared status line on an interactive stderr,
    quarter milestones to ``log`` elsewhere (nothing when ``log`` is None).

    ``stream`` defaults to ``sys.stderr`` at call time; ``environ`` to ``os.environ`` (for ``$CI``).
    """
    target = sys.stderr if stream is None else stream
    if interactive(target, environ):
        board = _board_for(target)

        def draw(stage: str, fraction: float) -> None:
            board.update(model_name, stage, fraction)

        return draw
    if log is not None:
        return MilestoneLog(model_name, log)

    def quiet(stage: str, fraction: float) -> None:
        del stage, fraction  # not a terminal and nowhere to log: stay silent

    return quiet


class RunInterrupted(RuntimeError):
    """The run a model task belongs to was interrupted; raised at the task's next progress report."""


_INTERRUPTED: set[str] = set()
_INTERRUPTED_LOCK = threading.Lock()


def interrupt(run_key: str) -> None:
    """Mark the run ``run_key`` (its flow run id) interrupted: its model tasks in this process stop at their next
    progress report instead of training on to the end."""
    with _INTERRUPTED_LOCK:
        _INTERRUPTED.add(run_key)


def stoppable(callback: ProgressCallback, run_key: str | None) -> ProgressCallback:
    """``callback``, raising :class:`RunInterrupted` once ``run_key``'s run was interrupted (:func:`interrupt`).

    Model tasks on the thread runner cannot be killed: after Ctrl-C (or SIGTERM) the flow closed its run, and the
    process then waited for each running fit to end (a minute for a long ALS in QA). Every iterative model reports
    progress per epoch, iteration or block, so that is where a task learns the run is over. ``run_key`` None (no
    flow run) gives ``callback`` itself.
    """
    if run_key is None:
        return callback

    def report(stage: str, fraction: float) -> None:
        if run_key in _INTERRUPTED:
            raise RunInterrupted(f"the run (flow run {run_key}) was interrupted; stopped at {stage} {fraction:.0%}")
        callback(stage, fraction)

    return report
