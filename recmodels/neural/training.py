"""The one training loop of the deep models, plus what they share around it.

- :class:`NeuralConfig`: the training hyperparameters every deep model has (epochs, batch size, AdamW, early
  stopping, clipping); each model's config subclasses it and adds its architecture.
- :func:`torch_run`: the context a fit runs in: device from ``RunSettings.device``, intra-op threads from
  ``RunSettings.threads`` (default 1 on CPU, see :func:`default_threads`; restored afterwards).
- Randomness never comes from torch's process-wide RNG while training: fits run side by side in threads (the
  flow's default task runner) and would interleave their draws. Initial weights are drawn under a lock from a
  freshly seeded, forked global RNG (:meth:`NeuralRecommender._seeded_net`); dropout masks
  (:class:`SeededDropout`) and negative samples come from the model's own generators. So a fit is reproducible
  on CPU whatever runs beside it, and leaves the caller's RNG alone.
- :func:`train`: mini-batches from a model-supplied iterator, AdamW, gradient clipping, bf16 autocast on CUDA
  only, validation NDCG@k after every epoch, early stopping with the best epoch's weights restored, progress
  through ``settings.report``. Returns a :class:`TrainingLog` (epochs, seconds per epoch, loss and validation
  curves).
- :class:`Validation`: NDCG@k of a scoring function on the validation slice (each user's newest training
  events, cut by :meth:`SequenceData.split_tail`), ranking unseen items exactly like the evaluation protocol.
- :func:`next_item_loss`: full or sampled softmax cross-entropy, or BPR-max, for next-item models.
- :func:`module_state` / :func:`load_module_state`: weights as plain numpy arrays (saved without pickle).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar, Self

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from recmodels.base import ModelConfig, Recommender, RunSettings, top_k
from recmodels.data import Interactions
from recmodels.neural.sequences import SequenceData
from recmodels.neural.warm_start import Axis, WarmStart, warm_started_state
from recmodels.torch_utils import resolve_device, seeded_generator, torch_threads

Batch = tuple[np.ndarray, ...]
LOSSES = ("ce", "bpr_max")
#: Logits held at once by :class:`FullCatalogueCrossEntropy` (8 MB in float32): one buffer of this size serves
#: every chunk of rows of a step, whatever the batch and catalogue sizes.
CE_CHUNK_VALUES = 1 << 21


@dataclass(frozen=True)
class NeuralConfig(ModelConfig):
    """Training hyperparameters shared by the deep models (their configs subclass this).

    max_epochs: upper bound on passes over the training data; early stopping usually ends sooner.
    batch_size: training examples per optimiser step (sequence segments for sequence models, positive
        pairs for NeuMF).
    learning_rate: AdamW step size.
    weight_decay: AdamW decoupled weight decay.
    patience: stop after this many epochs without a better validation NDCG, and restore the best epoch's
        weights; ignored when there is no validation slice.
    validation_fraction: share of each user's newest training events held out for early stopping
        (``ceil(fraction × n)``, keeping at least two events for training); 0 trains ``max_epochs`` epochs on
        everything.
    clip_norm: gradients are rescaled to at most this global L2 norm (0 disables clipping).
    refit: after early stopping, train a fresh network on *all* the training events (validation slice
        included) for the best epoch count, instead of keeping the network that never saw the newest events.
        Doubles the cost; worth it for models whose user state is learned (NeuMF's user embeddings) rather
        than read from the history at scoring time.
    warm_start_epochs: epochs of a warm-started fit (``fit(..., warm_start=…)``, :mod:`recmodels.neural.warm_start`):
        the flow's publishing fit then begins from the evaluated network's weights and trains this many epochs
        on every event, instead of the early-stopped epoch count from a fresh initialisation. ``None``: the
        publishing fit starts from scratch.
    """

    max_epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 3
    validation_fraction: float = 0.1
    clip_norm: float = 5.0
    refit: bool = False
    warm_start_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be ≥ 1, got {self.max_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be ≥ 0, got {self.weight_decay}")
        if self.patience < 1:
            raise ValueError(f"patience must be ≥ 1, got {self.patience}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must lie in [0, 1), got {self.validation_fraction}")
        if self.clip_norm < 0:
            raise ValueError(f"clip_norm must be ≥ 0 (0 disables clipping), got {self.clip_norm}")
        if self.warm_start_epochs is not None and self.warm_start_epochs < 1:
            raise ValueError(f"warm_start_epochs must be ≥ 1 or None (no warm start), got {self.warm_start_epochs}")


@dataclass
class TrainingLog:
    """What one fit did: per-epoch curves and the epoch whose weights were kept (1-based; 0 = none ran).

    refit_seconds: time of the final training on all events (``NeuralConfig.refit``), 0 without one.
    """

    best_epoch: int = 0
    refit_seconds: float = 0.0
    seconds_per_epoch: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    validation_ndcg: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.seconds_per_epoch)


def default_threads(settings: RunSettings, device: torch.device) -> int | None:
    """Intra-op threads for a fit: ``settings.threads`` if set, else 1 on the CPU (unchanged on accelerators).

    These networks run many small kernels (a GRU step, a 64-wide MLP); with two threads every kernel ends in a
    thread barrier, and on a busy 2-core machine a descheduled thread stalls each one: measured here, a
    two-epoch GRU4Rec fit took 9 s of CPU with one thread and 57 s (spinning) with two. Pass
    ``RunSettings(threads=n)`` to override on an idle machine with more cores.
    """
    if settings.threads is not None:
        return settings.threads
    return 1 if device.type == "cpu" else None


@contextlib.contextmanager
def torch_run(settings: RunSettings) -> Iterator[torch.device]:
    """Device and threads for one fit; the thread count is restored on exit."""
    device = resolve_device(settings.device)
    with torch_threads(default_threads(settings, device)):
        yield device


# Module initialisation draws from torch's process-wide RNG: builds take turns, each under its own seed.
_GLOBAL_RNG_LOCK = threading.Lock()


#: The largest dropout a config accepts. Masks keep a value with probability round(keep · 65536) / 65536 but scale
#: by 1 / keep: near 1 the two part (0.9999 kept 0.000109 and scaled by 10,000: outputs 9 % too large), and from
#: ~0.999992 nothing was kept at all, so the layers before it never trained while the fit "succeeded".
MAX_DROPOUT = 0.99


def check_dropout(dropout: float) -> None:
    """A deep config's ``dropout``: in ``[0, MAX_DROPOUT]``, else a ValueError naming the field."""
    if not 0.0 <= dropout <= MAX_DROPOUT:
        raise ValueError(f"dropout must lie in [0, {MAX_DROPOUT}], got {dropout}")


class SeededDropout(nn.Module):
    """Dropout whose masks come from a generator of the model's own (``nn.Dropout`` draws from the process-wide
    RNG, which fits running in parallel threads would share). ``generator`` is set after the net is built."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        # Each value is kept when a uniform 16-bit draw falls below round(keep · 65536): a Bernoulli(keep) mask
        # with keep rounded to a multiple of 1/65536 (exact for 0.5 and 0.75; 0.9 becomes 0.899994). Four draws
        # come from each 64-bit word of the generator, faster on the CPU than one float per value with ``rand``
        # (0.3 vs 2.5 ms for Caser's 64 × 24 × 280 features), and the mask carries the 1 / keep scale, so the
        # forward and backward passes multiply once.
        bits = _uniform_int16(x.numel(), self.generator, x.device).view(x.shape)
        mask = (bits < round(keep * 65536) - 32768).to(x.dtype).mul_(1.0 / keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _uniform_int16(count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``count`` independent int16 values, uniform over all 65,536, cut from uniform 64-bit words."""
    # random_(-2**63, None) is torch's full-64-bit-range draw; the default range of random_ leaves the sign bit 0.
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None, generator=generator)
    return words.view(torch.int16)[:count]


def autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 mixed precision on CUDA; CPU runs in float32 (autocast there is slower and changes results)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Validation:
    """NDCG@k on a validation slice, computed the way the evaluation protocol computes it.

    users: users that have validation events; relevant: their validation items (rows aligned with ``users``);
    exclude: the items each of them has in the training part (never ranked, like seen items at test time).
    """

    def __init__(self, users: np.ndarray, relevant: sp.csr_matrix, exclude: sp.csr_matrix, k: int = 10) -> None:
        self.users = users
        self.relevant = relevant
        self.exclude = exclude
        self.k = k

    @classmethod
    def from_split(cls, head: SequenceData, tail: SequenceData, k: int = 10) -> Validation | None:
        """Validation on ``tail`` for a model trained on ``head``; ``None`` when no user has a usable tail."""
        seen = head.to_csr()
        relevant = tail.to_csr() - tail.to_csr().multiply(seen)  # repeats of training items cannot be ranked
        relevant.eliminate_zeros()
        users = np.flatnonzero(np.diff(relevant.indptr) > 0)
        if len(users) == 0:
            return None
        return cls(users, relevant[users], seen[users], k)

    def ndcg(self, score: Callable[[np.ndarray], np.ndarray]) -> float:
        """Mean NDCG@k of ``score(users)`` (dense ``(len(users), n_items)``) over the validation users."""
        scores = score(self.users).astype(np.float32, copy=True)
        seen = self.exclude.tocoo()
        scores[seen.row, seen.col] = -np.inf
        items, _ = top_k(scores, self.k)
        return ndcg_at_k(items, self.relevant)


def ndcg_at_k(items: np.ndarray, relevant: sp.csr_matrix) -> float:
    """Mean NDCG of ranked ``items`` (rows of item indices, ``-1`` = none) against binary ``relevant``."""
    n_rows, k = items.shape
    rows = np.repeat(np.arange(n_rows), k)
    hits = np.asarray(relevant[rows, np.maximum(items, 0).ravel()]).reshape(n_rows, k) > 0
    hits &= items >= 0
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    n_relevant = np.minimum(np.diff(relevant.indptr), k)
    ideal = np.cumsum(discount)[np.maximum(n_relevant, 1) - 1]
    return float(np.mean((hits * discount).sum(axis=1) / ideal))


def train(
    module: nn.Module,
    epoch_batches: Callable[[np.random.Generator], Iterable[Batch]],
    loss_fn: Callable[[tuple[torch.Tensor, ...]], torch.Tensor],
    config: NeuralConfig,
    settings: RunSettings,
    device: torch.device,
    validation: Validation | None,
    score: Callable[[np.ndarray], np.ndarray],
    stage: str,
) -> TrainingLog:
    """Train ``module`` with AdamW and return the log; the best validation epoch's weights stay in ``module``.

    epoch_batches: called once per epoch with the fit's numpy generator; yields batches of numpy arrays, which
        are moved to ``device`` as tensors (integer arrays as int64) and handed to ``loss_fn``.
    score: the model's scoring function for :meth:`Validation.ndcg` (called in eval mode, without gradients).
    """
    module.to(device)
    # The fused kernel updates every parameter in one pass per tensor; torch's default on the CPU is a Python
    # loop of a dozen small ops per parameter: 0.91 vs 0.22 ms a step for NeuMF's 11 tensors (ad-hoc timing).
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, fused=True
    )
    rng = np.random.default_rng(settings.seed)
    log = TrainingLog()
    best_ndcg, best_weights, since_best = -math.inf, None, 0
    learned = False  # whether any batch had a non-zero loss (a gradient) to learn from
    for epoch in range(config.max_epochs):
        started = time.perf_counter()
        module.train()
        batches = list(epoch_batches(rng))
        total, weight = 0.0, 0
        for position, batch in enumerate(batches):
            tensors = tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in batch)
            with autocast(device):
                loss = loss_fn(tensors)
            value = float(loss.detach())
            if not math.isfinite(value):  # one NaN step makes every weight NaN, and the fit would still "succeed"
                raise FloatingPointError(
                    f"{stage}: the training loss is {value} in epoch {epoch + 1}, batch {position + 1} of "
                    f"{len(batches)}; the weights are left as before that step. Lower learning_rate (now "
                    f"{config.learning_rate:g}) or set clip_norm, or check the data for extreme values"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_norm > 0:
                nn.utils.clip_grad_norm_(module.parameters(), config.clip_norm)
            optimizer.step()
            total += value
            weight += 1
            learned = learned or value != 0.0
            settings.report(stage, (epoch + (position + 1) / len(batches)) / config.max_epochs)
        log.train_loss.append(total / max(weight, 1))
        if validation is not None:
            with torch.no_grad():
                module.eval()
                ndcg = validation.ndcg(score)
            log.validation_ndcg.append(ndcg)
        log.seconds_per_epoch.append(time.perf_counter() - started)
        if validation is None:
            log.best_epoch = epoch + 1
            continue
        if ndcg > best_ndcg:
            best_ndcg, since_best, log.best_epoch = ndcg, 0, epoch + 1
            best_weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            since_best += 1
            if since_best >= config.patience:
                break
    if not learned:  # the weights are the initial random ones: the scores would rank by noise
        raise ValueError(
            f"{stage}: every training batch's loss was exactly 0 over {len(log.train_loss)} epoch(s), so the weights "
            "stayed as initialised: no batch held a negative to rank its targets against (with negatives=0 the "
            "only negatives are the batch's other next items, and here they were all the same item); set negatives "
            "to 1 or more, or None for the whole catalogue"
        )
    if best_weights is not None:
        module.load_state_dict(best_weights)
    # The loss is checked before each step; the last step's update is not, and a fit without a validation slice
    # (every publishing refit) would return its overflowed weights as trained.
    broken = [name for name, tensor in module.state_dict().items() if not bool(torch.isfinite(tensor).all())]
    if broken:
        raise FloatingPointError(
            f"{stage}: training left non-finite weights ({', '.join(broken[:3])}{', …' if len(broken) > 3 else ''}); "
            f"lower learning_rate (now {config.learning_rate:g}) or weight_decay (now {config.weight_decay:g}), or set "
            "clip_norm"
        )
    module.eval()
    settings.report(stage, 1.0)
    return log


def next_item_loss(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    kind: str,
    negatives: int | None,
    generator: torch.Generator | None = None,
    bpr_reg: float = 1.0,
) -> torch.Tensor:
    """Mean loss of predicting ``targets`` from ``hidden`` (N, d) via ``weight`` (n_items, d) and ``bias``.

    targets: ``(N,)`` next items, or ``(N, T)`` the next ``T`` items with ``-1`` where a row has fewer; each
        row's loss is the mean over its targets (a softmax spread over the near future).
    negatives: ``None`` scores the whole catalogue; an integer ``m`` scores the batch's own next items
        (in-batch negatives, popularity-distributed) plus ``m`` uniformly sampled items, GRU4Rec style. An
        item that is one of a row's targets never counts as that row's negative.
    kind: "ce" softmax cross-entropy; "bpr_max" (Hidasi & Karatzoglou 2018):
        ``-log Σ_j s_j σ(r_i - r_j) + bpr_reg · Σ_j s_j r_j²``, ``s`` the softmax of the negatives' scores.
    """
    if targets.dim() == 1:
        targets = targets[:, None]
    if negatives is None and kind == "ce":
        return FullCatalogueCrossEntropy.apply(hidden, weight, bias, targets)
    valid = targets >= 0
    safe = targets.clamp(min=0)
    n_items = weight.shape[0]
    if negatives is None:
        logits = (hidden @ weight.T + bias).float()  # (N, n_items)
        is_target = torch.zeros_like(logits, dtype=torch.bool)
        is_target.scatter_(1, safe, valid)
        negative_logits = logits.masked_fill(is_target, -math.inf)
    else:
        sampled = torch.randint(n_items, (negatives,), generator=generator, device=targets.device)
        candidates = torch.cat([safe[:, 0][valid[:, 0]], sampled])
        logits = (hidden @ weight[candidates].T + bias[candidates]).float()  # (N, M)
        is_target = ((candidates[None, :, None] == safe[:, None, :]) & valid[:, None, :]).any(dim=2)
        negative_logits = logits.masked_fill(is_target, -math.inf)
    positive = ((hidden[:, None, :] * weight[safe]).sum(-1) + bias[safe]).float()  # (N, T)
    n_valid = valid.sum(dim=1).clamp(min=1)
    if kind == "ce":
        # log-softmax of each target against the negatives plus itself.
        denominator = torch.logaddexp(torch.logsumexp(negative_logits, dim=1, keepdim=True), positive)
        per_target = denominator - positive
    elif kind == "bpr_max":
        # A row without any negative (all -inf: its targets are the only candidates) would make softmax 0/0 = NaN
        # and poison every weight; with finite zeros instead its loss comes out 0, as with "ce".
        has_negative = torch.isfinite(negative_logits).any(dim=1, keepdim=True)
        share = torch.softmax(negative_logits.masked_fill(~has_negative, 0.0), dim=1)  # (N, M): negatives' weights
        ranked = torch.sigmoid(positive[:, :, None] - negative_logits[:, None, :])  # (N, T, M)
        per_target = -torch.log((share[:, None, :] * ranked).sum(-1) + 1e-24)
        per_target = per_target + bpr_reg * (share * negative_logits.nan_to_num(neginf=0.0).square()).sum(1)[:, None]
    else:
        raise ValueError(f"unknown loss {kind!r}; choose from: {', '.join(LOSSES)}")
    return ((per_target * valid).sum(dim=1) / n_valid).mean()


class FullCatalogueCrossEntropy(torch.autograd.Function):
    """``next_item_loss(kind="ce", negatives=None)`` with the gradients computed in the forward pass, in chunks.

    Same value and gradients as the autograd version of the formula (``tests/test_neural.py`` checks both with
    ``gradcheck``), in less time and memory: the ``(N, n_items)`` logits only ever exist
    :data:`CE_CHUNK_VALUES` at a time. Each chunk of rows gets its logits, one ``exp``, its share of the loss and
    its gradients (turned into them in place), and the buffer is reused for the next chunk; what is kept for
    the backward pass is the gradients of the inputs, ``(N, d)``, ``(n_items, d)`` and ``(n_items,)``, which it
    scales by the incoming gradient (the loss is a sum over rows, so the gradient of each row does not depend on
    the others). Autograd's version kept a masked copy of the whole logits, a boolean mask, and separate
    softmax, scatter and gather passes over them; the previous hand-written version still kept the whole
    ``(N, n_items)`` exponentials for its backward pass (34 MB for 5,120 rows × 1,682 items, 410 MB at 20,000
    items).

    Per row with valid targets ``t`` (``n`` of them), negatives ``j`` (every item that is none of the row's
    targets), ``L`` = logsumexp of the negatives' logits and ``D_t = log(e^L + e^(x_t))``, the loss is
    ``mean_t (D_t − x_t)``. Its gradient is ``e^(x_j − L) · Σ_t e^(L − D_t) / n`` for a negative ``j`` and
    ``−e^(L − D_t) / n`` for target ``t`` (each divided by ``N`` for the mean over rows).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        n_rows, n_items = len(hidden), weight.shape[0]
        wants_grad = any(ctx.needs_input_grad[:3])  # False under no_grad or for constant inputs
        grad_hidden = hidden.new_empty(hidden.shape) if wants_grad else None  # contiguous: chunks write into it
        grad_weight = torch.zeros_like(weight) if wants_grad else None
        grad_bias = torch.zeros_like(bias) if wants_grad else None
        chunk = max(1, CE_CHUNK_VALUES // max(n_items, 1))
        buffer = hidden.new_empty(min(chunk, n_rows), n_items)
        total_loss = hidden.new_zeros(())
        for start in range(0, n_rows, chunk):
            stop = min(start + chunk, n_rows)
            rows_hidden, rows_targets = hidden[start:stop], targets[start:stop]
            # mm, then the bias: addmm with out= first copies the broadcast bias into the buffer and then runs the
            # product as a read-modify-write of it (4.8 vs 3.7 ms for 1,280 × 100 by 100 × 1,611, same bits).
            logits = torch.mm(rows_hidden, weight.T, out=buffer[: stop - start]).add_(bias)
            valid = rows_targets >= 0
            safe = rows_targets.clamp(min=0)
            positive = logits.gather(1, safe)  # (c, T)
            rows, columns = valid.nonzero(as_tuple=True)
            logits[rows, rows_targets[rows, columns]] = -math.inf  # a row's targets are never its negatives
            # logsumexp by hand, in place, keeping e^(x − max) for the gradient instead of a second exp.
            row_max = logits.amax(dim=1, keepdim=True)
            row_max.masked_fill_(~torch.isfinite(row_max), 0.0)  # a row without negatives: all -inf, exps all 0
            shifted_exp = logits.sub_(row_max).exp_()  # targets: 0
            total = shifted_exp.sum(dim=1, keepdim=True)  # ≥ 1 when the row has a negative (its max gives e^0)
            negative_lse = row_max + total.log()  # -inf without negatives
            denominator = torch.logaddexp(negative_lse, positive)
            n_valid = valid.sum(dim=1, keepdim=True).clamp(min=1)
            total_loss += (((denominator - positive) * valid).sum(dim=1, keepdim=True) / n_valid).sum()
            if not wants_grad:
                continue
            assert grad_hidden is not None and grad_weight is not None and grad_bias is not None
            target_weight = valid.to(hidden.dtype) / (n_rows * n_valid)  # d loss / d (D_t − x_t)
            negative_share = torch.exp(negative_lse - denominator)  # e^(L − D_t); 0 without negatives
            row_mass = (target_weight * negative_share).sum(dim=1, keepdim=True)
            # e^(x_j − L) = shifted_exp / total; targets are 0 here and get their own term just below.
            grad_logits = shifted_exp.mul_(row_mass / total.clamp(min=1.0))
            grad_logits.scatter_add_(1, safe, -target_weight * negative_share)
            torch.mm(grad_logits, weight, out=grad_hidden[start:stop])
            grad_weight.addmm_(grad_logits.T, rows_hidden)
            grad_bias += grad_logits.sum(dim=0)
        if wants_grad:
            ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return total_loss / max(n_rows, 1)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        return grad_hidden * grad, grad_weight * grad, grad_bias * grad, None


def score_users(
    users: np.ndarray,
    encode: Callable[[np.ndarray], torch.Tensor],
    batch_size: int = 256,
) -> np.ndarray:
    """``encode(batch)`` → ``(len(batch), n_items)`` scores over ``users`` in batches, as a float32 array."""
    parts = []
    with torch.no_grad():
        for start in range(0, len(users), batch_size):
            parts.append(encode(users[start : start + batch_size]).float().cpu().numpy())
    return np.concatenate(parts).astype(np.float32, copy=False)


WEIGHTS_PREFIX = "weights."


def state_arrays(module: nn.Module) -> dict[str, np.ndarray]:
    """The module's state dict as CPU numpy arrays, by ``state_dict`` name."""
    return {name: tensor.detach().cpu().numpy() for name, tensor in module.state_dict().items()}


def module_state(module: nn.Module) -> dict[str, np.ndarray]:
    """The module's state dict as CPU numpy arrays, keys prefixed ``weights.`` (saved without pickle)."""
    return {WEIGHTS_PREFIX + name: array for name, array in state_arrays(module).items()}


def load_module_state(module: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Load the ``weights.`` arrays of :func:`module_state`; missing or unexpected names raise."""
    expected = set(module.state_dict())
    given = {name.removeprefix(WEIGHTS_PREFIX) for name in state if name.startswith(WEIGHTS_PREFIX)}
    if given != expected:
        raise ValueError(
            f"saved weights do not match the model: missing {sorted(expected - given)}, "
            f"unexpected {sorted(given - expected)}; was the file written with another config or version?"
        )
    module.load_state_dict({name: torch.from_numpy(np.array(state[WEIGHTS_PREFIX + name])) for name in expected})


class NeuralRecommender(Recommender):
    """Base of the deep models: the shared fit, batched full-catalogue scoring from history, and persistence.

    A subclass supplies the network (:meth:`_build_net`), one epoch of batches (:meth:`_epoch_batches`), the
    loss of a batch (:meth:`_loss`) and scores from users' histories (:meth:`_history_scores`). ``fit`` orders
    each user's events in time, cuts the validation slice off the end, trains with :func:`train`, and keeps
    every user's (newest :meth:`_history_window`) events for scoring: the state of a sequence model comes from
    the end of the history it was given. Users without any training event score like unknown users
    (popularity). After ``load`` the network runs on the CPU.
    """

    config: NeuralConfig
    #: Sequence models learn from event order and refuse data without timestamps.
    needs_order: ClassVar[bool] = True
    #: Users scored per forward pass in ``score`` (bounds memory: a batch holds batch × n_items scores).
    score_batch: ClassVar[int] = 256
    #: Weights whose rows are users or items (name → axis): a warm start matches those rows by id and copies
    #: every other weight whole.
    indexed_weights: ClassVar[Mapping[str, Axis]] = {}

    # ---- hooks ----------------------------------------------------------------------------------------
    @abstractmethod
    def _build_net(self) -> nn.Module:
        """A freshly initialised network for ``n_users_`` × ``n_items_`` (called inside the seeded RNG)."""

    @abstractmethod
    def _epoch_batches(self, train: SequenceData, rng: np.random.Generator) -> Iterable[Batch]:
        """One epoch of training batches (numpy arrays) drawn from the training sequences."""

    @abstractmethod
    def _loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Scalar loss of one batch (tensors on the training device)."""

    @abstractmethod
    def _history_scores(self, users: np.ndarray, history: SequenceData) -> torch.Tensor:
        """``(len(users), n_items_)`` scores for users that all have at least one event in ``history``."""

    def _history_window(self) -> int | None:
        """How many of a user's newest events scoring reads (``None``: all); the rest need not be stored."""
        return None

    # ---- shared implementation ------------------------------------------------------------------------
    def fit(
        self, data: Interactions, settings: RunSettings | None = None, *, warm_start: WarmStart | None = None
    ) -> Self:
        """Learn from ``data``; with ``warm_start`` the network begins from an earlier fit's weights (rows matched
        by the caller) and trains ``config.warm_start_epochs`` epochs (``max_epochs`` if that is ``None``)."""
        if warm_start is not None and (
            len(warm_start.user_rows) != data.n_users or len(warm_start.item_rows) != data.n_items
        ):
            raise ValueError(
                f"{self.name}: the warm start matches {len(warm_start.user_rows)} users and "
                f"{len(warm_start.item_rows)} items, the data has {data.n_users} and {data.n_items}"
            )
        return self._fit_with(data, settings, warm_start=warm_start)

    def warm_state(self) -> dict[str, np.ndarray]:
        """The trained network's weights (CPU arrays by ``state_dict`` name), to warm-start a later fit."""
        self._check_fitted()
        return state_arrays(self.net_)

    def _initial_net(self, seed: int, device: torch.device) -> nn.Module:
        """The network a fit begins with: seeded fresh weights, overwritten by the warm start's where it has them."""
        net = self._seeded_net(seed, device)
        warm: WarmStart | None = getattr(self, "_warm_start", None)
        if warm is not None:
            merged = warm_started_state(state_arrays(net), warm, self.indexed_weights)
            net.load_state_dict({name: torch.from_numpy(array) for name, array in merged.items()})
        return net

    def _seeded_net(self, seed: int, device: torch.device) -> nn.Module:
        """The network with initial weights drawn from ``seed`` and dropout masks from a generator of its own."""
        with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = self._build_net()
        dropout_generator = seeded_generator(seed + 1, device)
        for module in net.modules():
            if isinstance(module, SeededDropout):
                module.generator = dropout_generator
        return net.to(device)

    def _fit(self, data: Interactions, settings: RunSettings) -> None:
        rng = np.random.default_rng(settings.seed)
        sequences = SequenceData.from_interactions(data, None if self.needs_order else rng)
        if self.needs_order and not (sequences.lengths >= 2).any():
            raise ValueError(
                f"{self.name}: no user has two or more events, so there is no next item to learn from; "
                "a sequence model needs histories (use popularity or an order-free model for such data)"
            )
        config = self.config
        if getattr(self, "_warm_start", None) is not None and config.warm_start_epochs is not None:
            config = dataclasses.replace(config, max_epochs=config.warm_start_epochs)
        head, tail = sequences.split_tail(config.validation_fraction)
        validation = Validation.from_split(head, tail) if config.validation_fraction > 0 else None
        with torch_run(settings) as device:
            self.device_ = device
            self.threads_ = default_threads(settings, device)
            self.generator_ = seeded_generator(settings.seed, device)
            self.net_ = self._initial_net(settings.seed, device)
            self.history_ = head
            log = train(
                self.net_,
                partial(self._epoch_batches, head),
                self._loss,
                config,
                settings,
                device,
                validation,
                partial(self._scores, history=head),
                self.name,
            )
            if config.refit and validation is not None:
                started = time.perf_counter()
                self.generator_ = seeded_generator(settings.seed, device)
                self.net_ = self._initial_net(settings.seed, device)  # the same initial weights as the validated run
                self.history_ = sequences
                train(
                    self.net_,
                    partial(self._epoch_batches, sequences),
                    self._loss,
                    dataclasses.replace(config, max_epochs=log.best_epoch),
                    settings,
                    device,
                    None,
                    partial(self._scores, history=sequences),
                    f"{self.name} (refit)",
                )
                log.refit_seconds = time.perf_counter() - started
            self.training_log_ = log
        self.history_ = self._trimmed(sequences)
        # Finite weights can still overflow float32 in the scores (a learning rate of 1e6: inf and NaN scores that
        # ranked arbitrarily); a fit that cannot score is no fit.
        probe = np.flatnonzero(self.history_.lengths > 0)[:256]
        if len(probe) and not np.isfinite(self._score_known(probe)).all():
            raise FloatingPointError(
                f"{self.name}: the trained network scores some items as inf or NaN; lower learning_rate (now "
                f"{config.learning_rate:g}) or set clip_norm"
            )

    def refit_config(self) -> NeuralConfig:
        """This config with early stopping's choice fixed: ``max_epochs`` = the best epoch, no validation slice.

        A refit on more events (the flow's publishing fit on everything before ``as_of``) then trains exactly as
        many epochs as validation chose here, on all of its events, instead of early-stopping again — which cost
        ``patience`` extra epochs plus per-epoch validation scoring, and kept the newest events out of training.
        """
        self._check_fitted()
        best = self.training_log_.best_epoch
        if self.config.validation_fraction == 0 or best < 1:
            return self.config
        return dataclasses.replace(self.config, max_epochs=best, validation_fraction=0.0, refit=False)

    def _trimmed(self, sequences: SequenceData) -> SequenceData:
        window = self._history_window()
        if window is None:
            return sequences
        lengths = np.minimum(sequences.lengths, window)
        items, _ = sequences.last(np.arange(sequences.n_users), window)
        keep = np.arange(items.shape[1])[None, :] < lengths[:, None]
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return SequenceData(sequences.n_users, sequences.n_items, indptr, items[keep], sequences.ordered)

    def _scores(self, users: np.ndarray, history: SequenceData) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        out = np.empty((len(users), self.n_items_), dtype=np.float32)
        active = history.lengths[users] > 0
        self.net_.eval()
        if active.any():
            out[active] = score_users(users[active], partial(self._history_scores, history=history), self.score_batch)
        out[~active] = self.popularity_  # nothing to build a state from: behave like an unknown user
        return out

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        with torch_threads(self.threads_):
            return self._scores(users, self.history_)

    def _state(self) -> dict[str, np.ndarray]:
        log = self.training_log_
        return {
            **module_state(self.net_),
            "history_indptr": self.history_.indptr,
            "history_items": self.history_.items.astype(np.int32),
            "log_best_epoch": np.array(log.best_epoch),
            "log_refit_seconds": np.array(log.refit_seconds),
            "log_seconds_per_epoch": np.array(log.seconds_per_epoch, dtype=np.float64),
            "log_train_loss": np.array(log.train_loss, dtype=np.float64),
            "log_validation_ndcg": np.array(log.validation_ndcg, dtype=np.float64),
        }

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.device_ = torch.device("cpu")
        self.threads_ = default_threads(RunSettings(device="cpu"), self.device_)
        self.generator_ = seeded_generator(0)
        self.net_ = self._seeded_net(0, self.device_)  # its initial weights are overwritten just below
        load_module_state(self.net_, state)
        self.net_.eval()
        indptr = state["history_indptr"].astype(np.int64)
        self.history_ = SequenceData(self.n_users_, self.n_items_, indptr, state["history_items"].astype(np.int64))
        self.training_log_ = TrainingLog(
            best_epoch=int(state["log_best_epoch"]),
            refit_seconds=float(state["log_refit_seconds"]),
            seconds_per_epoch=state["log_seconds_per_epoch"].tolist(),
            train_loss=state["log_train_loss"].tolist(),
            validation_ndcg=state["log_validation_ndcg"].tolist(),
        )
