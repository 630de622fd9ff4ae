"""Handing prepared data to process and Dask workers through one checked file (recforge.handoff)."""

from __future__ import annotations

import os
import pickle
import stat
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge import handoff
from recforge.handoff import DataRef, HandoffError


@dataclass(frozen=True)
class Bundle:
    frame: pd.DataFrame
    matrix: np.ndarray
    label: str


def _bundle(seed: int = 0) -> Bundle:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in rng.integers(0, 50, 200)],
            "rating": rng.random(200),
            "timestamp": pd.date_range("2024-01-01", periods=200, freq="h"),
        }
    )
    return Bundle(frame=frame, matrix=rng.random((30, 4)), label=f"bundle {seed}")


def _assert_same(a: Bundle, b: Bundle) -> None:
    pd.testing.assert_frame_equal(a.frame, b.frame)
    np.testing.assert_array_equal(a.matrix, b.matrix)
    assert a.label == b.label


def _read_in_child(ref: DataRef) -> tuple[int, str]:
    data = handoff.resolve(ref)
    return os.getpid(), data.label


def test_round_trip_private_file_and_one_read_per_process(tmp_path: Path) -> None:
    original = _bundle(1)
    ref = handoff.write(original, tmp_path / "handoff")
    path = Path(ref.path)
    assert path.parent == (tmp_path / "handoff").resolve()
    assert ref.nbytes == path.stat().st_size > 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # other local users cannot read or swap it

    first = handoff.resolve(ref)
    _assert_same(first, original)
    assert first is not original
    # Later tasks in the same worker get the same object, not another read of the file.
    assert handoff.resolve(ref) is first

    # A fresh process (as a process-pool worker is) reads the file itself.
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        pid, label = pool.submit(_read_in_child, ref).result()
    assert pid != os.getpid() and label == "bundle 1"

    handoff.remove(ref)
    assert not path.exists()
    handoff.remove(ref)  # already gone: nothing happens


def test_values_that_are_not_references_pass_through() -> None:
    bundle = _bundle(2)
    assert handoff.resolve(bundle) is bundle


def test_a_file_changed_on_disk_is_refused_before_unpickling(tmp_path: Path) -> None:
    ref = handoff.write(_bundle(3), tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    Path(ref.path).write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(HandoffError, match="changed after the flow wrote it") as caught:
        handoff.resolve(ref)
    assert ref.path in str(caught.value)
    assert not marker.exists()


def test_same_size_edit_is_refused(tmp_path: Path) -> None:
    ref = handoff.write(_bundle(4), tmp_path)
    blob = bytearray(Path(ref.path).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    Path(ref.path).write_bytes(bytes(blob))
    with pytest.raises(HandoffError, match="changed after the flow wrote it"):
        handoff.resolve(ref)


def test_missing_file_says_where_the_output_folder_must_be(tmp_path: Path) -> None:
    ref = handoff.write(_bundle(5), tmp_path)
    handoff.remove(ref)
    with pytest.raises(HandoffError, match="output_dir") as caught:
        handoff.resolve(ref)
    assert ref.path in str(caught.value)


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    class Unpicklable:
        def __reduce__(self) -> tuple[object, ...]:
            raise TypeError("cannot pickle this")

    with pytest.raises(TypeError, match="cannot pickle"):
        handoff.write(Unpicklable(), tmp_path)
    assert list(tmp_path.iterdir()) == []
