"""The free-memory watch of the training stage (recforge.memory)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prefect.task_runners import ProcessPoolTaskRunner

from flows.runners import make_task_runner, worker_processes
from recforge.memory import GIB, MemoryWatch, low_memory_fraction, publish_advice, read_meminfo, runner_advice


def test_meminfo_is_read_in_bytes_and_missing_fields_give_none(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        "MemTotal:       24576000 kB\nMemFree:   100 kB\nMemAvailable:    2048000 kB\nHugePages_Total: 0\n"
    )
    assert read_meminfo(meminfo) == (2048000 * 1024, 24576000 * 1024)
    meminfo.write_text("MemTotal:       24576000 kB\n")  # a kernel without MemAvailable
    assert read_meminfo(meminfo) is None
    assert read_meminfo(tmp_path / "absent") is None
    if Path("/proc/meminfo").exists():
        available, total = read_meminfo() or (0, 0)
        assert 0 < available <= total


def test_warns_once_per_low_episode_and_rearms_after_recovery() -> None:
    total = 24 * GIB
    readings = iter([10, 2, 1.5, 3, 4, 1, 0.5])  # GiB available: floor 2.4, re-armed above 3.6
    warnings: list[str] = []
    watch = MemoryWatch(
        warnings.append, "Use fewer workers.", fraction=0.1, read=lambda: (int(next(readings) * GIB), total)
    )
    for _ in range(7):
        watch.sample()
    assert len(warnings) == 2 and watch.warnings == 2
    assert warnings[0].startswith("memory is running low while models train: 2.0 GiB of 24.0 GiB available")
    assert "below 10%" in warnings[0] and warnings[0].endswith("Use fewer workers.")
    assert "1.0 GiB of 24.0 GiB" in warnings[1]  # the second episode starts at 1 GiB, after the recovery to 4
    assert watch.summary() == {"lowest_available_gib": 0.5, "total_gib": 24.0, "low_memory_warnings": 2}


def test_a_new_stage_rearms_the_warning_and_names_itself() -> None:
    readings = iter([1, 1, 1])  # GiB available of 24: low throughout
    warnings: list[str] = []
    watch = MemoryWatch(
        warnings.append, "Use fewer workers.", fraction=0.1, read=lambda: (int(next(readings) * GIB), 24 * GIB)
    )
    watch.sample()
    watch.sample()  # the same low episode: no second warning
    watch.switch("while the recommendations are published", publish_advice(30_000_000))
    watch.sample()
    assert len(warnings) == 2
    assert warnings[0].startswith("memory is running low while models train") and "fewer workers" in warnings[0]
    assert warnings[1].startswith("memory is running low while the recommendations are published: 1.0 GiB")
    assert "(30,000,000 rows)" in warnings[1] and "--top-n" in warnings[1] and "workers" not in warnings[1]


def test_the_thread_samples_until_stopped_and_does_nothing_without_meminfo() -> None:
    warnings: list[str] = []
    calls = 0

    def low() -> tuple[int, int]:
        nonlocal calls
        calls += 1
        return GIB // 2, 8 * GIB

    with MemoryWatch(warnings.append, "", fraction=0.1, interval_s=0.01, read=low) as watch:
        time.sleep(0.2)
    seen = calls
    time.sleep(0.05)
    assert calls == seen > 3  # sampled repeatedly, and not after the block
    assert len(warnings) == 1 and watch.summary()["lowest_available_gib"] == 0.5
    quiet = MemoryWatch(warnings.append, "", fraction=0.1, read=lambda: None).start()
    quiet.stop()
    assert quiet.summary() == {"lowest_available_gib": None, "total_gib": None, "low_memory_warnings": 0}
    off = MemoryWatch(warnings.append, "", fraction=0.0, read=low).start()  # 0 disables the watch
    off.stop()
    assert off.summary()["total_gib"] is None


def test_the_threshold_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECFORGE_LOW_MEMORY_FRACTION", raising=False)
    assert low_memory_fraction() == 0.10
    monkeypatch.setenv("RECFORGE_LOW_MEMORY_FRACTION", "0.25")
    assert low_memory_fraction() == 0.25
    for bad in ("lots", "1.5", "-0.1"):
        monkeypatch.setenv("RECFORGE_LOW_MEMORY_FRACTION", bad)
        with pytest.raises(ValueError, match="RECFORGE_LOW_MEMORY_FRACTION"):
            low_memory_fraction()


def test_advice_names_the_runner_the_workers_and_the_data_copy() -> None:
    assert "shares one copy" in runner_advice("thread", None, None)
    advice = runner_advice("process", 2, int(1.5 * GIB))
    assert "process runner keeps a copy of the prepared data (1.5 GiB on disk)" in advice
    assert "each of its 2 worker processes" in advice and "--task-runner thread" in advice
    assert "dask runner" in runner_advice("dask", None, None)


def test_the_runner_itself_says_how_many_worker_processes_hold_a_copy() -> None:
    assert worker_processes(make_task_runner("thread", max_workers=4)) is None  # one shared copy
    assert worker_processes(make_task_runner("dask", max_workers=3)) == 3
    assert worker_processes(make_task_runner("dask")) == 2  # the local cluster's default
    assert worker_processes(make_task_runner("dask", dask_address="tcp://127.0.0.1:8786")) is None  # not ours
    assert worker_processes(ProcessPoolTaskRunner(max_workers=5)) == 5  # make_task_runner needs a server for it
