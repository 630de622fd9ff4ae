"""bench.runners' per-model table: the loop's measured seconds per model, costliest first, shares summing to 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import runners


def _measurement(per_model: dict[str, tuple[float, float]], ndcg: dict[str, float]) -> runners.Measurement:
    bodies = sum(e + r for e, r in per_model.values())
    return runners.Measurement(bodies, bodies, bodies, set(), ndcg, per_model=per_model)


def _rows(lines: list[str]) -> dict[str, list[str]]:
    return {cells[0]: cells[1:] for line in lines[2:] for cells in [[c.strip() for c in line.split("|")[1:-1]]]}


def test_per_model_table_takes_medians_orders_by_cost_and_shares_the_sum() -> None:
    ndcg = {"cheap": 0.1, "dear": 0.2}
    runs = [
        _measurement({"cheap": (1.0, 1.0), "dear": (5.0, 1.0)}, ndcg),
        _measurement({"cheap": (3.0, 1.0), "dear": (7.0, 3.0)}, ndcg),
        _measurement({"cheap": (2.0, 9.0), "dear": (6.0, 2.0)}, ndcg),
    ]
    lines = runners.per_model_table(runs, k=10)
    assert lines[0].startswith("| model |") and "NDCG@10" in lines[0]
    rows = _rows(lines)
    assert list(rows) == ["dear", "cheap"]  # medians 6 + 2 = 8 before 2 + 1 = 3
    assert rows["dear"][:2] == ["6.00", "2.00"]
    assert rows["cheap"][:2] == ["2.00", "1.00"]
    assert rows["dear"][2] == "73%" and rows["cheap"][2] == "27%"  # 8 / 11 and 3 / 11
    assert rows["dear"][3] == "0.2000"


def test_the_loop_records_each_models_evaluation_and_refit(ml100k_dir: Path) -> None:
    from datetime import UTC, datetime

    data = runners.prepare_ml100k(ml100k_dir, datetime(1998, 4, 23, tzinfo=UTC))
    measurement = runners.run_loop(data, ["popularity", "pure_svd"], k=10, top_n=5, seed=0)
    assert set(measurement.per_model) == {"popularity", "pure_svd"}
    assert all(e > 0 and r > 0 for e, r in measurement.per_model.values())
    assert sum(e + r for e, r in measurement.per_model.values()) == pytest.approx(measurement.bodies)
    rows = _rows(runners.per_model_table([measurement], k=10))
    assert float(rows["pure_svd"][3]) == pytest.approx(measurement.ndcg["pure_svd"], abs=1e-4)


def test_a_runner_with_other_results_is_named_and_float_noise_is_not() -> None:
    loop = _measurement({"als": (1.0, 1.0)}, {"als": 0.19138269})
    noise = _measurement({"als": (1.0, 1.0)}, {"als": 0.19138609})  # 3.4e-6 away: another thread count's sums
    changed = _measurement({"als": (1.0, 1.0)}, {"als": 0.2010})
    assert runners.ndcg_mismatches({"loop": [loop], "process": [noise]}) == []
    assert runners.ndcg_mismatches({"loop": [loop], "process": [noise], "dask": [changed]}) == [
        "dask als: 0.201000 vs 0.191383"
    ]
