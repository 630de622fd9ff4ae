"""Time-ordered per-user item sequences, the input of the sequence models (and the validation cut of all).

A :class:`SequenceData` holds every user's items in the order they happened (``Interactions.timestamp``, ties
broken by item index so the order is the same on every run), stored like a CSR matrix: ``items[indptr[u] :
indptr[u + 1]]`` is user ``u``'s history, oldest first. Batches are right-padded with the padding index
``n_items`` (an extra embedding row) plus a length per row, so models can mask padded positions by position
and never depend on what sits there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recmodels.data import Interactions


@dataclass(frozen=True, eq=False)
class SequenceData:
    """Per-user item sequences, oldest first, in CSR layout.

    n_users, n_items: the index space (users without events have empty sequences).
    indptr: int64 ``(n_users + 1,)``; user ``u``'s events are ``items[indptr[u]:indptr[u + 1]]``.
    items: int64 item indices in ``[0, n_items)``.
    ordered: False when the events had no times and come in a random order (order-free models' validation cut):
        then nothing may be read from positions, such as which event is a user's newest.
    """

    n_users: int
    n_items: int
    indptr: np.ndarray
    items: np.ndarray
    ordered: bool = True

    def __post_init__(self) -> None:
        if self.indptr.shape != (self.n_users + 1,) or self.indptr[0] != 0 or self.indptr[-1] != len(self.items):
            raise ValueError(
                f"indptr must have n_users + 1 = {self.n_users + 1} entries from 0 to len(items) = {len(self.items)}"
            )
        if np.any(np.diff(self.indptr) < 0):
            raise ValueError("indptr must be non-decreasing")
        if len(self.items) and (self.items.min() < 0 or self.items.max() >= self.n_items):
            raise ValueError(f"item indices must lie in [0, {self.n_items})")

    @property
    def pad(self) -> int:
        """The padding index: one past the last item, so that embeddings get one extra (masked) row."""
        return self.n_items

    @classmethod
    def from_interactions(cls, data: Interactions, rng: np.random.Generator | None = None) -> SequenceData:
        """Sequences ordered by ``data.timestamp``, then item index.

        Without timestamps there is no order to learn: sequence models must refuse such data, so this raises
        unless ``rng`` is given, in which case each user's events come in a random (seeded) order, which is
        what order-free models (NeuMF) use to cut a validation slice.
        """
        if data.timestamp is None:
            if rng is None:
                raise ValueError(
                    "sequence models need event times: the interactions carry no timestamps; load data "
                    "with a 'timestamp' column, or use an order-free model (neumf, item_knn)"
                )
            time_key = rng.permutation(len(data)).astype(np.int64)
        else:
            time_key = data.timestamp.astype(np.int64)
        # lexsort: the last key is the primary one → user, then time, then item index for ties.
        order = np.lexsort((data.item, time_key, data.user))
        counts = np.bincount(data.user, minlength=data.n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(data.n_users, data.n_items, indptr, data.item[order].astype(np.int64), data.timestamp is not None)

    @classmethod
    def from_lists(cls, sequences: list[list[int]], n_items: int) -> SequenceData:
        """Build from one list of item indices per user (oldest first); for tests and small examples."""
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        items = np.array([i for s in sequences for i in s], dtype=np.int64)
        return cls(len(sequences), n_items, indptr, items)

    @property
    def lengths(self) -> np.ndarray:
        """Events per user (int64)."""
        return np.diff(self.indptr)

    def __len__(self) -> int:
        return len(self.items)

    def sequence(self, user: int) -> np.ndarray:
        """User ``user``'s items, oldest first."""
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    def user_of_event(self) -> np.ndarray:
        """The user of each entry of ``items`` (int64)."""
        return np.repeat(np.arange(self.n_users, dtype=np.int64), self.lengths)

    def to_csr(self) -> sp.csr_matrix:
        """Binary users × items matrix of these events (float32)."""
        ones = np.ones(len(self.items), dtype=np.float32)
        matrix = sp.csr_matrix((ones, self.items, self.indptr), shape=(self.n_users, self.n_items))
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    def split_tail(self, fraction: float, min_keep: int = 2) -> tuple[SequenceData, SequenceData]:
        """``(head, tail)``: the newest ``ceil(fraction × n)`` events of each user go to ``tail``.

        A user keeps at least ``min_keep`` events in ``head`` (so a sequence model still has a next-item
        target there); users with fewer events have an empty tail. This mirrors the temporal holdout of the
        evaluation protocol, one level down: the validation slice used for early stopping.
        """
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"validation fraction must lie in [0, 1), got {fraction!r}")
        lengths = self.lengths
        n_tail = np.ceil(fraction * lengths - 1e-9).astype(np.int64)
        n_tail = np.clip(np.minimum(n_tail, lengths - min_keep), 0, None)
        n_head = lengths - n_tail
        position = np.arange(len(self.items)) - np.repeat(self.indptr[:-1], lengths)
        in_head = position < np.repeat(n_head, lengths)
        head_ptr = np.concatenate([[0], np.cumsum(n_head)]).astype(np.int64)
        tail_ptr = np.concatenate([[0], np.cumsum(n_tail)]).astype(np.int64)
        return (
            SequenceData(self.n_users, self.n_items, head_ptr, self.items[in_head], self.ordered),
            SequenceData(self.n_users, self.n_items, tail_ptr, self.items[~in_head], self.ordered),
        )

    def last(self, users: np.ndarray, max_len: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Each user's newest ``max_len`` items (all for ``None``), right-padded: ``(items (B, W), lengths)``.

        ``W`` is the longest selected history (at least 1); padded slots hold :attr:`pad`.
        """
        users = np.asarray(users, dtype=np.int64)
        stop = self.indptr[users + 1]
        start = self.indptr[users] if max_len is None else np.maximum(self.indptr[users], stop - max_len)
        return self.gather(start, stop)

    def gather(self, start: np.ndarray, stop: np.ndarray, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``items[start[r]:stop[r]]`` right-padded with :attr:`pad` into ``(B, width)``, plus lengths.

        One fancy-indexing pass, no Python loop over rows.
        """
        lengths = (np.asarray(stop) - np.asarray(start)).astype(np.int64)
        width = int(max(1, lengths.max(initial=0))) if width is None else width
        offsets = np.arange(width, dtype=np.int64)
        valid = offsets[None, :] < lengths[:, None]
        index = np.where(valid, np.asarray(start, dtype=np.int64)[:, None] + offsets[None, :], 0)
        out = np.where(valid, self.items[index] if len(self.items) else self.pad, self.pad)
        return out.astype(np.int64), lengths

    def segments(self, max_len: int | None, context: int) -> np.ndarray:
        """Training segments covering every next-item target of every user exactly once.

        For a user with events ``s_0 … s_{n-1}``, the targets are ``s_1 … s_{n-1}``. They are cut into runs of
        at most ``max_len`` consecutive targets (one run when ``None``); each run's input window also carries
        up to ``context`` earlier events that only warm up the model (no loss there). Returns an int64 array
        of rows ``(user, lo, hi, first_loss)``: inputs ``items[lo:hi]``, targets ``items[lo + 1:hi + 1]``,
        loss on input positions ``>= first_loss`` (absolute indices into ``items``).
        """
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be ≥ 1 or None, got {max_len}")
        lengths = self.lengths
        n_targets = np.maximum(lengths - 1, 0)
        per_run = n_targets if max_len is None else np.full_like(n_targets, max_len)
        n_runs = np.where(n_targets > 0, -(-n_targets // np.maximum(per_run, 1)), 0)
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), n_runs)
        run_index = np.arange(int(n_runs.sum())) - np.repeat(np.cumsum(n_runs) - n_runs, n_runs)
        first_input = self.indptr[users]  # position of s_0
        first_loss = first_input + run_index * per_run[users]
        end = np.minimum(first_loss + per_run[users], first_input + n_targets[users])
        lo = np.maximum(first_input, first_loss - context)
        return np.stack([users, lo, end, first_loss], axis=1).astype(np.int64)


def segment_batches(
    data: SequenceData,
    segments: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    horizon: int = 1,
    bucket: int = 16,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """One epoch of shuffled batches ``(users, inputs, lengths, targets)`` from :meth:`SequenceData.segments`.

    inputs: ``(B, W)`` right-padded item indices; lengths: ``(B,)``; targets: ``(B, W, horizon)``: for input
    position ``t`` the user's next ``horizon`` items (``t + 1 … t + horizon``), ``-1`` where there is none and
    wherever no loss is taken (warm-up context and padding). Segments are shuffled, then sorted by length
    within groups of ``bucket`` batches so that a batch holds similar lengths (less padding), and the batches
    are shuffled again.
    """
    order = rng.permutation(len(segments))
    group = batch_size * bucket
    for start in range(0, len(order), group):
        chunk = order[start : start + group]
        span = segments[chunk, 2] - segments[chunk, 1]
        order[start : start + group] = chunk[np.argsort(span, kind="stable")]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    out = []
    for b in rng.permutation(len(batches)):
        rows = segments[batches[b]]
        inputs, lengths = data.gather(rows[:, 1], rows[:, 2])
        width = inputs.shape[1]
        offsets = np.arange(width)[None, :]
        no_loss = (offsets < (rows[:, 3] - rows[:, 1])[:, None]) | (offsets >= lengths[:, None])
        user_end = data.indptr[rows[:, 0] + 1]
        targets = np.empty((len(rows), width, horizon), dtype=np.int64)
        for step in range(1, horizon + 1):
            # Target positions past the user's last event are cut by giving gather a shorter row.
            stop = np.minimum(rows[:, 2] + step, user_end)
            ahead, _ = data.gather(rows[:, 1] + step, np.maximum(stop, rows[:, 1] + step), width=width)
            ahead[(offsets >= (stop - rows[:, 1] - step)[:, None]) | no_loss] = -1
            targets[:, :, step - 1] = ahead
        out.append((rows[:, 0], inputs, lengths, targets))
    return out
