"""bench.prepare_scale end to end on a tiny set: each row comes from a real preparation in a child process."""

from __future__ import annotations

import pytest

from bench import prepare_scale
from tests.bench_tables import count, numbered_rows


def test_prepare_scale_prints_one_measured_row_per_repeat(capsys: pytest.CaptureFixture[str]) -> None:
    assert prepare_scale.main(["--users", "200", "--items", "100", "--events", "3000", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    rows = numbered_rows(out)
    assert [row[0] for row in rows] == ["1", "2"]
    for row in rows:
        seconds, peak, train, test = float(row[1]), float(row[2]), count(row[3]), count(row[4])
        assert seconds > 0 and peak > 0 and train > test > 0 and train + test <= 3000
    assert rows[0][3:] == rows[1][3:]  # the same data, prepared the same way
