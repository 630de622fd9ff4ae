"""Bayesian Personalized Ranking (Rendle, Freudenthaler, Gantner & Schmidt-Thieme 2009) with matrix factorization.

For a user ``u``, an item ``i`` they interacted with and an item ``j`` sampled uniformly from the rest, BPR
maximises ``ln σ(x̂_ui − x̂_uj)`` with ``x̂_ui = p_u·q_i + b_i``, minus an L2 penalty on the factors and biases
involved. Training runs over shuffled mini-batches of observed pairs, each with one uniformly sampled negative per
pair (resampled when it hits one of the user's own items), all vectorized in torch. Gradients are sparse (only the
rows of a batch move), so one step costs ``O(batch·f)`` whatever the catalogue size. All randomness comes from one
local ``torch.Generator`` seeded from ``RunSettings.seed``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from recmodels.base import ModelConfig, Recommender, RunSettings
from recmodels.data import Interactions
from recmodels.torch_utils import dense_product, resolve_device, seeded_generator, torch_threads

__all__ = [
    "BPR",
    "BPRConfig",
    "PositiveSet",
    "TripleGradients",
    "sample_negatives",
    "sgd_triple_step",
    "triple_gradients",
]

# A sampled negative that is one of the user's items is redrawn until it is not, at most this many times: a user
# owning a fraction d of the catalogue keeps a false negative with probability d^(1 + retries) (3e-13 at d = 3/4);
# a user who owns every item has no negative at all and keeps the last draw.
_NEGATIVE_RETRIES = 100
# Observed pairs are looked up in a table of one byte per user × item cell up to this many cells (≤ 64 MB) ...
_BYTE_TABLE_CELLS = 1 << 26
# ... then in a table of one bit per cell up to this many (≤ 64 MB), then by binary search in the sorted pairs
# behind a one-hash Bloom filter of at least this many bits per pair (rounded up to a power of two: 4–8 bytes
# per pair, about 1.5–3 % of absent pairs let through to the search).
_BIT_TABLE_CELLS = 1 << 29
_FILTER_BITS_PER_KEY = 32
# Steps on (batch × factors) arrays of at least this many values use the intra-op threads RunSettings.threads
# names; smaller ones, and fits that name none, run on one thread. On ML-100K (2 cores, idle, 30 epochs) two
# threads lost at 4,096 × 64 values (1.03 vs 0.36 s) and at 16,384 × 64 (0.48–0.50 vs 0.41–0.43 s) and won at
# 65,536 × 64 (0.60–0.61 vs 0.69–0.85 s).
_THREADED_STEP_VALUES = 1 << 22
# Fibonacci hashing: multiply by 2^64/φ (as a wrapped int64) and keep the top bits.
_FIBONACCI = 0x9E3779B97F4A7C15 - (1 << 64)


@dataclass(frozen=True)
class BPRConfig(ModelConfig):
    """Hyperparameters of :class:`BPR`; defaults chosen on the validation slice (docs/benchmarks/als_bpr.md).

    factors: latent dimensions per user and item.
    epochs: passes over the observed pairs (each pair once per epoch, in a fresh random order).
    batch_size: (user, positive, negative) triples per gradient step.
    learning_rate: step size of the optimizer.
    optimizer: "sgd" (plain SGD on the summed batch gradient, as in Rendle et al. and implicit) or "adam"
        (lazy Adam: per-coordinate step sizes, moments updated only for the rows in a batch).
    regularization: L2 weight on the user and item factors of each triple.
    bias_regularization: L2 weight on the item biases of each triple.
    item_bias: learn an item bias ``b_i`` (a popularity term); without it ``x̂_ui = p_u·q_i``.
    init_scale: initial factors are normal with this standard deviation; biases start at 0.
    final_learning_rate: the learning rate of the last epoch, reached linearly from ``learning_rate`` epoch by
        epoch; None keeps it constant.
    """

    factors: int = 64
    epochs: int = 60
    batch_size: int = 4096
    learning_rate: float = 0.2
    optimizer: str = "sgd"
    regularization: float = 0.005
    bias_regularization: float = 0.0
    item_bias: bool = True
    init_scale: float = 0.1
    final_learning_rate: float | None = 0.0

    def __post_init__(self) -> None:
        if self.factors < 1:
            raise ValueError(f"factors must be ≥ 1, got {self.factors}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be ≥ 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.regularization < 0 or self.bias_regularization < 0:
            raise ValueError(
                f"regularization weights must be ≥ 0, got {self.regularization} and {self.bias_regularization}"
            )
        if self.init_scale <= 0:
            raise ValueError(f"init_scale must be > 0, got {self.init_scale}")
        if self.final_learning_rate is not None and self.final_learning_rate < 0:
            raise ValueError(f"final_learning_rate must be ≥ 0 or None, got {self.final_learning_rate}")

    def epoch_learning_rate(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (from 0): linear from ``learning_rate`` to ``final_learning_rate``."""
        if self.final_learning_rate is None or self.epochs == 1:
            return self.learning_rate
        return self.learning_rate + (self.final_learning_rate - self.learning_rate) * epoch / (self.epochs - 1)


class BPR(Recommender):
    """BPR-MF: ``score(u, i) = p_u · q_i + b_i``, trained on sampled (user, positive, negative) triples."""

    name = "bpr"
    training_cost = 5.4
    family = "matrix_factorization"
    threaded_scoring = True
    config_class = BPRConfig
    config: BPRConfig

    def _fit(self, data: Interactions, settings: RunSettings) -> None:
        device = resolve_device(settings.device)
        if data.n_items < 2:
            raise ValueError(f"bpr needs at least 2 items to sample negatives; the data has {data.n_items}")
        # A step works on a few (batch × f) arrays: too small for intra-op threads to pay for waking each other.
        # Two threads made a fit on ML-100K 2.9× slower than one at the default batch (1.03 vs 0.36 s for 30
        # epochs, idle 2-core machine) and 4–6× on a busy one, so such steps run on one thread whatever
        # RunSettings.threads says, and so does every fit that names no thread count.
        big_steps = self.config.batch_size * self.config.factors >= _THREADED_STEP_VALUES
        threaded = device.type != "cpu" or (big_steps and settings.threads is not None)
        # The fit's count, put back afterwards as every model does (torch's setting is process-wide).
        with torch_threads(settings.threads), torch_threads(None if threaded else 1):
            self._train(data, settings, device)

    def _train(self, data: Interactions, settings: RunSettings, device: torch.device) -> None:
        cfg = self.config
        gen = seeded_generator(settings.seed, device)
        binary = data.binary.tocoo()
        users = torch.from_numpy(binary.row.astype(np.int64)).to(device)
        items = torch.from_numpy(binary.col.astype(np.int64)).to(device)
        positives = PositiveSet(users, items, data.n_users, data.n_items)

        user_f = torch.randn(data.n_users, cfg.factors, generator=gen, device=device) * cfg.init_scale
        item_f = torch.randn(data.n_items, cfg.factors, generator=gen, device=device) * cfg.init_scale
        bias = torch.zeros(data.n_items, 1, device=device)
        # Plain SGD runs fused (sgd_triple_step); Adam keeps two moments per parameter.
        adam = None
        if cfg.optimizer == "adam":
            adam = _SparseAdam(user_f, cfg.learning_rate), _SparseAdam(item_f, cfg.learning_rate)
        bias_adam = _SparseAdam(bias, cfg.learning_rate) if adam is not None and cfg.item_bias else None
        n_pairs = users.shape[0]
        rows = functools.partial(torch.index_select, dim=0)  # ~4× faster than ``t[idx]`` on CPU
        for epoch in range(cfg.epochs):
            lr = cfg.epoch_learning_rate(epoch)
            for optimizer in (*(adam or ()), *([bias_adam] if bias_adam is not None else [])):
                optimizer.lr = lr
            # The epoch's triples in one go (a gather of users and items and one negative sampling over all
            # pairs); the batches are then slices, not a dozen small operations each.
            order = torch.randperm(n_pairs, generator=gen, device=device)
            epoch_users, epoch_items = rows(users, index=order), rows(items, index=order)
            epoch_negatives = sample_negatives(epoch_users, positives, data.n_items, gen)
            for start in range(0, n_pairs, cfg.batch_size):
                end = start + cfg.batch_size
                u, i, j = epoch_users[start:end], epoch_items[start:end], epoch_negatives[start:end]
                ij = torch.cat([i, j])
                if adam is None:
                    sgd_triple_step(
                        user_f,
                        item_f,
                        bias if cfg.item_bias else None,
                        u,
                        ij,
                        lr,
                        cfg.regularization,
                        cfg.bias_regularization,
                    )
                    continue
                qi, qj = rows(item_f, index=ij).split(len(u))
                bi, bj = rows(bias, index=ij).split(len(u)) if bias_adam is not None else (None, None)
                grads = triple_gradients(
                    rows(user_f, index=u), qi, qj, bi, bj, cfg.regularization, cfg.bias_regularization
                )
                adam[0].step(u, grads.user)
                adam[1].step(ij, torch.cat([grads.positive, grads.negative]))
                if bias_adam is not None:
                    assert grads.positive_bias is not None and grads.negative_bias is not None
                    bias_adam.step(ij, torch.cat([grads.positive_bias, grads.negative_bias]))
            # A step too large for the data (summed over a batch, a popular item's is) overflows; unchecked, the fit
            # went on and "succeeded" with NaN factors that rank arbitrarily.
            if not bool(torch.isfinite(item_f).all() and torch.isfinite(user_f).all()):
                raise FloatingPointError(
                    f"bpr diverged in epoch {epoch + 1} of {cfg.epochs}: the factors are no longer finite; lower "
                    f"learning_rate (now {cfg.learning_rate:g}) or batch_size (now {cfg.batch_size})"
                )
            settings.report("bpr", (epoch + 1) / cfg.epochs)
        self.user_factors_ = user_f.cpu().numpy()
        self.item_factors_ = item_f.cpu().numpy()
        self.item_bias_ = bias.cpu().numpy().ravel()

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        scores = dense_product(self.user_factors_[users], self.item_factors_.T)
        scores += self.item_bias_
        return scores

    def _state(self) -> dict[str, np.ndarray]:
        return {"user_factors": self.user_factors_, "item_factors": self.item_factors_, "item_bias": self.item_bias_}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.user_factors_ = state["user_factors"].astype(np.float32, copy=False)
        self.item_factors_ = state["item_factors"].astype(np.float32, copy=False)
        self.item_bias_ = state["item_bias"].astype(np.float32, copy=False)


class TripleGradients(NamedTuple):
    """Gradients of the summed BPR loss of a batch, one row per triple (biases ``None`` without item bias)."""

    user: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor
    positive_bias: torch.Tensor | None
    negative_bias: torch.Tensor | None


def triple_gradients(
    pu: torch.Tensor,
    qi: torch.Tensor,
    qj: torch.Tensor,
    bi: torch.Tensor | None,
    bj: torch.Tensor | None,
    regularization: float,
    bias_regularization: float,
) -> TripleGradients:
    """Gradients of ``Σ −ln σ(x_uij) + λ(‖p_u‖² + ‖q_i‖² + ‖q_j‖²) + λ_b(b_i² + b_j²)`` per triple.

    ``x_uij = p_u·(q_i − q_j) + b_i − b_j``; factors are ``(batch, f)``, biases ``(batch, 1)`` or ``None``.
    Written out by hand because autograd's bookkeeping costs more than the arithmetic at these sizes.
    """
    diff = qi - qj
    x = (pu * diff).sum(1, keepdim=True)
    if bi is not None and bj is not None:
        x = x + bi - bj
    weight = torch.sigmoid(-x)  # −d/dx ln σ(x) = σ(−x)
    reg2 = 2.0 * regularization
    user = reg2 * pu - weight * diff
    pulled = weight * pu
    positive = reg2 * qi - pulled
    negative = reg2 * qj + pulled
    if bi is None or bj is None:
        return TripleGradients(user, positive, negative, None, None)
    bias2 = 2.0 * bias_regularization
    return TripleGradients(user, positive, negative, bias2 * bi - weight, bias2 * bj + weight)


def sgd_triple_step(
    user_f: torch.Tensor,
    item_f: torch.Tensor,
    bias: torch.Tensor | None,
    users: torch.Tensor,
    pairs: torch.Tensor,
    lr: float,
    regularization: float,
    bias_regularization: float,
) -> None:
    """One plain-SGD step on a batch of triples, in place: ``param[row] −= lr · Σ`` :func:`triple_gradients`.

    ``users`` are the batch's users; ``pairs`` holds their positive items, then their negatives. Rows that occur
    several times in a batch add up their steps. The learning rate is folded into the per-triple weight and the
    penalty, so each ``(batch, f)`` array gets a handful of passes instead of a dozen (a step is memory-bound at
    these sizes); the rounding differs from computing the gradients first only in the last bits.
    """
    n = users.shape[0]
    pu = torch.index_select(user_f, 0, users)
    q = torch.index_select(item_f, 0, pairs)  # (2n, f): positives, then negatives
    qi, qj = q[:n], q[n:]
    diff = qi - qj
    x = torch.linalg.vecdot(pu, diff)[:, None]
    if bias is not None:
        b = torch.index_select(bias, 0, pairs)
        x = x + b[:n] - b[n:]
    step = torch.sigmoid(-x).mul_(lr)  # lr · σ(−x): −lr · ∂(−ln σ(x))/∂x
    shrink = -2.0 * lr * regularization
    # Steps −lr·gradient: user −lr (2λ p_u − σ(−x)(q_i − q_j)), positive −lr (2λ q_i − σ(−x) p_u),
    # negative −lr (2λ q_j + σ(−x) p_u).
    user_delta = diff.mul_(step).add_(pu, alpha=shrink)
    item_delta = q.mul_(shrink)
    pulled = pu.mul_(step)
    item_delta[:n] += pulled
    item_delta[n:] -= pulled
    user_f.scatter_add_(0, users[:, None].expand_as(user_delta), user_delta)
    item_f.scatter_add_(0, pairs[:, None].expand_as(item_delta), item_delta)
    if bias is not None:
        bias_delta = b.mul_(-2.0 * lr * bias_regularization)
        bias_delta[:n] += step
        bias_delta[n:] -= step
        bias.scatter_add_(0, pairs[:, None], bias_delta)


class _SparseAdam:
    """Adam whose moments move only for the rows a batch touches ("lazy" Adam, as ``torch.optim.SparseAdam``).

    Gradients of a row that occurs several times in the batch are summed first; bias correction uses the
    global step count.
    """

    def __init__(
        self, param: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        self.param, self.lr, self.betas, self.eps = param, lr, betas, eps
        self.mean = torch.zeros_like(param)
        self.var = torch.zeros_like(param)
        self.steps = 0

    def step(self, rows: torch.Tensor, grads: torch.Tensor) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        unique, inverse = torch.unique(rows, return_inverse=True)
        grad = grads.new_zeros(unique.shape[0], grads.shape[1]).scatter_add_(
            0, inverse[:, None].expand_as(grads), grads
        )
        mean = self.mean[unique].mul_(beta1).add_(grad, alpha=1.0 - beta1)
        var = self.var[unique].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        self.mean[unique] = mean
        self.var[unique] = var
        step_size = self.lr / (1.0 - beta1**self.steps)
        denom = (var / (1.0 - beta2**self.steps)).sqrt_().add_(self.eps)
        self.param[unique] -= step_size * mean / denom  # rows are unique here: a plain indexed update


class PositiveSet:
    """Membership test for observed (user, item) pairs, vectorized over a batch.

    Three lookups, the fastest whose memory stays small: a table of one byte per user × item cell (a gather per
    lookup) up to ``_BYTE_TABLE_CELLS`` cells; one bit per cell up to ``_BIT_TABLE_CELLS`` (a gather, a mask and
    a test: 41 µs against 9 µs for 4,096 pairs, as torch pays per operation, but 8× the catalogue); beyond, a
    binary search of the sorted ``user · n_items + item`` keys, asked only about the pairs that a one-hash Bloom
    filter over the keys lets through (the pair itself if observed, and 1.5–3 % of the rest). The search alone
    costs ~23 dependent cache misses per pair at 7.9M pairs: 0.79 ms for 4,096 pairs, about half of a step there,
    against 0.02 ms for the bit table (2026-12-07, docs/benchmarks/als_bpr.md). On the 900k-event synthetic set
    (20,000 users × 17,177 items, 886,500 pairs) ten epochs took 7.2 / 7.7 s with the bits against 10.9 / 10.8 s
    with the plain search (2026-12-06, alternating, the same factors).
    """

    def __init__(self, users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int) -> None:
        self.n_items = n_items
        keys = users * n_items + items
        self.table: torch.Tensor | None = None
        self.bits: _BitSet | None = None
        self.sorted_keys: torch.Tensor | None = None
        self.filter: _BitSet | None = None
        cells = n_users * n_items
        if cells <= _BYTE_TABLE_CELLS:
            self.table = torch.zeros(cells, dtype=torch.bool, device=users.device)
            self.table[keys] = True
        elif cells <= _BIT_TABLE_CELLS:
            self.bits = _BitSet(cells, keys)
        else:
            self.sorted_keys = torch.unique(keys)  # sorted
            wanted = max(64, _FILTER_BITS_PER_KEY * self.sorted_keys.numel())
            self.filter_shift = 64 - (wanted - 1).bit_length()  # the filter has 2^(64 − shift) bits
            self.filter = _BitSet(1 << (64 - self.filter_shift), self._filter_slots(self.sorted_keys))

    def _filter_slots(self, keys: torch.Tensor) -> torch.Tensor:
        # The arithmetic shift copies the sign bit down; the mask keeps the top (64 − shift) bits only.
        mask = (1 << (64 - self.filter_shift)) - 1
        return (keys * _FIBONACCI).bitwise_right_shift_(self.filter_shift).bitwise_and_(mask)

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Boolean tensor: is ``(users[k], items[k])`` an observed pair?"""
        keys = users * self.n_items + items
        if self.table is not None:
            return self.table.index_select(0, keys)  # several times faster than ``table[keys]`` on CPU
        if self.bits is not None:
            return self.bits.contains(keys)
        assert self.sorted_keys is not None and self.filter is not None
        found = self.filter.contains(self._filter_slots(keys))
        maybe = torch.nonzero(found).squeeze(1)
        if maybe.numel() == 0:
            return found
        asked = keys.index_select(0, maybe)
        pos = torch.searchsorted(self.sorted_keys, asked).clamp_max_(self.sorted_keys.shape[0] - 1)
        found[maybe] = self.sorted_keys.index_select(0, pos) == asked
        return found


class _BitSet:
    """A set of integers in ``[0, size)`` as one bit each: a gather, a mask gather and an ``and`` per test."""

    def __init__(self, size: int, members: torch.Tensor) -> None:
        members = torch.unique(members)  # distinct members set distinct bits: adding them up within a byte or-s them
        self.masks = _BIT_MASKS.to(members.device)  # once: a copy per lookup would sync a GPU every step
        self.bytes = torch.zeros((size + 7) // 8, dtype=torch.uint8, device=members.device)
        self.bytes.index_put_((members >> 3,), self.masks[members & 7], accumulate=True)

    def contains(self, values: torch.Tensor) -> torch.Tensor:
        masks = self.masks.index_select(0, values & 7)
        return self.bytes.index_select(0, values >> 3).bitwise_and_(masks).bool()


#: Bit ``b`` of a byte, for ``b`` in 0..7.
_BIT_MASKS = torch.tensor([1 << b for b in range(8)], dtype=torch.uint8)


def sample_negatives(
    users: torch.Tensor, positives: PositiveSet, n_items: int, generator: torch.Generator
) -> torch.Tensor:
    """One item per user drawn uniformly from ``[0, n_items)``, redrawn while it is one of the user's items."""
    device = users.device
    negatives = torch.randint(n_items, users.shape, generator=generator, device=device)
    hit = torch.nonzero(positives.contains(users, negatives)).squeeze(1)
    for _ in range(_NEGATIVE_RETRIES):
        if hit.numel() == 0:
            break
        # Only the rows that hit a positive draw again (their count decides how much of the stream is used), and
        # only they are checked again: a few percent of the batch after the first draw.
        redrawn = torch.randint(n_items, hit.shape, generator=generator, device=device)
        negatives[hit] = redrawn
        hit = hit[positives.contains(users[hit], redrawn)]
    return negatives
