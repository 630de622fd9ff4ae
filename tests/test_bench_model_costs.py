"""bench.model_costs on ML-100K with two cheap models: each row comes from a measured evaluation and refit."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import model_costs


def test_model_costs_prints_measured_rows_and_their_sum(ml100k_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert model_costs.main(["--data-dir", str(ml100k_dir), "--models", "popularity,als"]) == 0
    out = capsys.readouterr().out
    rows = {
        cells[0]: [float(c) for c in cells[1:]]
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith("| model")
        for cells in [[c.strip() for c in line.split("|")[1:-1]]]
    }
    assert set(rows) == {"popularity", "als"}
    for evaluation, refit, total in rows.values():
        assert evaluation >= 0 and refit >= 0 and total > 0  # printed to 0.1 s: a cheap part may read 0.0
        assert total == pytest.approx(evaluation + refit, abs=0.11)
    stated = float(out.split("All models: ")[1].split(" s")[0])
    assert stated == pytest.approx(sum(total for _, _, total in rows.values()), abs=0.11)


def test_model_costs_rejects_an_unknown_model(ml100k_dir: Path) -> None:
    with pytest.raises(SystemExit):
        model_costs.main(["--data-dir", str(ml100k_dir), "--models", "popularity,no_such_model"])
