"""The deep models (recmodels.neural): sequences, losses, the training loop, and each model on tiny tasks.

Every model test uses a tiny network and a few epochs so that the file runs in seconds; the ML-100K floors
live in the shared contract suite (tests/test_models.py, ``MIN_NDCG``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recmodels.base import RunSettings
from recmodels.data import Interactions
from recmodels.neural import (
    Caser,
    CaserConfig,
    GRU4Rec,
    GRU4RecConfig,
    NeuMF,
    NeuMFConfig,
    NeuralRecommender,
    SequenceData,
    training,
)
from recmodels.neural import neumf as neumf_module
from recmodels.neural.caser import CaserNet
from recmodels.neural.gru4rec import GRU4RecNet
from recmodels.neural.neumf import NeuMFNet, recency_weights, sample_unseen
from recmodels.neural.sequences import segment_batches
from recmodels.neural.training import (
    FullCatalogueCrossEntropy,
    SeededDropout,
    Validation,
    ndcg_at_k,
    next_item_loss,
)

# ---- SequenceData -----------------------------------------------------------------------------------------


def test_sequences_follow_time_then_item_index() -> None:
    # user 0: t=5 item 3, t=1 item 2, t=5 item 0 (tie at t=5 → item 0 before item 3); user 1 has no events;
    # user 2: t=9 item 1, t=2 item 4.
    data = Interactions.from_arrays(
        user=np.array([0, 0, 2, 0, 2]),
        item=np.array([3, 2, 1, 0, 4]),
        timestamp=np.array([5, 1, 9, 5, 2]),
        n_users=3,
        n_items=5,
    )
    seq = SequenceData.from_interactions(data)
    assert seq.sequence(0).tolist() == [2, 0, 3]
    assert seq.sequence(1).tolist() == []
    assert seq.sequence(2).tolist() == [4, 1]
    assert seq.lengths.tolist() == [3, 0, 2]
    assert seq.pad == 5
    assert seq.to_csr().toarray().tolist() == [[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 1]]


def test_sequence_models_refuse_data_without_timestamps() -> None:
    data = Interactions.from_arrays(np.array([0, 0, 1]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="timestamps"):
        SequenceData.from_interactions(data)
    with pytest.raises(ValueError, match="timestamps"):
        GRU4Rec(GRU4RecConfig(max_epochs=1)).fit(data)
    single = Interactions.from_arrays(np.array([0, 1]), np.array([0, 1]), timestamp=np.array([1, 2]))
    with pytest.raises(ValueError, match="two or more events"):
        Caser(CaserConfig(max_epochs=1)).fit(single)
    # Order-free use (NeuMF's validation cut) gets a seeded random order instead.
    first = SequenceData.from_interactions(data, np.random.default_rng(1))
    again = SequenceData.from_interactions(data, np.random.default_rng(1))
    assert np.array_equal(first.items, again.items)
    assert sorted(first.sequence(0).tolist()) == [0, 1]


def test_split_tail_keeps_two_events_and_cuts_the_newest() -> None:
    seq = SequenceData.from_lists([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [5, 6, 7], [1, 2], []], n_items=10)
    head, tail = seq.split_tail(0.25)
    # ceil(0.25·10) = 3 newest of user 0; ceil(0.25·3) = 1 for user 1; user 2 must keep 2 → no tail.
    assert [head.sequence(u).tolist() for u in range(4)] == [[0, 1, 2, 3, 4, 5, 6], [5, 6], [1, 2], []]
    assert [tail.sequence(u).tolist() for u in range(4)] == [[7, 8, 9], [7], [], []]
    with pytest.raises(ValueError, match="fraction"):
        seq.split_tail(1.0)


def test_last_and_gather_right_pad_with_the_pad_index() -> None:
    seq = SequenceData.from_lists([[0, 1, 2, 3], [4], [5, 6]], n_items=7)
    items, lengths = seq.last(np.array([0, 1, 2]), max_len=3)
    assert items.tolist() == [[1, 2, 3], [4, 7, 7], [5, 6, 7]]
    assert lengths.tolist() == [3, 1, 2]
    items, lengths = seq.last(np.array([1, 0]), max_len=None)
    assert items.tolist() == [[4, 7, 7, 7], [0, 1, 2, 3]] and lengths.tolist() == [1, 4]


def test_segments_cover_every_target_once_with_context() -> None:
    # One user with 6 events at positions 0..5: targets are positions 1..5 (inputs 0..4).
    seq = SequenceData.from_lists([[10, 11, 12, 13, 14, 15], [3]], n_items=16)
    rows = seq.segments(max_len=2, context=1)
    # runs of ≤ 2 targets: inputs [0,2), [2,4), [4,5); each with ≤ 1 warm-up input; user 1 has no target.
    assert rows.tolist() == [[0, 0, 2, 0], [0, 1, 4, 2], [0, 3, 5, 4]]
    assert seq.segments(max_len=None, context=0).tolist() == [[0, 0, 5, 0]]


def test_segment_batches_targets_and_horizon_by_hand() -> None:
    seq = SequenceData.from_lists([[10, 11, 12, 13, 14, 15]], n_items=16)
    rows = seq.segments(max_len=2, context=1)
    batches = segment_batches(seq, rows[1:2], batch_size=4, rng=np.random.default_rng(0), horizon=2)
    users, inputs, lengths, targets = batches[0]
    assert users.tolist() == [0] and lengths.tolist() == [3]
    assert inputs.tolist() == [[11, 12, 13]]
    # position 0 (item 11) is warm-up: no loss; positions 1, 2 predict (13, 14) and (14, 15).
    assert targets.tolist() == [[[-1, -1], [13, 14], [14, 15]]]
    last = segment_batches(seq, rows[2:3], batch_size=4, rng=np.random.default_rng(0), horizon=2)[0][3]
    # The last input (14) has only one item after it: the second target is missing (-1).
    assert last.tolist() == [[[-1, -1], [15, -1]]]


# ---- losses and metrics ---------------------------------------------------------------------------------


def test_next_item_loss_full_softmax_matches_cross_entropy() -> None:
    torch.manual_seed(0)
    hidden, weight, bias = torch.randn(4, 3), torch.randn(6, 3), torch.randn(6)
    targets = torch.tensor([0, 5, 2, 2])
    expected = F.cross_entropy(hidden @ weight.T + bias, targets)
    got = next_item_loss(hidden, targets, weight, bias, "ce", negatives=None)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_next_item_loss_horizon_by_hand() -> None:
    # Two items, zero bias, 1-d states: logits are h·w. Row 0: h=1, w=(2, 0) → logits (2, 0), targets [0, 1].
    hidden, weight, bias = torch.tensor([[1.0]]), torch.tensor([[2.0], [0.0]]), torch.zeros(2)
    got = next_item_loss(hidden, torch.tensor([[0, 1]]), weight, bias, "ce", negatives=None)
    # Each target competes only against non-targets (none here): both terms are log(e^s / e^s) = 0.
    assert float(got) == pytest.approx(0.0, abs=1e-6)
    one = next_item_loss(hidden, torch.tensor([[1, -1]]), weight, bias, "ce", negatives=None)
    assert float(one) == pytest.approx(math.log(1 + math.exp(2.0)), rel=1e-6)  # -log(e^0 / (e^0 + e^2))


def _reference_full_ce(
    hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """The full-catalogue loss written plainly, differentiated by autograd (the oracle for the fused one)."""
    valid = targets >= 0
    logits = hidden @ weight.T + bias
    is_target = torch.zeros_like(logits, dtype=torch.bool)
    for row, column in valid.nonzero().tolist():
        is_target[row, targets[row, column]] = True
    negative_lse = torch.logsumexp(logits.masked_fill(is_target, -math.inf), dim=1, keepdim=True)
    positive = logits.gather(1, targets.clamp(min=0))
    per_target = torch.logaddexp(negative_lse, positive) - positive
    return ((per_target * valid).sum(1) / valid.sum(1).clamp(min=1)).mean()


@pytest.mark.parametrize("chunk_values", [1 << 21, 5, 10, 12])
def test_full_catalogue_loss_matches_autograd_of_the_formula(
    chunk_values: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows: two targets; padded horizon (-1); a repeated target; every item a target (no negatives); a row
    # without any valid target (counts as 0 in the mean); item 0 as a target next to padding (which clamps to 0).
    # With 5 items, chunks of 5, 10 and 12 values hold 1, 2 and 2 rows: the loss and every gradient are summed
    # over chunks (the last one short) and must not depend on where the rows are cut.
    monkeypatch.setattr(training, "CE_CHUNK_VALUES", chunk_values)
    targets = torch.tensor([[1, 3], [2, -1], [4, 4], [0, 1], [-1, -1], [0, -1]])
    weight_rows = 5
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(6, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(weight_rows, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(weight_rows, generator=generator, dtype=torch.float64, requires_grad=True)
    everything = torch.tensor([[0, 1, 2, 3, 4]])  # one row whose targets are the whole catalogue
    for rows in (targets, everything):
        h = hidden[: len(rows)]
        expected = _reference_full_ce(h, rows, weight, bias)
        got = FullCatalogueCrossEntropy.apply(h, weight, bias, rows)
        assert got.item() == pytest.approx(expected.item(), rel=1e-12)
        want = torch.autograd.grad(expected, (hidden, weight, bias))
        have = torch.autograd.grad(got, (hidden, weight, bias))
        for a, b in zip(want, have, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
        assert torch.autograd.gradcheck(
            lambda h_, w_, b_, r=rows: FullCatalogueCrossEntropy.apply(h_, w_, b_, r), (h, weight, bias)
        )
    # A non-contiguous hidden (a transposed view) gives the same loss and gradients.
    strided = hidden.detach().T.contiguous().T.requires_grad_()
    assert not strided.is_contiguous()
    got = FullCatalogueCrossEntropy.apply(strided, weight, bias, targets)
    expected = _reference_full_ce(hidden, targets, weight, bias)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    (want,) = torch.autograd.grad(expected, (hidden,))
    (have,) = torch.autograd.grad(got, (strided,))
    torch.testing.assert_close(have, want, rtol=1e-10, atol=1e-12)
    # next_item_loss routes the full-catalogue cross-entropy here, 1-d targets included.
    single = torch.tensor([1, 0, 4, 2, 3, 3])
    torch.testing.assert_close(
        next_item_loss(hidden, single, weight, bias, "ce", negatives=None),
        _reference_full_ce(hidden, single[:, None], weight, bias),
    )


def test_bpr_max_by_hand() -> None:
    # logits (1, 2, 3) for a target 0: negatives 1, 2 with softmax weights s = (e^2, e^3) / (e^2 + e^3).
    hidden, weight, bias = torch.tensor([[1.0]]), torch.tensor([[1.0], [2.0], [3.0]]), torch.zeros(3)
    s = np.exp([2.0, 3.0]) / np.exp([2.0, 3.0]).sum()
    sig = 1 / (1 + np.exp(-(1.0 - np.array([2.0, 3.0]))))
    expected = -np.log((s * sig).sum()) + 0.5 * (s * np.array([4.0, 9.0])).sum()
    got = next_item_loss(hidden, torch.tensor([0]), weight, bias, "bpr_max", negatives=None, bpr_reg=0.5)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_sampled_loss_never_uses_a_rows_target_as_its_negative() -> None:
    # Both rows target item 1: in-batch candidates are (1, 1); sampling 0 extra items leaves no negatives, so
    # the loss of each row is -log(e^s / e^s) = 0 — counting the other row's copy would make it log 2.
    hidden, weight, bias = torch.ones(2, 2), torch.randn(4, 2), torch.zeros(4)
    got = next_item_loss(hidden, torch.tensor([1, 1]), weight, bias, "ce", negatives=0)
    assert float(got) == pytest.approx(0.0, abs=1e-6)


def test_bpr_max_gives_a_row_without_negatives_no_loss_not_nan() -> None:
    # In-batch candidates are {3, 7}: row 0 targets both, so it has no negative left. Softmax over an all -inf row
    # was 0/0 = NaN, which made the loss, then every weight NaN while the fit still "succeeded".
    hidden = torch.randn(2, 4, requires_grad=True)
    weight, bias = torch.randn(50, 4, requires_grad=True), torch.zeros(50)
    alone = next_item_loss(hidden[:1], torch.tensor([[3, 7]]), weight, bias, "bpr_max", 0)
    assert float(alone.detach()) == pytest.approx(0.0, abs=1e-6)
    both = next_item_loss(hidden, torch.tensor([[3, 7], [7, -1]]), weight, bias, "bpr_max", 0)
    both.backward()
    assert math.isfinite(float(both.detach())) and float(both.detach()) > 0
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()
    assert float(hidden.grad[0].abs().sum()) == 0.0  # the row without negatives takes no part


@pytest.mark.parametrize("cls", [GRU4Rec, Caser])
def test_a_fit_with_no_negative_in_any_batch_fails_instead_of_keeping_random_weights(cls: type) -> None:
    # Every user clicks item 3 then item 5: with negatives=0 the only negatives are the batch's other next items,
    # all item 5, so every loss was 0 and the "trained" model scored by its initial weights.
    n_users = 60
    data = Interactions.from_arrays(
        np.repeat(np.arange(n_users), 2),
        np.tile([3, 5], n_users),
        timestamp=np.arange(2 * n_users),
        n_users=n_users,
        n_items=10,
    )
    with pytest.raises(ValueError, match=r"loss was exactly 0 over 2 epoch\(s\).*set negatives to 1 or more"):
        cls(cls.config_class(max_epochs=2, negatives=0)).fit(data, RunSettings(seed=0))
    sampled = cls(cls.config_class(max_epochs=2, negatives=2)).fit(data, RunSettings(seed=0))
    assert int(np.argmax(sampled.score(np.array([0]))[0])) == 5


def test_a_non_finite_loss_stops_training_with_the_weights_before_it() -> None:
    net = torch.nn.Linear(2, 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    steps = iter([1.0, float("nan")])

    def loss_fn(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return net(batch[0].float()).sum() * 0 + next(steps)

    config = NeuMFConfig(max_epochs=1, learning_rate=0.5)
    with pytest.raises(FloatingPointError, match=r"loss is nan in epoch 1, batch 2 of 2.*learning_rate \(now 0.5\)"):
        training.train(
            net,
            lambda rng: [(np.ones((1, 2)),), (np.ones((1, 2)),)],
            loss_fn,
            config,
            RunSettings(seed=0),
            torch.device("cpu"),
            None,
            lambda users: np.zeros((len(users), 1)),
            "test",
        )
    after = net.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the finite first step was taken


def test_ndcg_at_k_by_hand() -> None:
    relevant = sp.csr_matrix(np.array([[0, 1, 0, 1], [1, 0, 0, 0]], dtype=np.float32))
    items = np.array([[1, 0], [2, -1]])
    # Row 0: hit at rank 1 → DCG 1, IDCG 1 + 1/log2(3); row 1: no hit → 0.
    expected = (1 / (1 + 1 / np.log2(3)) + 0.0) / 2
    assert ndcg_at_k(items, relevant) == pytest.approx(expected)


def test_validation_excludes_training_items_and_repeats() -> None:
    head = SequenceData.from_lists([[0, 1], [2, 3]], n_items=4)
    tail = SequenceData.from_lists([[2], [3]], n_items=4)  # user 1's tail repeats a training item
    validation = Validation.from_split(head, tail)
    assert validation is not None and validation.users.tolist() == [0]
    # A scorer that likes seen item 0 most must still be credited for ranking item 2 first among the unseen.
    assert validation.ndcg(lambda users: np.array([[9.0, 8.0, 1.0, 0.0]])) == pytest.approx(1.0)


def test_sample_unseen_never_returns_a_seen_item() -> None:
    seen = sp.csr_matrix(np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=np.float32))
    draws = sample_unseen(seen, np.array([0, 0, 1]), per_row=50, rng=np.random.default_rng(0))
    assert set(draws[:2].ravel()) <= {3, 4}
    assert set(draws[2]) <= {0, 1, 2, 3} and len(set(draws[2])) > 1


# ---- networks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("net_name", ["gru4rec", "caser"])
def test_padded_positions_do_not_change_outputs(net_name: str) -> None:
    torch.manual_seed(0)
    n_items = 9
    if net_name == "gru4rec":
        net = GRU4RecNet(n_items, GRU4RecConfig(embedding_dim=4, hidden_size=5))

        def run(items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return net(items, lengths)
    else:
        caser = CaserNet(3, n_items, CaserConfig(embedding_dim=4, window=3, horizontal_filters=2))

        def run(items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return caser(torch.tensor([0, 2]), items, lengths)

        net = caser
    net.eval()
    items = torch.tensor([[1, 2, 3, 9, 9], [4, 5, 9, 9, 9]])
    lengths = torch.tensor([3, 2])
    reference = run(items, lengths)
    scrambled = items.clone()
    scrambled[0, 3:] = torch.tensor([7, 0])  # real item ids in padded slots
    scrambled[1, 2:] = torch.tensor([1, 1, 8])
    changed = run(scrambled, lengths)
    real = torch.arange(5)[None, :] < lengths[:, None]
    assert reference.shape[:2] == (2, 5)
    assert torch.equal(reference[real], changed[real])
    # Sanity: the real positions do depend on the real items.
    other = items.clone()
    other[0, 0] = 6
    assert not torch.allclose(run(other, lengths)[0, 2], reference[0, 2])


def test_caser_every_position_equals_the_papers_single_window() -> None:
    """Per-position convolutions give, at position t, exactly Caser's computation on the window ending at
    t."""
    torch.manual_seed(3)
    config = CaserConfig(embedding_dim=4, window=3, horizontal_filters=2, vertical_filters=2, dropout=0.0)
    net = CaserNet(2, 8, config).eval()
    items = torch.tensor([[5, 1, 7, 2, 4]])
    states = net(torch.tensor([1]), items, torch.tensor([5]))
    for t in range(5):
        window = items[0, max(0, t - 2) : t + 1]
        emb = torch.cat([torch.zeros(3 - len(window), 4), net.item_embed(window)])  # (L, d), zeros first
        image = emb[None, None]  # (1, 1, L, d) as in the paper's Conv2d formulation
        vertical = net.vertical(image).reshape(-1)  # (n_v · d)
        horizontal = []
        for conv in net.horizontal:
            conv2d_weight = conv.weight.transpose(1, 2)[:, None]  # (n_h, 1, h, d): a full-width filter
            out = F.relu(F.conv2d(image, conv2d_weight, conv.bias))[0, :, :, 0]  # (n_h, L - h + 1)
            horizontal.append(out.max(dim=1).values)
        z = F.relu(net.fc(torch.cat([vertical, *horizontal])))
        expected = torch.cat([z, net.user_embed(torch.tensor(1))])
        torch.testing.assert_close(states[0, t], expected, rtol=1e-5, atol=1e-6)


# ---- models on planted patterns ---------------------------------------------------------------------------


def _cyclic(n_users: int = 40, n_items: int = 12, length: int = 8, seed: int = 0) -> Interactions:
    """Every user walks the cycle 0 → 1 → … → n_items - 1 → 0 from a random start, one item per second.

    ``length < n_items``, so no item repeats and each user's next item is one they have not seen.
    """
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n_items, n_users)
    user = np.repeat(np.arange(n_users), length)
    step = np.tile(np.arange(length), n_users)
    item = (starts[user] + step) % n_items
    return Interactions.from_arrays(user, item, timestamp=step, n_users=n_users, n_items=n_items)


TINY_GRU = GRU4RecConfig(
    embedding_dim=8,
    hidden_size=16,
    max_len=8,
    max_epochs=25,
    batch_size=16,
    learning_rate=0.02,
    dropout=0.0,
    horizon=1,
)
TINY_CASER = CaserConfig(
    embedding_dim=8,
    window=2,
    horizontal_filters=4,
    vertical_filters=2,
    dropout=0.0,
    max_epochs=25,
    batch_size=16,
    learning_rate=0.02,
    horizon=1,
)
TINY_NEUMF = NeuMFConfig(factors=8, mlp_layers=(16, 8), max_epochs=30, batch_size=64, learning_rate=0.02)


@pytest.mark.parametrize("config", [TINY_GRU, TINY_CASER], ids=["gru4rec", "caser"])
def test_sequence_models_learn_a_cycle(config: GRU4RecConfig | CaserConfig) -> None:
    data = _cyclic()
    cls = GRU4Rec if isinstance(config, GRU4RecConfig) else Caser
    model = cls(dataclasses.replace(config, validation_fraction=0.0)).fit(data, RunSettings(seed=0))
    seq = SequenceData.from_interactions(data)
    newest = np.array([seq.sequence(u)[-1] for u in range(data.n_users)])
    scores = model.score(np.arange(data.n_users))
    assert scores.shape == (data.n_users, data.n_items) and scores.dtype == np.float32
    hit_rate = float(np.mean(scores.argmax(axis=1) == (newest + 1) % data.n_items))
    assert hit_rate >= 0.95, hit_rate
    # The next item is one the user has not seen, so it survives the exclusion of seen items.
    top, _ = model.recommend(np.arange(data.n_users), k=1)
    assert float(np.mean(top[:, 0] == (newest + 1) % data.n_items)) >= 0.95


def test_neumf_learns_planted_blocks() -> None:
    # 4 blocks of 6 users × 5 items; each user saw 4 of their block's 5 items: the fifth must come first.
    rng = np.random.default_rng(0)
    users, items, missing = [], [], []
    for u in range(24):
        block = u % 4
        drop = int(rng.integers(5))
        missing.append(block * 5 + drop)
        for j in range(5):
            if j != drop:
                users.append(u)
                items.append(block * 5 + j)
    data = Interactions.from_arrays(np.array(users), np.array(items), n_users=24, n_items=20)
    model = NeuMF(dataclasses.replace(TINY_NEUMF, validation_fraction=0.0)).fit(data, RunSettings(seed=0))
    top, _ = model.recommend(np.arange(24), k=1)
    assert float(np.mean(top[:, 0] == np.array(missing))) >= 0.9


@pytest.mark.parametrize("layers", [(64, 32, 16), (16, 8), (32, 16, 8, 4)])
def test_neumf_score_all_is_forward_over_the_catalogue(
    monkeypatch: pytest.MonkeyPatch, layers: tuple[int, ...]
) -> None:
    # score_all computes the item side once and tiles the users; it must give what forward gives pair by pair.
    torch.manual_seed(0)
    net = NeuMFNet(37, 53, NeuMFConfig(factors=8, mlp_layers=layers, dropout=0.3))
    for table in (net.gmf_user, net.gmf_item, net.mlp_user, net.mlp_item):
        torch.nn.init.normal_(table.weight, std=0.7)  # well away from 0, so ReLUs cut in both directions
    users = torch.tensor([5, 0, 36, 5, 12])
    every_item = torch.arange(53)[None, :].expand(len(users), -1)
    monkeypatch.setattr(neumf_module, "_TILE_VALUES", 2 * 53 * layers[1])  # two users per tile
    with torch.no_grad():
        net.eval()
        expected = net.forward(users, every_item)
        torch.testing.assert_close(net.score_all(users), expected, rtol=1e-5, atol=1e-6)
        net.train()  # dropout on: the general path, masks and all
        for layer in net.modules():
            if hasattr(layer, "generator"):
                layer.generator = torch.Generator().manual_seed(1)
        trained = net.score_all(users)
        assert trained.shape == expected.shape and not torch.allclose(trained, expected)


@pytest.mark.parametrize("p", [0.5, 0.1, 0.3])
def test_seeded_dropout_keeps_each_value_with_probability_one_minus_p(p: float) -> None:
    # The mask is cut from 16-bit draws: every bit of them must be uniform (a draw that leaves the sign bit 0 keeps
    # 3/8 instead of 1/2 at p = 0.5), the kept share must be 1 − p, the kept values scaled by 1 / (1 − p), and the same
    # generator seed must give the same mask.
    layer = SeededDropout(p)
    layer.generator = torch.Generator().manual_seed(3)
    x = torch.rand(1000, 1001, dtype=torch.float32) + 0.5  # odd size: the draws are cut from 64-bit words
    x.requires_grad_(True)
    out = layer(x)
    kept = out != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.003  # ≥ 6σ with a million values
    torch.testing.assert_close(out[kept], x.detach()[kept] / (1 - p))
    out.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, kept.float() / (1 - p))
    layer.generator = torch.Generator().manual_seed(3)
    assert torch.equal(layer(x.detach()), out.detach())
    layer.eval()
    assert layer(x) is x


# ---- the shared machinery, through each model --------------------------------------------------------------

FAST = {
    "gru4rec": dataclasses.replace(TINY_GRU, max_epochs=3),
    "caser": dataclasses.replace(TINY_CASER, max_epochs=3),
    "neumf": dataclasses.replace(TINY_NEUMF, max_epochs=3),
}
CLASSES: dict[str, type[NeuralRecommender]] = {"gru4rec": GRU4Rec, "caser": Caser, "neumf": NeuMF}


@pytest.mark.parametrize("name", list(FAST))
def test_save_load_and_seed_determinism(name: str, tmp_path: Path) -> None:
    data = _cyclic(n_users=30)
    cls, config = CLASSES[name], FAST[name]
    model = cls(config).fit(data, RunSettings(seed=5))
    users = np.array([0, 3, 29, -1])
    loaded = cls.load(model.save(tmp_path / f"{name}.npz"))
    assert loaded.config == model.config
    np.testing.assert_allclose(loaded.score(users), model.score(users), rtol=1e-5, atol=1e-6)
    assert loaded.training_log_.validation_ndcg == model.training_log_.validation_ndcg
    same = cls(config).fit(data, RunSettings(seed=5)).score(users)
    np.testing.assert_array_equal(same, model.score(users))
    other = cls(config).fit(data, RunSettings(seed=6)).score(users)
    assert not np.array_equal(other, same)
    # The fit forks torch's global RNG: the caller's random stream is untouched.
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    cls(config).fit(data, RunSettings(seed=5))
    assert torch.equal(torch.rand(1), expected)


@pytest.mark.parametrize("name", list(FAST))
def test_early_stopping_keeps_the_best_epoch(name: str) -> None:
    data = _cyclic(n_users=30)
    config = dataclasses.replace(FAST[name], max_epochs=6, patience=1, validation_fraction=0.2, refit=False)
    reports: list[tuple[str, float]] = []
    model = CLASSES[name](config).fit(data, RunSettings(seed=1, progress=lambda s, f: reports.append((s, f))))
    log = model.training_log_
    curve = log.validation_ndcg
    assert len(curve) == log.epochs == len(log.seconds_per_epoch) == len(log.train_loss)
    assert log.best_epoch == int(np.argmax(curve)) + 1
    # patience=1: training stops at the first epoch that does not improve on the best so far.
    assert log.epochs == config.max_epochs or curve[-1] <= max(curve[:-1])
    fractions = [f for _, f in reports]
    assert all(stage == name for stage, _ in reports)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert log.refit_seconds == 0.0
    # A refit on more data trains the chosen epoch count on everything, without early stopping again.
    assert model.refit_config() == dataclasses.replace(config, max_epochs=log.best_epoch, validation_fraction=0.0)
    # The weights kept are the best epoch's: re-scoring the validation slice reproduces its NDCG.
    head, tail = SequenceData.from_interactions(data, np.random.default_rng(1)).split_tail(0.2)
    validation = Validation.from_split(head, tail)
    assert validation is not None
    assert validation.ndcg(lambda u: model._scores(u, head)) == pytest.approx(max(curve), abs=1e-6)


def test_refit_equals_a_fresh_fit_on_everything_for_the_best_epoch_count() -> None:
    data = _cyclic(n_users=30)
    config = dataclasses.replace(FAST["neumf"], max_epochs=4, validation_fraction=0.25, refit=True)
    reports: list[str] = []
    model = NeuMF(config).fit(data, RunSettings(seed=2, progress=lambda stage, _: reports.append(stage)))
    log = model.training_log_
    assert log.refit_seconds > 0 and reports[-1] == "neumf (refit)"
    # Same seed, same initial weights, all events, best_epoch epochs, no validation: the same network.
    plain = dataclasses.replace(config, max_epochs=log.best_epoch, validation_fraction=0.0, refit=False)
    direct = NeuMF(plain).fit(data, RunSettings(seed=2))
    users = np.arange(30)
    np.testing.assert_array_equal(model.score(users), direct.score(users))
    without = NeuMF(dataclasses.replace(config, refit=False)).fit(data, RunSettings(seed=2))
    assert not np.array_equal(without.score(users), model.score(users))


def test_recency_weights_by_hand() -> None:
    seq = SequenceData.from_lists([[4, 5, 6], [7]], n_items=8)
    np.testing.assert_allclose(recency_weights(seq, 2.0), [0.5, 0.5**0.5, 1.0, 1.0])
    np.testing.assert_array_equal(recency_weights(seq, None), [1, 1, 1, 1])
    # Without event times the order is random: a weight by position would weigh a seed-chosen subset.
    unordered = dataclasses.replace(seq, ordered=False)
    np.testing.assert_array_equal(recency_weights(unordered, 2.0), [1, 1, 1, 1])


def test_neumf_with_a_half_life_short_enough_to_zero_whole_batches_still_fits() -> None:
    # Old events' float32 weights underflow to 0; a batch of only those divided 0 by 0 and the fit failed with a
    # NaN loss "lower learning_rate". Such a batch now has loss 0.
    rng = np.random.default_rng(0)
    n = 6_000
    data = Interactions.from_arrays(
        rng.integers(0, 100, n), rng.integers(0, 300, n), timestamp=np.arange(n), n_users=100, n_items=300
    )
    model = NeuMF(NeuMFConfig(recency_half_life=0.01, max_epochs=1, batch_size=64)).fit(data, RunSettings(seed=1))
    assert np.isfinite(model.score(np.arange(5))).all()


def test_neumf_without_timestamps_trains_the_same_with_or_without_a_half_life() -> None:
    timed = _cyclic(n_users=30)
    data = Interactions.from_arrays(timed.user, timed.item, n_users=timed.n_users, n_items=timed.n_items)
    assert SequenceData.from_interactions(data, np.random.default_rng(0)).ordered is False
    config = dataclasses.replace(TINY_NEUMF, max_epochs=3)
    halved = NeuMF(dataclasses.replace(config, recency_half_life=2.0)).fit(data, RunSettings(seed=1, threads=1))
    equal = NeuMF(dataclasses.replace(config, recency_half_life=None)).fit(data, RunSettings(seed=1, threads=1))
    np.testing.assert_array_equal(halved.score(np.arange(30)), equal.score(np.arange(30)))
    # With times the half-life does weigh: the check above is not vacuous.
    on_timed = NeuMF(dataclasses.replace(config, recency_half_life=2.0)).fit(timed, RunSettings(seed=1, threads=1))
    plain = NeuMF(dataclasses.replace(config, recency_half_life=None)).fit(timed, RunSettings(seed=1, threads=1))
    assert not np.array_equal(on_timed.score(np.arange(30)), plain.score(np.arange(30)))


def test_users_without_history_score_like_popularity() -> None:
    data = _cyclic(n_users=10)
    # Widen the user space: users 10 and 11 are known indices without a single event.
    wide = Interactions.from_arrays(data.user, data.item, timestamp=data.timestamp, n_users=12, n_items=12)
    model = GRU4Rec(FAST["gru4rec"]).fit(wide, RunSettings(seed=0))
    scores = model.score(np.array([10, 11, 0]))
    np.testing.assert_array_equal(scores[:2], np.tile(wide.item_counts.astype(np.float32), (2, 1)))
    assert not np.array_equal(scores[2], scores[0])


@pytest.mark.parametrize(
    ("cls", "field", "value", "match"),
    [
        (GRU4RecConfig, "loss", "mse", "loss"),
        (GRU4RecConfig, "max_len", 0, "max_len"),
        (CaserConfig, "window", 0, "window"),
        (NeuMFConfig, "mlp_layers", (7, 4), "mlp_layers"),
        (NeuMFConfig, "negatives", 0, "negatives"),
        (GRU4RecConfig, "validation_fraction", 1.0, "validation_fraction"),
        (CaserConfig, "patience", 0, "patience"),
        # A negative weight rewards ever larger negative scores: the loss fell to -625 and the fit "succeeded".
        (GRU4RecConfig, "bpr_reg", -5.0, "bpr_reg must be ≥ 0"),
        # Near 1 the masks kept nothing (from ~0.999992) or were scaled off by 9 % (0.9999).
        (CaserConfig, "dropout", 0.999995, r"dropout must lie in \[0, 0.99\]"),
        (NeuMFConfig, "learning_rate", float("inf"), "learning_rate must be a finite number"),
    ],
)
def test_configs_reject_bad_values(cls: type, field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**{field: value})


@pytest.mark.parametrize("name", ["neumf", "caser"])
def test_a_fit_whose_network_cannot_score_fails(name: str) -> None:
    # The loss is checked before each step; the last step's update was not, and a refit (no validation slice)
    # returned weights whose scores overflowed to inf / NaN and ranked arbitrarily.
    rng = np.random.default_rng(0)
    users, items = np.nonzero(rng.random((40, 30)) < 0.4)
    data = Interactions.from_arrays(users, items, timestamp=rng.permutation(len(users)), n_users=40, n_items=30)
    config = {
        "neumf": NeuMFConfig(learning_rate=1e6, max_epochs=2, validation_fraction=0.0),
        "caser": CaserConfig(learning_rate=1e30, max_epochs=1, validation_fraction=0.0, batch_size=10**6),
    }[name]
    model = {"neumf": NeuMF, "caser": Caser}[name](config)
    with pytest.raises(FloatingPointError, match=rf"{name}: .*(non-finite weights|inf or NaN).*learning_rate"):
        model.fit(data, RunSettings(seed=1, threads=1))


def test_unknown_device_is_refused_before_training() -> None:
    with pytest.raises(ValueError, match="device"):
        GRU4Rec(FAST["gru4rec"]).fit(_cyclic(n_users=5), RunSettings(device="tpu"))


@pytest.mark.parametrize("name", ["neumf", "caser", "gru4rec"])
def test_fits_running_side_by_side_in_threads_match_a_fit_alone(name: str) -> None:
    """The flow trains models in parallel threads: dropout and initial weights must not share torch's RNG."""
    import threading

    from recmodels.registry import get_model_class

    rng = np.random.default_rng(5)
    n_users, n_items, n_events = 60, 40, 1_500
    data = Interactions.from_arrays(
        rng.integers(0, n_users, n_events),
        rng.integers(0, n_items, n_events),
        timestamp=np.arange(n_events, dtype=np.int64),
        n_users=n_users,
        n_items=n_items,
    )
    cls = get_model_class(name)
    config = dataclasses.replace(cls.config_class(), max_epochs=2, dropout=0.5)
    users = np.arange(n_users)

    def scores() -> np.ndarray:
        return cls(config).fit(data, RunSettings(seed=11)).score(users)

    alone = scores()
    results: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, scores())) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert np.array_equal(results[0], alone) and np.array_equal(results[1], alone)


def test_stacked_gru4rec_is_reproducible_whatever_the_global_rng_and_loads_older_files(tmp_path: Path) -> None:
    # Dropout between stacked layers used torch's process-wide RNG: two fits with one seed differed when anything
    # else (another model in a parallel thread) had drawn from it in between.
    data = _cyclic(n_users=20)
    config = dataclasses.replace(FAST["gru4rec"], layers=2, dropout=0.3, validation_fraction=0.0)
    users = np.arange(5)
    torch.manual_seed(1)
    first = GRU4Rec(config).fit(data, RunSettings(seed=3))
    torch.manual_seed(2)
    second = GRU4Rec(config).fit(data, RunSettings(seed=3))
    np.testing.assert_array_equal(first.score(users), second.score(users))
    # A file saved under the names of the former ``nn.GRU(layers=2)`` (``gru.*_l1``) loads into today's layout.
    path = first.save(tmp_path / "stacked.npz")
    with np.load(path) as saved:
        arrays = {name: saved[name] for name in saved.files}
    prefix = "state/weights."  # how Recommender.save names the network weights
    upper = f"{prefix}upper.0."
    renamed = {
        (f"{prefix}gru." + name.removeprefix(upper).replace("_l0", "_l1") if name.startswith(upper) else name): value
        for name, value in arrays.items()
    }
    assert any(name.startswith(f"{prefix}gru.") and name.endswith("_l1") for name in renamed)
    np.savez(tmp_path / "older.npz", **renamed)
    older = GRU4Rec.load(tmp_path / "older.npz")
    np.testing.assert_array_equal(older.score(users), first.score(users))
