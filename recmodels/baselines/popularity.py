"""Most-popular baseline: every user gets the items with the most distinct users in training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recmodels.base import ModelConfig, Recommender, RunSettings
from recmodels.data import Interactions


@dataclass(frozen=True)
class PopularityConfig(ModelConfig):
    """Hyperparameters of :class:`Popularity`.

    recent_days: if set, count only events in the last ``recent_days`` days before the newest training event, so
        that trending items rise; ``None`` counts the whole history (the standard baseline).
    """

    recent_days: float | None = None

    def __post_init__(self) -> None:
        if self.recent_days is not None and not self.recent_days > 0:
            raise ValueError(f"recent_days must be > 0 or None (the whole history), got {self.recent_days}")


class Popularity(Recommender):
    """Ranks items by how many distinct users interacted with them (optionally in a recent window)."""

    name = "popularity"
    family = "baseline"
    threaded_scoring = True
    training_cost = 0.5
    config_class = PopularityConfig
    config: PopularityConfig

    def _fit(self, data: Interactions, settings: RunSettings) -> None:
        counts = self.popularity_
        if self.config.recent_days is not None:
            if data.timestamp is None:
                raise ValueError("popularity: recent_days needs timestamps in the training data")
            cutoff = data.timestamp.max() - int(self.config.recent_days * 86_400)
            counts = data.subset(data.timestamp >= cutoff).item_counts.astype(np.float32)
        # A tiny deterministic tie-breaker would change published scores; ties are broken by item index instead.
        self.item_scores_ = counts.astype(np.float32)

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.item_scores_, (len(users), self.n_items_)).copy()

    def score(self, users: np.ndarray) -> np.ndarray:
        """The same scores for every user, known or not: with ``recent_days`` the base class's fallback for unknown
        users (all-time counts) would show new users another ranking than everybody else."""
        self._check_fitted()
        return self._score_known(np.asarray(users, dtype=np.int64))

    def _state(self) -> dict[str, np.ndarray]:
        return {"item_scores": self.item_scores_}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.item_scores_ = state["item_scores"]
