"""Item–item neighbourhood model (implicit mode): cosine similarity on the binary user × item matrix.

Similarities are computed block by block (a dense ``block × n_items`` slice of ``Xᵀ X`` at a time) and pruned to
each item's ``neighbors`` most similar items right away, so memory stays bounded by the block size and the final
sparse ``items × items`` matrix has at most ``n_items × neighbors`` entries. A user's score for item ``j`` is the sum
of the similarities from the items in their history to ``j`` (``x_u · W``), as in implicit's ItemItemRecommender.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recmodels.base import ModelConfig, Recommender, RunSettings
from recmodels.data import Interactions

# Dense similarity slice budget: block_rows × n_items float32 values (~64 MB).
_BLOCK_VALUES = 16_000_000


@dataclass(frozen=True)
class ItemKNNConfig(ModelConfig):
    """Hyperparameters of :class:`ItemKNN`.

    neighbors: similar items kept per item (K); 50 matches the common CosineRecommender default.
    shrinkage: added to the cosine denominator, damping similarities supported by few co-occurrences.
    min_similarity: similarities at or below this value are dropped.
    """

    neighbors: int = 50
    shrinkage: float = 0.0
    min_similarity: float = 0.0

    def __post_init__(self) -> None:
        if self.neighbors < 1:
            raise ValueError(f"neighbors must be ≥ 1, got {self.neighbors}")
        if self.shrinkage < 0:
            raise ValueError(f"shrinkage must be ≥ 0, got {self.shrinkage}")


class ItemKNN(Recommender):
    """Item-based collaborative filtering with top-K cosine neighbourhoods."""

    name = "item_knn"
    family = "collaborative_filtering"
    config_class = ItemKNNConfig
    config: ItemKNNConfig

    def _fit(self, data: Interactions, settings: RunSettings) -> None:
        self.similarity_ = item_cosine_topk(
            data.binary, self.config.neighbors, self.config.shrinkage, self.config.min_similarity, settings
        )

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return np.asarray((self.seen_[users] @ self.similarity_).todense(), dtype=np.float32)

    def _state(self) -> dict[str, np.ndarray]:
        sim = self.similarity_
        return {"indptr": sim.indptr, "indices": sim.indices, "data": sim.data}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.similarity_ = sp.csr_matrix(
            (state["data"], state["indices"], state["indptr"]), shape=(self.n_items_, self.n_items_)
        )


def item_cosine_topk(
    matrix: sp.csr_matrix,
    neighbors: int,
    shrinkage: float = 0.0,
    min_similarity: float = 0.0,
    settings: RunSettings | None = None,
) -> sp.csr_matrix:
    """Row ``i`` holds item ``i``'s ``neighbors`` highest cosine similarities to other items (CSR, float32)."""
    n_items = matrix.shape[1]
    by_item = matrix.T.tocsr().astype(np.float32)
    norms = np.sqrt(np.asarray(by_item.multiply(by_item).sum(axis=1)).ravel()).astype(np.float32)
    users_by_item_t = by_item.T.tocsc()
    k = min(neighbors, max(n_items - 1, 1))
    block = max(1, min(n_items, _BLOCK_VALUES // max(n_items, 1)))
    rows, cols, vals = [], [], []
    for start in range(0, n_items, block):
        stop = min(start + block, n_items)
        co = np.asarray((by_item[start:stop] @ users_by_item_t).todense(), dtype=np.float32)
        denom = np.outer(norms[start:stop], norms) + shrinkage
        np.divide(co, denom, out=co, where=denom > 0)
        co[denom <= 0] = 0.0
        co[np.arange(stop - start), np.arange(start, stop)] = 0.0  # an item is not its own neighbour
        top = (
            np.argpartition(-co, k - 1, axis=1)[:, :k]
            if k < n_items
            else np.tile(np.arange(n_items), (stop - start, 1))
        )
        top_vals = np.take_along_axis(co, top, axis=1)
        keep = top_vals > min_similarity
        rows.append(np.repeat(np.arange(start, stop), keep.sum(axis=1)))
        cols.append(top[keep])
        vals.append(top_vals[keep])
        if settings is not None:
            settings.report("item similarities", stop / n_items)
    similarity = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items, n_items)
    )
    similarity.sort_indices()
    return similarity
