"""Warm starts: a deep model's fit that begins from an earlier fit's weights instead of a fresh initialisation.

The flow fits every model twice: once on the training part to evaluate it, once on every event before
``as_of`` to publish. Both fits see almost the same users and items, so the publishing fit of a deep model can
start from the evaluated network and train a few epochs on all events (``NeuralConfig.warm_start_epochs``)
instead of the early-stopped epoch count from scratch. The two fits index users and items differently (the
publishing data has newer users and items), so rows of embedding-like tensors are matched by the caller, who
knows the ids: :class:`WarmStart` carries, per new index, the earlier index (``-1``: new, keeps its fresh
initial row). Everything else (GRU weights, convolutions, MLP layers) is copied as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

Axis = Literal["user", "item"]


@dataclass(frozen=True, eq=False)
class WarmStart:
    """An earlier fit's weights with its users' and items' rows matched to the data of the new fit.

    state: the earlier network's weights by ``state_dict`` name (:meth:`NeuralRecommender.warm_state`).
    user_rows: int64 ``(n_users,)`` of the new data: each user's row in the earlier fit, ``-1`` if it had none.
    item_rows: int64 ``(n_items,)``, the same for items.
    """

    state: Mapping[str, np.ndarray]
    user_rows: np.ndarray
    item_rows: np.ndarray

    def __post_init__(self) -> None:
        for axis in ("user", "item"):
            rows = getattr(self, f"{axis}_rows")
            if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
                raise ValueError(f"{axis}_rows must be a 1-d integer array, got {rows.dtype} {rows.shape}")

    @property
    def matched(self) -> dict[Axis, int]:
        """How many users and items of the new data start from an earlier row."""
        return {"user": int((self.user_rows >= 0).sum()), "item": int((self.item_rows >= 0).sum())}


def warm_started_state(
    fresh: Mapping[str, np.ndarray], warm: WarmStart, indexed: Mapping[str, Axis]
) -> dict[str, np.ndarray]:
    """The weights a warm-started fit begins with: ``fresh`` (the new network's initial weights) overwritten by
    ``warm.state`` wherever there is an earlier value.

    indexed: tensor name → the axis its first dimension runs over. Its row ``r``
    becomes the earlier row ``{axis}_rows[r]`` when that is ≥ 0; new users or items keep their fresh rows, and so
    do rows past the index space (a padding row). Any other tensor is copied whole and must have the same shape
    in both networks (raises otherwise: the two fits then had different configs).
    """
    out: dict[str, np.ndarray] = {}
    for name, initial in fresh.items():
        if name not in warm.state:
            raise ValueError(f"warm start: the earlier weights have no {name!r}; was it fitted with another config?")
        earlier = np.asarray(warm.state[name])
        axis = indexed.get(name)
        if axis is None:
            if earlier.shape != initial.shape:
                raise ValueError(
                    f"warm start: {name!r} has shape {earlier.shape} in the earlier fit and {initial.shape} now; "
                    "warm starts need the same architecture (same config apart from the epochs)"
                )
            out[name] = earlier.copy()
            continue
        rows = warm.user_rows if axis == "user" else warm.item_rows
        if initial.shape[1:] != earlier.shape[1:] or initial.shape[0] < len(rows):
            raise ValueError(
                f"warm start: {name!r} has shape {earlier.shape} in the earlier fit and {initial.shape} now, "
                f"for {len(rows)} {axis}s"
            )
        if len(rows) and rows.max(initial=-1) >= earlier.shape[0]:
            raise ValueError(f"warm start: {axis} rows point past the {earlier.shape[0]} rows of {name!r}")
        merged = initial.copy()
        new_rows = np.flatnonzero(rows >= 0)
        merged[new_rows] = earlier[rows[new_rows]]
        out[name] = merged
    return out
