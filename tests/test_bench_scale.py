"""bench.scale's measurement on a tiny pair set: the recforge side ranks with the threads it was given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import scale
from recmodels.base import Recommender


@pytest.mark.parametrize(("recommend_threads", "expected"), [(None, 2), (1, 1), (3, 3)])
def test_recommend_threads_reach_recforges_recommend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recommend_threads: int | None, expected: int
) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "pairs.npz"
    users = rng.integers(0, 300, 4000)
    np.savez(path, user=users, item=rng.integers(0, 200, 4000), recommend_users=np.unique(users)[:50])
    seen: list[int | None] = []
    original = Recommender.recommend

    def recording(self: Recommender, *args: object, threads: int | None = None, **kwargs: object) -> object:
        seen.append(threads)
        return original(self, *args, threads=threads, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Recommender, "recommend", recording)
    row = scale.measure("recforge_item_knn", path, threads=2, iterations=1, seed=0, recommend_threads=recommend_threads)
    assert seen == [expected]
    assert row["kind"] == "recforge_item_knn" and row["fit"] > 0 and row["recommend"] > 0
