"""bench.ease_scale end to end on a tiny catalogue: the table it prints comes from a real fit in a child process."""

from __future__ import annotations

import pytest

from bench import ease_scale
from tests.bench_tables import count, numbered_rows


def test_ease_scale_prints_one_measured_row_per_catalogue(capsys: pytest.CaptureFixture[str]) -> None:
    assert ease_scale.main(["--items", "60,90", "--users", "300", "--events", "3000", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = numbered_rows(out)
    assert [row[0] for row in rows] == ["60", "90"]
    for row in rows:
        pairs, fit_seconds, peak_mib = count(row[1]), float(row[2]), float(row[3])
        assert 0 < pairs <= 3000 * 2 and fit_seconds >= 0 and peak_mib > 0
