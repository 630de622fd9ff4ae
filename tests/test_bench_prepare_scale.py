"""bench.prepare_scale end to end on a tiny set: each row comes from a real preparation in a child process."""

from __future__ import annotations

import pytest

from bench import prepare_scale


def test_prepare_scale_prints_one_measured_row_per_repeat(capsys: pytest.CaptureFixture[str]) -> None:
    assert prepare_scale.main(["--users", "200", "--items", "100", "--events", "3000", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row[0].strip() for row in rows] == ["1", "2"]
    for row in rows:
        seconds, peak, train, test = (
            float(row[1]),
            float(row[2]),
            int(row[3].replace(",", "")),
            int(row[4].replace(",", "")),
        )
        assert seconds > 0 and peak > 0 and train > test > 0 and train + test <= 3000
    assert rows[0][3:] == rows[1][3:]  # the same data, prepared the same way
