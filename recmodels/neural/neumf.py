"""NeuMF: neural collaborative filtering (He et al., WWW 2017).

Two towers over separate user and item embeddings: GMF, the element-wise product ``p_u ⊙ q_i`` (a generalised
matrix factorisation), and an MLP over the concatenation ``[p'_u; q'_i]``. Their outputs are concatenated and
a final linear layer gives the logit of "user ``u`` interacts with item ``i``". Training uses implicit
feedback: every observed pair is a positive, paired with ``negatives`` items the user has not seen, drawn
uniformly; the loss is pointwise binary cross-entropy (the paper's log loss) or pairwise BPR. Order does not
matter to the model; the validation slice for early stopping is still each user's newest events, matching the
temporal test protocol.

Scoring the whole catalogue uses that the MLP's first layer is linear in the concatenation:
``W [p; q] = W_u p + W_i q``, so both halves are computed once per user and once per item and broadcast-added.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from recmodels.neural.sequences import SequenceData
from recmodels.neural.training import Batch, NeuralConfig, NeuralRecommender, SeededDropout, check_dropout
from recmodels.neural.warm_start import Axis

NEUMF_LOSSES = ("bce", "bpr")


@dataclass(frozen=True)
class NeuMFConfig(NeuralConfig):
    """Hyperparameters of :class:`NeuMF` (training: :class:`NeuralConfig`; ``batch_size`` counts positives).

    factors: size of the GMF embeddings (the paper's "predictive factors").
    mlp_layers: widths of the MLP tower, input first: the input is a user and an item embedding of
        ``mlp_layers[0] // 2`` each, followed by ReLU layers of the remaining widths (the paper's notation).
    dropout: dropout on the MLP's hidden layers.
    negatives: unseen items sampled per positive.
    loss: "bce" (pointwise log loss, each negative a 0 label) or "bpr" (pairwise: positive above negatives).
    recency_half_life: weigh each positive (with its negatives) by ``0.5 ** (age / half_life)``, where age
        counts the user's newer training events, so that user embeddings lean towards recent taste (the
        evaluation holds out each user's *next* events); ``None`` weighs all events equally, as in the paper, and
        so does data without timestamps (no event is newer than another).
    """

    factors: int = 32
    mlp_layers: tuple[int, ...] = (64, 32, 16)
    dropout: float = 0.2
    negatives: int = 8
    loss: str = "bce"
    recency_half_life: float | None = 10.0
    max_epochs: int = 20
    batch_size: int = 512
    learning_rate: float = 4e-3
    weight_decay: float = 0.1
    patience: int = 2
    refit: bool = True
    # `python -m bench.warm_start`, validation split: ≥ the fresh refit's NDCG for each seed, ~half the time.
    warm_start_epochs: int | None = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        # JSON (save/load) turns tuples into lists; store a tuple so configs compare equal and stay hashable.
        object.__setattr__(self, "mlp_layers", tuple(int(w) for w in self.mlp_layers))
        if self.factors < 1:
            raise ValueError(f"factors must be ≥ 1, got {self.factors}")
        if len(self.mlp_layers) < 2 or any(w < 1 for w in self.mlp_layers) or self.mlp_layers[0] % 2:
            raise ValueError(f"mlp_layers must list ≥ 2 positive widths, the first (input) even, got {self.mlp_layers}")
        check_dropout(self.dropout)
        if self.negatives < 1:
            raise ValueError(f"negatives must be ≥ 1, got {self.negatives}")
        if self.recency_half_life is not None and not self.recency_half_life > 0:
            raise ValueError(f"recency_half_life must be > 0 or None, got {self.recency_half_life}")
        if self.loss not in NEUMF_LOSSES:
            raise ValueError(f"loss must be one of {NEUMF_LOSSES}, got {self.loss!r}")


def _rows(table: nn.Embedding, index: torch.Tensor) -> torch.Tensor:
    """``table(index)`` as an ``index_select`` of its rows: the same values and gradient (its backward is an
    ``index_add_``), in half the time on the CPU for a training batch's (512, 9) item indices (0.21 vs 0.42 ms
    forward and backward, 32 columns, one thread)."""
    return table.weight.index_select(0, index.reshape(-1)).view(*index.shape, table.embedding_dim)


class NeuMFNet(nn.Module):
    """GMF and MLP towers fused by one linear layer; ``forward`` gives logits for (user, item) pairs."""

    def __init__(self, n_users: int, n_items: int, config: NeuMFConfig) -> None:
        super().__init__()
        half = config.mlp_layers[0] // 2
        self.gmf_user = nn.Embedding(n_users, config.factors)
        self.gmf_item = nn.Embedding(n_items, config.factors)
        self.mlp_user = nn.Embedding(n_users, half)
        self.mlp_item = nn.Embedding(n_items, half)
        # The first MLP layer is applied in two halves (user part, item part), see score_all.
        self.first = nn.Linear(2 * half, config.mlp_layers[1])
        rest: list[nn.Module] = []
        for width_in, width_out in zip(config.mlp_layers[1:], config.mlp_layers[2:], strict=False):
            rest += [SeededDropout(config.dropout), nn.Linear(width_in, width_out), nn.ReLU()]
        self.rest = nn.Sequential(*rest)
        self.drop = SeededDropout(config.dropout)
        self.fuse = nn.Linear(config.factors + config.mlp_layers[-1], 1)
        for table in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(table.weight, std=0.01)

    def _first_halves(self) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.mlp_user.embedding_dim
        return self.first.weight[:, :half], self.first.weight[:, half:]

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits for ``users`` (B,) against ``items`` (B,) or (B, K) (each row's own candidates)."""
        if items.dim() == 1:
            return self.forward(users, items[:, None])[:, 0]
        w_user, w_item = self._first_halves()
        hidden_user = self.mlp_user(users) @ w_user.T + self.first.bias  # (B, h)
        hidden = F.relu(hidden_user[:, None, :] + _rows(self.mlp_item, items) @ w_item.T)  # (B, K, h)
        mlp = self.rest(self.drop(hidden))
        gmf = self.gmf_user(users)[:, None, :] * _rows(self.gmf_item, items)
        return self.fuse(torch.cat([gmf, mlp], dim=2))[..., 0]

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Logits of ``users`` (B,) against the whole catalogue, ``(B, n_items)`` (what ``forward`` gives, in eval
        mode, for every item).

        Every user meets the same items, so the item side is computed once, not gathered per pair: the GMF
        tower and its fusion weights collapse to one ``(B, f) @ (f, n_items)`` product, the item half of the
        first MLP layer to one ``(n_items, h)`` product, and no ``(B, n_items, ·)`` concatenation is built. Only
        the rest of the MLP runs per pair, a tile of users at a time small enough to stay in cache.
        """
        if self.training:  # dropout masks per pair: only the general path draws them
            items = torch.arange(self.gmf_item.num_embeddings, device=users.device)
            return self.forward(users, items[None, :].expand(len(users), -1))
        w_user, w_item = self._first_halves()
        factors = self.gmf_user.embedding_dim
        fuse_gmf, fuse_mlp = self.fuse.weight[0, :factors], self.fuse.weight[0, factors:]
        hidden_user = self.mlp_user(users) @ w_user.T + self.first.bias  # (B, h)
        hidden_item = self.mlp_item.weight @ w_item.T  # (n_items, h)
        out = torch.addmm(self.fuse.bias, self.gmf_user(users) * fuse_gmf, self.gmf_item.weight.T)  # GMF part
        tile = max(1, _TILE_VALUES // max(1, hidden_item.numel()))
        for start in range(0, len(users), tile):
            hidden = hidden_user[start : start + tile, None, :] + hidden_item  # (t, n_items, h)
            mlp = self.rest(hidden.relu_())
            out[start : start + tile] += mlp @ fuse_mlp
        return out


# Pair values (users × items × hidden units) per tile of ``score_all``: ~1 MiB of float32, so the per-pair passes
# of the MLP stay in cache instead of streaming a (64, n_items, h) block through memory each.
_TILE_VALUES = 1 << 18


class NeuMF(NeuralRecommender):
    """Neural collaborative filtering (GMF + MLP) on implicit feedback with sampled negatives."""

    name = "neumf"
    training_cost = 17.3
    family = "neural"
    config_class = NeuMFConfig
    config: NeuMFConfig
    net_: NeuMFNet
    needs_order = False
    score_batch = 64
    indexed_weights: ClassVar[Mapping[str, Axis]] = {
        "gmf_user.weight": "user",
        "gmf_item.weight": "item",
        "mlp_user.weight": "user",
        "mlp_item.weight": "item",
    }

    def _build_net(self) -> NeuMFNet:
        return NeuMFNet(self.n_users_, self.n_items_, self.config)

    def _history_window(self) -> int | None:
        return 1  # scoring needs only to know who has a history; the user embedding is the state

    def _epoch_batches(self, train: SequenceData, rng: np.random.Generator) -> Iterable[Batch]:
        users = train.user_of_event()
        items = train.items
        negatives = sample_unseen(train.to_csr(), users, self.config.negatives, rng)
        weights = recency_weights(train, self.config.recency_half_life)
        order = rng.permutation(len(users))
        size = self.config.batch_size
        return [
            (users[rows], items[rows], negatives[rows], weights[rows])
            for rows in (order[s : s + size] for s in range(0, len(order), size))
        ]

    def _loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        users, positives, negatives, weights = batch
        logits = self.net_(users, torch.cat([positives[:, None], negatives], dim=1)).float()  # (B, 1 + K)
        positive, negative = logits[:, :1], logits[:, 1:]
        if self.config.loss == "bpr":
            per_pair = -F.logsigmoid(positive - negative).mean(dim=1)
        else:
            # Pointwise log loss: each positive and each negative is one labelled example, as in the paper.
            labels = torch.zeros_like(logits)
            labels[:, 0] = 1.0
            per_pair = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=1)
        # A short recency_half_life underflows old events' weights to 0: a batch of only those had 0/0 = NaN loss
        # (blamed on the learning rate); now it has loss 0 and teaches nothing, as its weights say.
        return (per_pair * weights).sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)

    def _history_scores(self, users: np.ndarray, history: SequenceData) -> torch.Tensor:
        return self.net_.score_all(torch.from_numpy(users).to(self.device_))


def recency_weights(train: SequenceData, half_life: float | None) -> np.ndarray:
    """Weight of each event of ``train``: ``0.5 ** (newer events of the same user / half_life)`` (float32).

    ``None``, or events without times (``train.ordered`` False: their order is random, so a weight by position
    would keep a seed-chosen ~half_life events per user and cost ~15% NDCG@10 on ML-100K), weighs every event 1.
    The newest event of each user always weighs 1.
    """
    if half_life is None or not train.ordered:
        return np.ones(len(train), dtype=np.float32)
    lengths = train.lengths
    position = np.arange(len(train)) - np.repeat(train.indptr[:-1], lengths)
    newer = np.repeat(lengths, lengths) - 1 - position
    return np.power(0.5, newer / half_life).astype(np.float32)


def sample_unseen(
    seen: sp.csr_matrix, users: np.ndarray, per_row: int, rng: np.random.Generator, rounds: int = 10
) -> np.ndarray:
    """``(len(users), per_row)`` items drawn uniformly among those each user has not seen (CSR ``seen``).

    Draws that hit a seen item are redrawn, vectorised over all rows, for at most ``rounds`` rounds (a user
    who has seen a share ``s`` of the catalogue keeps a seen item with probability ``s ** (rounds + 1)``).
    """
    n_items = seen.shape[1]
    rows = np.repeat(np.arange(seen.shape[0], dtype=np.int64), np.diff(seen.indptr))
    keys = np.sort(rows * n_items + seen.indices.astype(np.int64))
    draws = rng.integers(0, n_items, size=(len(users), per_row))
    if len(keys) == 0:
        return draws
    for _ in range(rounds):
        wanted = users[:, None] * n_items + draws
        clash = keys[np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)] == wanted
        if not clash.any():
            break
        draws[clash] = rng.integers(0, n_items, size=int(clash.sum()))
    return draws
