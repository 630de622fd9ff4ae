"""GRU4Rec: a recurrent next-item model over each user's time-ordered history (Hidasi et al. 2016, 2018).

Items are embedded, a GRU reads the user's sequence, and the hidden state after each event scores every item
as the next one (dot product with an output item embedding plus an item bias). Training takes a loss at every
step of every sequence, each user's history once per epoch (cut into segments of ``max_len`` targets with
warm-up context before each), with full-catalogue or sampled softmax cross-entropy or the BPR-max loss of the
2018 paper over in-batch plus sampled negatives. A user's recommendations come from the state after their
newest ``max_len`` training events.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from recmodels.neural.sequences import SequenceData, segment_batches
from recmodels.neural.training import (
    LOSSES,
    WEIGHTS_PREFIX,
    Batch,
    NeuralConfig,
    NeuralRecommender,
    SeededDropout,
    check_dropout,
    next_item_loss,
)
from recmodels.neural.warm_start import Axis


@dataclass(frozen=True)
class GRU4RecConfig(NeuralConfig):
    """Hyperparameters of :class:`GRU4Rec` (training fields: :class:`NeuralConfig`).

    embedding_dim: size of the input item embeddings.
    hidden_size: GRU units per layer (also the size of the output item embeddings).
    layers: stacked GRU layers; ``dropout`` also applies between them (with the model's own generator).
    dropout: dropout on the embedded inputs and on the GRU outputs.
    max_len: the GRU reads at most this many of a user's newest events when scoring; in training, each
        segment has at most ``max_len`` targets preceded by up to ``max_len`` warm-up events (``None``: whole
        histories).
    loss: "ce" (softmax cross-entropy) or "bpr_max".
    negatives: ``None`` scores the whole catalogue in the loss; an integer adds that many uniformly sampled
        items to the in-batch negatives (for catalogues too large for a full softmax).
    bpr_reg: weight of BPR-max's score regulariser (only for ``loss="bpr_max"``).
    horizon: each state is trained to rank the next ``horizon`` items (the loss averages over them); 1 is
        classic next-item prediction.
    """

    embedding_dim: int = 64
    hidden_size: int = 128
    layers: int = 1
    dropout: float = 0.5
    max_len: int | None = 20
    loss: str = "ce"
    negatives: int | None = None
    bpr_reg: float = 1.0
    horizon: int = 10
    max_epochs: int = 15
    batch_size: int = 256
    learning_rate: float = 1e-2
    patience: int = 2
    # Chosen with `python -m bench.warm_start` on the validation split (three seeds): 3 warm epochs beat the fresh
    # refit for each seed.
    warm_start_epochs: int | None = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("embedding_dim", "hidden_size", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        check_dropout(self.dropout)
        if self.bpr_reg < 0:  # a negative weight rewards ever larger negative scores: the loss has no floor
            raise ValueError(f"bpr_reg must be ≥ 0, got {self.bpr_reg}")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"max_len must be ≥ 1 or None, got {self.max_len}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be ≥ 1, got {self.horizon}")
        if self.negatives is not None and self.negatives < 0:
            raise ValueError(f"negatives must be ≥ 0 or None (full catalogue), got {self.negatives}")


class GRU4RecNet(nn.Module):
    """Item embedding → GRU → output item embedding; ``forward`` gives the hidden state after every event."""

    def __init__(self, n_items: int, config: GRU4RecConfig) -> None:
        super().__init__()
        self.pad = n_items
        self.embed = nn.Embedding(n_items + 1, config.embedding_dim, padding_idx=n_items)
        # One single-layer GRU per layer rather than ``nn.GRU(layers, dropout=…)``: torch's dropout between
        # stacked layers draws from the process-wide RNG, which fits running side by side in threads share.
        self.gru = nn.GRU(config.embedding_dim, config.hidden_size, batch_first=True)
        self.upper = nn.ModuleList(
            nn.GRU(config.hidden_size, config.hidden_size, batch_first=True) for _ in range(config.layers - 1)
        )
        self.drop = SeededDropout(config.dropout)
        self.out = nn.Embedding(n_items, config.hidden_size)
        self.out_bias = nn.Parameter(torch.zeros(n_items))
        nn.init.normal_(self.embed.weight, std=0.1)
        nn.init.normal_(self.out.weight, std=0.1)
        with torch.no_grad():
            self.embed.weight[n_items].zero_()

    def forward(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``(B, W, hidden)`` states for right-padded ``items`` (B, W); positions ≥ ``lengths`` are masked.

        Padded positions are zeroed and lie after the real ones: a recurrent (causal) state never sees them.
        """
        mask = torch.arange(items.shape[1], device=items.device)[None, :] < lengths[:, None]
        x = self.drop(self.embed(items.masked_fill(~mask, self.pad)))
        states, _ = self.gru(x)
        for layer in self.upper:
            states, _ = layer(self.drop(states))
        return self.drop(states) * mask[..., None]

    def last_state(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The state after each row's last real event, ``(B, hidden)``; every length must be ≥ 1."""
        states = self.forward(items, lengths)
        return states[torch.arange(len(lengths), device=items.device), lengths - 1]


class GRU4Rec(NeuralRecommender):
    """Session/sequence-based recommendations from a GRU over each user's time-ordered history."""

    name = "gru4rec"
    training_cost = 33.0
    family = "neural"
    config_class = GRU4RecConfig
    config: GRU4RecConfig
    net_: GRU4RecNet
    indexed_weights: ClassVar[Mapping[str, Axis]] = {"embed.weight": "item", "out.weight": "item", "out_bias": "item"}

    def _build_net(self) -> GRU4RecNet:
        return GRU4RecNet(self.n_items_, self.config)

    def _history_window(self) -> int | None:
        return self.config.max_len

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        super()._set_state(_stacked_gru_names(state))

    def _epoch_batches(self, train: SequenceData, rng: np.random.Generator) -> Iterable[Batch]:
        context = 0 if self.config.max_len is None else self.config.max_len
        segments = train.segments(self.config.max_len, context)
        return segment_batches(train, segments, self.config.batch_size, rng, self.config.horizon)

    def _loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        _, items, lengths, targets = batch
        states = self.net_(items, lengths)
        scored = targets[..., 0] >= 0
        return next_item_loss(
            states[scored],
            targets[scored],
            self.net_.out.weight,
            self.net_.out_bias,
            self.config.loss,
            self.config.negatives,
            self.generator_,
            self.config.bpr_reg,
        )

    def _history_scores(self, users: np.ndarray, history: SequenceData) -> torch.Tensor:
        items, lengths = history.last(users, self.config.max_len)
        device = self.device_
        state = self.net_.last_state(torch.from_numpy(items).to(device), torch.from_numpy(lengths).to(device))
        return state @ self.net_.out.weight.T + self.net_.out_bias


def _stacked_gru_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weights saved before the layers became separate GRUs (``gru.weight_ih_l1`` …) under today's names
    (``upper.0.weight_ih_l0`` …), so that older multi-layer files still load."""
    old_name = re.compile(rf"^{re.escape(WEIGHTS_PREFIX)}gru\.(\w+)_l(\d+)$")
    renamed = {}
    for name, value in state.items():
        match = old_name.match(name)
        if match and int(match[2]) > 0:
            name = f"{WEIGHTS_PREFIX}upper.{int(match[2]) - 1}.{match[1]}_l0"
        renamed[name] = value
    return renamed
