"""The terminal progress reporter: a shared status line on a TTY, quarter milestones elsewhere."""

from __future__ import annotations

import io
import os
import threading

import pytest

from recforge.progress import MilestoneLog, ProgressBoard, interactive, progress_callback
from recmodels.base import RunSettings


class FakeTTY(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _frames(stream: io.StringIO) -> list[str]:
    """What each redraw put on the line (the text after each carriage return + erase)."""
    return stream.getvalue().split("\r\x1b[K")[1:]


def test_interactive_needs_a_tty_and_no_ci() -> None:
    assert interactive(FakeTTY(), environ={})
    assert interactive(FakeTTY(), environ={"CI": "false"})
    assert not interactive(FakeTTY(), environ={"CI": "true"})
    assert not interactive(FakeTTY(), environ={"CI": "1"})
    assert not interactive(io.StringIO(), environ={})
    with open(os.devnull, "w") as closed:  # a real stream: isatty() raises once it is closed
        pass
    assert not interactive(closed, environ={})


def test_board_draws_bars_throttles_and_clears() -> None:
    stream, clock = FakeTTY(), Clock()
    board = ProgressBoard(stream, bar_width=4, min_interval=0.5, clock=clock, columns=lambda: 200)
    board.update("knn", "similarities", 0.0)
    assert _frames(stream) == ["knn similarities [----]   0%"]
    clock.now = 0.1
    board.update("knn", "similarities", 0.5)  # within min_interval of the last draw: not drawn
    assert len(_frames(stream)) == 1
    clock.now = 0.7
    board.update("knn", "similarities", 0.5)
    assert _frames(stream)[-1] == "knn similarities [##--]  50%"
    clock.now = 0.8
    board.update("gru", "epochs", 0.25)  # a new model is drawn at once, on the same line
    assert _frames(stream)[-1] == "knn similarities [##--]  50% | gru epochs [#---]  25%"
    clock.now = 0.9
    board.update("knn", "similarities", 1.0)  # finishing is drawn at once and drops the entry
    assert _frames(stream)[-1] == "gru epochs [#---]  25%"
    board.update("gru", "epochs", 1.0)
    assert _frames(stream)[-1] == ""  # the line is erased when nothing is left
    assert "\n" not in stream.getvalue()


def test_board_truncates_to_the_terminal_width() -> None:
    stream = FakeTTY()
    board = ProgressBoard(stream, bar_width=10, columns=lambda: 20)
    board.update("a_long_model_name", "a long stage name", 0.3)
    line = _frames(stream)[-1]
    assert len(line) == 19 and line.endswith("…")


def test_board_is_safe_from_many_threads() -> None:
    stream = FakeTTY()
    board = ProgressBoard(stream, min_interval=0.0)

    def work(name: str) -> None:
        for step in range(1, 51):
            board.update(name, "fit", step / 50)

    threads = [threading.Thread(target=work, args=(f"m{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _frames(stream)[-1] == ""
    assert board.line() == ""


def test_milestones_log_each_quarter_once_and_restart_on_a_new_fit() -> None:
    lines: list[str] = []
    log = MilestoneLog("ease", lines.append)
    for fraction in (0.0, 0.1, 0.3, 0.3, 0.6, 0.99, 1.0, 1.0):
        log("gram", fraction)
    assert lines == ["ease: gram 25%", "ease: gram 50%", "ease: gram 75%", "ease: gram 100%"]
    lines.clear()
    log("gram", 0.2)  # the same stage again from the start (a refit)
    log("gram", 0.8)  # jumping past 25%, 50% and 75% logs the highest once
    log("other", 1.0)
    assert lines == ["ease: gram 75%", "ease: other 100%"]


def test_progress_callback_picks_terminal_log_or_silence() -> None:
    tty = FakeTTY()
    draw = progress_callback("knn", stream=tty, environ={})
    RunSettings(progress=draw).report("similarities", 0.5)
    assert _frames(tty)[-1].startswith("knn similarities [")

    lines: list[str] = []
    in_ci = FakeTTY()
    logged = progress_callback("knn", stream=in_ci, log=lines.append, environ={"CI": "true"})
    RunSettings(progress=logged).report("similarities", 0.5)
    assert lines == ["knn: similarities 50%"] and in_ci.getvalue() == ""

    pipe = io.StringIO()
    quiet = progress_callback("knn", stream=pipe, environ={})
    quiet("similarities", 1.0)
    assert pipe.getvalue() == ""


def test_models_on_one_terminal_share_one_board() -> None:
    tty = FakeTTY()
    progress_callback("a", stream=tty, environ={})("fit", 0.5)
    progress_callback("b", stream=tty, environ={})("fit", 0.5)
    assert _frames(tty)[-1].startswith("a fit [") and "| b fit [" in _frames(tty)[-1]


def test_a_stoppable_callback_raises_once_its_run_is_interrupted() -> None:
    from recforge.progress import RunInterrupted, interrupt, stoppable

    seen: list[tuple[str, float]] = []
    report = stoppable(lambda stage, fraction: seen.append((stage, fraction)), "run-a")
    other = stoppable(lambda stage, fraction: seen.append((stage, fraction)), "run-b")
    report("als", 0.25)
    interrupt("run-a")
    with pytest.raises(RunInterrupted, match=r"flow run run-a\) was interrupted; stopped at als 50%"):
        report("als", 0.5)
    other("bpr", 0.5)  # another run in the same process trains on
    assert seen == [("als", 0.25), ("bpr", 0.5)]
    callback = seen.append
    assert stoppable(callback, None) is callback  # no flow run: the callback itself
