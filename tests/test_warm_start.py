"""Warm-started fits of the deep models (recmodels.neural.warm_start) and the pipeline's use of them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from recforge.ids import IdIndex
from recforge.pipeline import EvaluatedWeights
from recmodels.base import RunSettings
from recmodels.data import Interactions
from recmodels.neural import Caser, CaserConfig, GRU4Rec, GRU4RecConfig, NeuMF, NeuMFConfig, NeuralRecommender
from recmodels.neural.warm_start import WarmStart, warm_started_state


def test_rows_are_matched_and_the_rest_copied_by_hand() -> None:
    fresh = {"emb": np.full((4, 2), -1.0), "bias": np.zeros(3), "dense": np.zeros((2, 2))}
    earlier = {"emb": np.arange(8.0).reshape(4, 2), "bias": np.array([10.0, 20.0]), "dense": np.ones((2, 2))}
    # New item 0 was item 1 before, item 1 is new, item 2 was item 0; "emb" has one more (padding) row.
    warm = WarmStart(earlier, user_rows=np.array([0]), item_rows=np.array([1, -1, 0]))
    out = warm_started_state(fresh, warm, {"emb": "item", "bias": "item"})
    np.testing.assert_array_equal(out["emb"], [[2.0, 3.0], [-1.0, -1.0], [0.0, 1.0], [-1.0, -1.0]])
    np.testing.assert_array_equal(out["bias"], [20.0, 0.0, 10.0])
    np.testing.assert_array_equal(out["dense"], np.ones((2, 2)))
    assert warm.matched == {"user": 1, "item": 2}
    assert fresh["emb"][0, 0] == -1.0  # inputs untouched


def test_mismatched_architectures_are_refused() -> None:
    warm = WarmStart({"dense": np.zeros((3, 2))}, np.array([0]), np.array([0]))
    with pytest.raises(ValueError, match="'dense' has shape"):
        warm_started_state({"dense": np.zeros((2, 2))}, warm, {})
    with pytest.raises(ValueError, match="no 'other'"):
        warm_started_state({"other": np.zeros(1)}, warm, {})
    with pytest.raises(ValueError, match="point past"):
        warm_started_state(
            {"dense": np.zeros((2, 2))},
            WarmStart({"dense": np.zeros((1, 2))}, np.array([0]), np.array([0, 1])),
            {"dense": "item"},
        )
    with pytest.raises(ValueError, match="integer"):
        WarmStart({}, np.array([0.5]), np.array([0]))


def _walks(n_users: int, n_items: int, seed: int) -> Interactions:
    rng = np.random.default_rng(seed)
    length = 6
    user = np.repeat(np.arange(n_users), length)
    item = (rng.integers(0, n_items, n_users)[user] + np.tile(np.arange(length), n_users)) % n_items
    return Interactions.from_arrays(
        user, item, timestamp=np.tile(np.arange(length), n_users), n_users=n_users, n_items=n_items
    )


TINY = {
    "gru4rec": (GRU4Rec, GRU4RecConfig(embedding_dim=8, hidden_size=8, max_len=6, max_epochs=4, batch_size=16)),
    "caser": (Caser, CaserConfig(embedding_dim=8, window=2, horizontal_filters=2, vertical_filters=1, max_epochs=4)),
    "neumf": (NeuMF, NeuMFConfig(factors=4, mlp_layers=(8, 4), max_epochs=4, batch_size=32)),
}


@pytest.mark.parametrize("name", list(TINY))
def test_a_warm_fit_starts_from_the_matched_rows_of_the_earlier_network(name: str) -> None:
    cls, config = TINY[name]
    earlier = cls(dataclasses.replace(config, validation_fraction=0.0)).fit(_walks(20, 12, 0), RunSettings(seed=1))
    # The new data: 25 users and 15 items; user u was user u - 5 before (0–4 are new), item i was item i - 3.
    user_rows = np.arange(25) - 5
    item_rows = np.arange(15) - 3
    user_rows[user_rows < 0] = item_rows[item_rows < 0] = -1
    warm = WarmStart(earlier.warm_state(), user_rows, item_rows)
    # A learning rate of ~0 keeps the starting weights: what the fit began with is what it ends with.
    still = dataclasses.replace(
        config, validation_fraction=0.0, learning_rate=1e-12, weight_decay=0.0, warm_start_epochs=2
    )
    model = cls(still).fit(_walks(25, 15, 1), RunSettings(seed=2), warm_start=warm)
    fresh = cls(still).fit(_walks(25, 15, 1), RunSettings(seed=2))
    assert model.training_log_.epochs == 2 and fresh.training_log_.epochs == config.max_epochs
    before, after, initial = earlier.warm_state(), model.warm_state(), fresh.warm_state()
    assert set(cls.indexed_weights) <= set(after), "indexed_weights must name weights of the network"
    for tensor, value in after.items():
        axis = cls.indexed_weights.get(tensor)
        if axis is None:
            np.testing.assert_allclose(value, before[tensor], atol=1e-6, err_msg=tensor)
            continue
        rows = user_rows if axis == "user" else item_rows
        old = np.flatnonzero(rows >= 0)
        np.testing.assert_allclose(value[old], before[tensor][rows[old]], atol=1e-6, err_msg=tensor)
        new = np.setdiff1d(np.arange(len(value)), old)  # new users or items, and a padding row
        np.testing.assert_allclose(value[new], initial[tensor][new], atol=1e-6, err_msg=tensor)


def test_a_warm_start_for_other_data_is_refused() -> None:
    cls, config = TINY["gru4rec"]
    earlier = cls(config).fit(_walks(20, 12, 0), RunSettings(seed=1))
    warm = WarmStart(earlier.warm_state(), np.arange(20), np.arange(11))
    with pytest.raises(ValueError, match="matches 20 users and 11 items, the data has 20 and 12"):
        cls(config).fit(_walks(20, 12, 0), warm_start=warm)


def test_the_pipeline_matches_rows_by_id() -> None:
    before = EvaluatedWeights({}, pd.Index(["u1", "u2"]), pd.Index(["a", "b", "c"]))
    index = IdIndex(users=pd.Index(["u0", "u2"]), items=pd.Index(["c", "a", "z", "b"]))
    warm = before.matched_to(index)
    np.testing.assert_array_equal(warm.user_rows, [-1, 1])
    np.testing.assert_array_equal(warm.item_rows, [2, 0, -1, 1])


def test_warm_start_epochs_must_be_positive() -> None:
    with pytest.raises(ValueError, match="warm_start_epochs"):
        GRU4RecConfig(warm_start_epochs=0)


def test_models_whose_refit_starts_warm() -> None:
    # Chosen on the validation split (docs/benchmarks/neural.md): GRU4Rec and NeuMF warm, Caser from scratch.
    assert GRU4RecConfig().warm_start_epochs == 3 and NeuMFConfig().warm_start_epochs == 3
    assert CaserConfig().warm_start_epochs is None
    assert all(issubclass(cls, NeuralRecommender) for cls, _ in TINY.values())
    assert torch.get_default_dtype() == torch.float32
