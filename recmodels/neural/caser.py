"""Caser: convolutional sequence embedding (Tang & Wang, WSDM 2018).

The embeddings of a user's last ``L`` items form an ``L × d`` "image". Horizontal filters of every height
``h = 1 … L`` slide over it (union-level patterns of ``h`` consecutive items, max-pooled over positions);
vertical filters take weighted sums of the ``L`` rows (point-level patterns). Their concatenation goes through
a fully connected layer to ``z`` (size ``d``), which is joined with the user's own embedding ``P_u``; the
next-item score of item ``j`` is ``[z; P_u] · W_j + b_j``.

Training computes this at *every* position of a user's history in one pass, instead of cutting one window per
target: a horizontal filter of height ``h`` over the window ending at ``t`` is a 1-D convolution along the
sequence followed by a causal max-pool of width ``L - h + 1``, and the vertical filters are a causal weighted
sum over the last ``L`` positions. Positions before the start of a history are zeros (the paper's padding). A
user's recommendations come from the window of their ``L`` newest training events plus their user embedding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recmodels.neural.sequences import SequenceData, segment_batches
from recmodels.neural.training import (
    LOSSES,
    Batch,
    NeuralConfig,
    NeuralRecommender,
    SeededDropout,
    check_dropout,
    next_item_loss,
)
from recmodels.neural.warm_start import Axis


@dataclass(frozen=True)
class CaserConfig(NeuralConfig):
    """Hyperparameters of :class:`Caser` (training fields: :class:`NeuralConfig`).

    embedding_dim: ``d``, the size of item and user embeddings (and of ``z``).
    window: ``L``, how many of the newest items the convolutions look at.
    horizontal_filters: ``n_h``, horizontal filters per height ``1 … L``.
    vertical_filters: ``n_v``, vertical filters.
    dropout: dropout on the concatenated convolution outputs (the paper's 0.5).
    segment_len: training reads histories in segments of at most this many targets (each with ``L - 1``
        warm-up events before it), purely to bound batch memory; every target is used once per epoch.
    loss: "ce" (softmax cross-entropy) or "bpr_max".
    negatives: ``None`` scores the whole catalogue in the loss; an integer adds that many uniformly sampled
        items to the in-batch negatives.
    horizon: ``T``, each position is trained to rank the next ``T`` items (the paper's "skip" targets; the
        loss averages over them).
    """

    embedding_dim: int = 50
    window: int = 5
    horizontal_filters: int = 16
    vertical_filters: int = 4
    dropout: float = 0.5
    segment_len: int = 20
    loss: str = "ce"
    negatives: int | None = None
    horizon: int = 1
    max_epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 5e-3
    # 2 since 2026-12-05: the same best epoch and validation NDCG@10 as 3 for seeds 42 / 1 / 2 (0.2030 / 0.1795 /
    # 0.2001), one epoch less to evaluate (`python -m bench.tuning --model caser --grid '{"patience": [3, 2]}'
    # --seed N`; docs/benchmarks/neural.md). The slow start that needed 3 lasts one epoch since batches of 64.
    patience: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("embedding_dim", "window", "segment_len", "horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.horizontal_filters < 0 or self.vertical_filters < 0:
            raise ValueError("horizontal_filters and vertical_filters must be ≥ 0")
        if self.horizontal_filters + self.vertical_filters == 0:
            raise ValueError("Caser needs at least one filter: set horizontal_filters or vertical_filters > 0")
        check_dropout(self.dropout)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.negatives is not None and self.negatives < 0:
            raise ValueError(f"negatives must be ≥ 0 or None (full catalogue), got {self.negatives}")


class CaserNet(nn.Module):
    """Caser's convolutions evaluated at every position of right-padded sequences."""

    def __init__(self, n_users: int, n_items: int, config: CaserConfig) -> None:
        super().__init__()
        d, window = config.embedding_dim, config.window
        self.pad, self.window = n_items, window
        self.item_embed = nn.Embedding(n_items + 1, d, padding_idx=n_items)
        self.user_embed = nn.Embedding(n_users, d)
        self.vertical = nn.Conv2d(1, config.vertical_filters, (window, 1)) if config.vertical_filters else None
        self.horizontal = nn.ModuleList(
            nn.Conv1d(d, config.horizontal_filters, height) for height in range(1, window + 1)
        )
        if config.horizontal_filters == 0:
            self.horizontal = nn.ModuleList()
        features = config.vertical_filters * d + config.horizontal_filters * window
        self.fc = nn.Linear(features, d)
        self.drop = SeededDropout(config.dropout)
        self.out = nn.Embedding(n_items, 2 * d)
        self.out_bias = nn.Parameter(torch.zeros(n_items))
        for table in (self.item_embed, self.user_embed, self.out):
            nn.init.normal_(table.weight, std=0.1)
        with torch.no_grad():
            self.item_embed.weight[n_items].zero_()

    def forward(self, users: torch.Tensor, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``(B, W, 2d)`` representations ``[z_t; P_u]`` after each position of ``items`` (B, W).

        Positions ≥ ``lengths`` are masked to zero before the convolutions; all windows are causal (they only
        reach back), so outputs at real positions never depend on the padding.
        """
        batch, width = items.shape
        mask = torch.arange(width, device=items.device)[None, :] < lengths[:, None]
        emb = self.item_embed(items.masked_fill(~mask, self.pad)) * mask[..., None]  # (B, W, d)
        padded = F.pad(emb, (0, 0, self.window - 1, 0))  # zeros before the history starts
        parts = []
        if self.vertical is not None:
            # windows[b, t, :, k] = emb at t - L + 1 + k; the (L × 1) Conv2d is a weighted sum of rows.
            windows = padded.unfold(1, self.window, 1)  # (B, W, d, L)
            weight = self.vertical.weight[:, 0, :, 0]  # (n_v, L)
            vertical = torch.einsum("bwdl,fl->bwfd", windows, weight) + self.vertical.bias[None, None, :, None]
            parts.append(vertical.reshape(batch, width, -1))
        channels = padded.transpose(1, 2)  # (B, d, W + L - 1)
        for height, conv in enumerate(self.horizontal, start=1):
            # Output k covers padded positions k … k + h - 1; the window ending at t holds outputs
            # t … t + L - h.
            pooled = F.max_pool1d(F.relu(conv(channels)), self.window - height + 1, stride=1)  # (B, n_h, W)
            parts.append(pooled.transpose(1, 2))
        z = F.relu(self.fc(self.drop(torch.cat(parts, dim=2))))
        user = self.user_embed(users)[:, None, :].expand(batch, width, -1)
        return torch.cat([z, user], dim=2)

    def last_state(self, users: torch.Tensor, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``[z; P_u]`` after each row's last real event, ``(B, 2d)``; every length must be ≥ 1."""
        states = self.forward(users, items, lengths)
        return states[torch.arange(len(lengths), device=items.device), lengths - 1]


class Caser(NeuralRecommender):
    """Next-items model from convolutions over a user's newest ``L`` items plus a user embedding."""

    name = "caser"
    training_cost = 35.6
    family = "neural"
    config_class = CaserConfig
    config: CaserConfig
    net_: CaserNet
    # warm_start_epochs stays None: warm-started refits scored below fresh ones (docs/benchmarks/neural.md).
    indexed_weights: ClassVar[Mapping[str, Axis]] = {
        "item_embed.weight": "item",
        "user_embed.weight": "user",
        "out.weight": "item",
        "out_bias": "item",
    }

    def _build_net(self) -> CaserNet:
        return CaserNet(self.n_users_, self.n_items_, self.config)

    def _history_window(self) -> int | None:
        return self.config.window

    def _epoch_batches(self, train: SequenceData, rng: np.random.Generator) -> Iterable[Batch]:
        segments = train.segments(self.config.segment_len, self.config.window - 1)
        return segment_batches(train, segments, self.config.batch_size, rng, self.config.horizon)

    def _loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        users, items, lengths, targets = batch
        states = self.net_(users, items, lengths)
        scored = targets[..., 0] >= 0
        return next_item_loss(
            states[scored],
            targets[scored],
            self.net_.out.weight,
            self.net_.out_bias,
            self.config.loss,
            self.config.negatives,
            self.generator_,
        )

    def _history_scores(self, users: np.ndarray, history: SequenceData) -> torch.Tensor:
        items, lengths = history.last(users, self.config.window)
        device = self.device_
        state = self.net_.last_state(
            torch.from_numpy(users).to(device),
            torch.from_numpy(items).to(device),
            torch.from_numpy(lengths).to(device),
        )
        return state @ self.net_.out.weight.T + self.net_.out_bias
