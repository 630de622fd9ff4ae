"""Implicit ALS (recmodels.mf.als): confidences, the CG solver against exact solves, the loss, ML-100K quality.

Also covers the shared torch helpers (recmodels.torch_utils) that every torch model relies on.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import recmodels.mf.als as als_module
from recforge.data.movielens import load_movielens_100k
from recforge.evaluation import evaluate_topn
from recforge.split import TemporalSplit, temporal_holdout
from recmodels.base import RunSettings
from recmodels.data import Interactions
from recmodels.mf.als import ALS, ALSConfig, als_loss, confidence_matrix, conjugate_gradient_update
from recmodels.torch_utils import dense_product, resolve_device, seeded_generator, set_threads


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Run on one intra-op thread, restored afterwards: on a busy 2-core machine, two OpenMP threads that spin
    while waiting for each other made this file about 7× slower (unless OMP_WAIT_POLICY=PASSIVE is set)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _random_interactions(n_users: int = 30, n_items: int = 20, density: float = 0.25, seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    user, item = np.nonzero(mask)
    rating = rng.integers(1, 6, len(user)).astype(np.float32)
    return Interactions.from_arrays(user, item, rating=rating, n_users=n_users, n_items=n_items)


def _exact_rows(conf: sp.csr_matrix, y: np.ndarray, reg: float) -> np.ndarray:
    """Each row's exact solution of (YᵀY + λI + Σ (c−1) y yᵀ) x = Σ c y, one dense solve per row."""
    f = y.shape[1]
    out = np.zeros((conf.shape[0], f))
    for row in range(conf.shape[0]):
        cols = conf.indices[conf.indptr[row] : conf.indptr[row + 1]]
        c = conf.data[conf.indptr[row] : conf.indptr[row + 1]].astype(np.float64)
        yi = y[cols].astype(np.float64)
        a = y.T.astype(np.float64) @ y + reg * np.eye(f) + yi.T @ ((c - 1.0)[:, None] * yi)
        out[row] = np.linalg.solve(a, yi.T @ c)
    return out


# ---- confidences and the loss -------------------------------------------------------------------------


def test_confidence_linear_and_log_by_hand() -> None:
    data = Interactions.from_arrays([0, 0, 1], [0, 1, 1], rating=[4.0, 1.0, 2.0], n_users=2, n_items=2)
    linear = confidence_matrix(data, alpha=2.0, use_ratings=True).toarray()
    np.testing.assert_allclose(linear, [[1 + 2 * 4, 1 + 2 * 1], [0, 1 + 2 * 2]])
    log = confidence_matrix(data, alpha=2.0, scaling="log", epsilon=0.5, use_ratings=True).toarray()
    np.testing.assert_allclose(log[0], [1 + 2 * np.log(1 + 4 / 0.5), 1 + 2 * np.log(1 + 1 / 0.5)], rtol=1e-6)
    binary = confidence_matrix(data, alpha=2.0)  # ratings ignored unless asked for
    np.testing.assert_allclose(binary.toarray(), [[3, 3], [0, 3]])
    assert np.shares_memory(binary.indices, data.binary.indices)  # only the confidences are new memory
    assert confidence_matrix(data, alpha=0.0) is data.binary  # all ones already
    np.testing.assert_allclose(data.binary.toarray(), [[1, 1], [0, 1]])  # and it was not modified


def test_confidence_refuses_negative_ratings() -> None:
    data = Interactions.from_arrays([0], [0], rating=[-1.0], n_users=1, n_items=1)
    with pytest.raises(ValueError, match="negative"):
        confidence_matrix(data, alpha=1.0, use_ratings=True)


def test_loss_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    conf = confidence_matrix(_random_interactions(6, 5, 0.4), alpha=3.0)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(5, 3))
    dense_c = np.where(conf.toarray() > 0, conf.toarray(), 1.0)
    p = (conf.toarray() > 0).astype(float)
    expected = np.sum(dense_c * (p - x @ y.T) ** 2) + 0.7 * (np.sum(x**2) + np.sum(y**2))
    assert als_loss(conf, x, y, 0.7) == pytest.approx(expected, rel=1e-10)


# ---- the solver --------------------------------------------------------------------------------------


def test_cg_one_factor_by_hand() -> None:
    # One user with item 0 (c = 3); y = [1, 2]; λ = 1. A = Σ y² + λ + (c − 1)·1² = 1 + 4 + 1 + 2 = 8, b = c·1 = 3.
    # With f = 1 a single CG step is exact: x = 3/8.
    conf = sp.csr_matrix(np.array([[3.0, 0.0]], dtype=np.float32))
    x = torch.tensor([[0.5]])
    conjugate_gradient_update(conf, x, torch.tensor([[1.0], [2.0]]), regularization=1.0, steps=1)
    assert x.item() == pytest.approx(3 / 8, rel=1e-6)


def test_cg_converges_to_the_exact_per_user_solve() -> None:
    conf = confidence_matrix(_random_interactions(), alpha=4.0, use_ratings=True)
    rng = np.random.default_rng(2)
    y = rng.normal(size=(20, 6)).astype(np.float32)
    x0 = rng.normal(size=(30, 6)).astype(np.float32)
    exact = _exact_rows(conf, y, reg=0.5)

    one_step = torch.from_numpy(x0.copy())
    conjugate_gradient_update(conf, one_step, torch.from_numpy(y), 0.5, steps=1)
    many_steps = torch.from_numpy(x0.copy())
    conjugate_gradient_update(conf, many_steps, torch.from_numpy(y), 0.5, steps=12)

    start_error = np.abs(x0 - exact).max()
    one_error = np.abs(one_step.numpy() - exact).max()
    assert one_error < start_error  # a single warm-started step already moves towards the solution ...
    assert one_error > 1e-3  # ... without reaching it (so the next assertion is about CG, not luck)
    np.testing.assert_allclose(many_steps.numpy(), exact, atol=2e-4)  # f = 6 steps suffice in exact arithmetic


def test_cg_blocks_of_any_length_agree() -> None:
    # Rows of 1..40 items land in differently padded blocks (and both product kernels); tiny blocks force many.
    rng = np.random.default_rng(3)
    lengths = np.arange(1, 41)
    user = np.repeat(np.arange(len(lengths)), lengths)
    item = np.concatenate([rng.choice(60, n, replace=False) for n in lengths])
    data = Interactions.from_arrays(user, item, n_users=len(lengths), n_items=60)
    conf = confidence_matrix(data, alpha=1.5)
    y = torch.from_numpy(rng.normal(size=(60, 4)).astype(np.float32))
    x_small = torch.zeros(len(lengths), 4)
    conjugate_gradient_update(conf, x_small, y, 2.0, steps=8, block_values=64)
    x_large = torch.zeros(len(lengths), 4)
    conjugate_gradient_update(conf, x_large, y, 2.0, steps=8, block_values=1 << 20)
    exact = _exact_rows(conf, y.numpy(), 2.0)
    np.testing.assert_allclose(x_small.numpy(), exact, atol=1e-4)
    np.testing.assert_allclose(x_large.numpy(), exact, atol=1e-4)


def test_uniform_confidence_is_solved_exactly_in_one_pass() -> None:
    # alpha = 0 on binary data: every c is 1, the rows share YᵀY + λI and the update is exact whatever ``steps``.
    conf = confidence_matrix(_random_interactions(seed=4), alpha=0.0)
    y = np.random.default_rng(5).normal(size=(20, 5)).astype(np.float32)
    x = torch.full((30, 5), 9.0)
    conjugate_gradient_update(conf, x, torch.from_numpy(y), 1.5, steps=1)
    np.testing.assert_allclose(x.numpy(), _exact_rows(conf, y, 1.5), atol=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 2.0])
def test_loss_decreases_every_iteration(alpha: float) -> None:
    data = _random_interactions(40, 25, 0.2, seed=6)
    conf = confidence_matrix(data, alpha=alpha)
    losses = []
    for iterations in range(1, 7):
        model = ALS(ALSConfig(factors=5, iterations=iterations, regularization=0.3, alpha=alpha)).fit(data)
        losses.append(als_loss(conf, model.user_factors_, model.item_factors_, 0.3))
    assert all(later < earlier for earlier, later in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.9 * losses[0]


# ---- the model ---------------------------------------------------------------------------------------


def test_scores_are_factor_products_and_seed_determines_them() -> None:
    data = _random_interactions(seed=7)
    config = ALSConfig(factors=4, iterations=3, alpha=2.0, regularization=0.5)
    first = ALS(config).fit(data, RunSettings(seed=5))
    again = ALS(config).fit(data, RunSettings(seed=5))
    other = ALS(config).fit(data, RunSettings(seed=6))
    users = np.arange(data.n_users)
    np.testing.assert_array_equal(first.score(users), again.score(users))
    assert not np.allclose(first.user_factors_, other.user_factors_)
    np.testing.assert_allclose(first.score(users), first.user_factors_ @ first.item_factors_.T, rtol=1e-6)


def test_device_and_threads_settings_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _random_interactions(seed=8)
    torch.set_num_threads(2)  # the autouse fixture restores the original count
    during: list[int] = []
    settings = RunSettings(device="cpu", threads=1, progress=lambda s, f: during.append(torch.get_num_threads()))
    ALS(ALSConfig(factors=3, iterations=1)).fit(data, settings)
    assert during == [1] and torch.get_num_threads() == 2  # the fit's count, then the caller's again
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        ALS(ALSConfig(factors=3, iterations=1)).fit(data, RunSettings(device="cuda"))


@pytest.mark.parametrize(
    ("threaded_pairs", "threads", "training_threads", "threads_after"),
    [(10**9, 2, 1, 3), (10**9, None, 1, 3), (0, 2, 2, 3), (0, None, 3, 3)],
)
def test_small_data_trains_on_one_thread_whatever_the_setting(
    monkeypatch: pytest.MonkeyPatch, threaded_pairs: int, threads: int | None, training_threads: int, threads_after: int
) -> None:
    """Below ``_THREADED_PAIRS`` observed pairs a fit trains on one thread; larger data trains with the count
    named (or with torch's own when none is); either way the caller's count is put back afterwards."""
    monkeypatch.setattr(als_module, "_THREADED_PAIRS", threaded_pairs)
    during: list[int] = []
    torch.set_num_threads(3)  # the autouse fixture restores the original count
    settings = RunSettings(device="cpu", threads=threads, progress=lambda s, f: during.append(torch.get_num_threads()))
    ALS(ALSConfig(factors=3, iterations=2, alpha=1.0)).fit(_random_interactions(seed=10), settings)
    assert during == [training_threads] * 2
    assert torch.get_num_threads() == threads_after


def test_progress_is_reported_per_iteration() -> None:
    seen: list[tuple[str, float]] = []
    ALS(ALSConfig(factors=3, iterations=4)).fit(
        _random_interactions(seed=9), RunSettings(progress=lambda stage, done: seen.append((stage, done)))
    )
    assert seen == [("als", 0.25), ("als", 0.5), ("als", 0.75), ("als", 1.0)]


@pytest.mark.parametrize(
    ("field", "value"),
    [("factors", 0), ("iterations", 0), ("regularization", 0.0), ("alpha", -1.0), ("confidence", "exp"),
     ("epsilon", 0.0), ("cg_steps", 0), ("init_scale", 0.0)],
)  # fmt: skip
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field if field != "confidence" else "linear"):
        ALSConfig(**{field: value})


def test_a_singular_gram_matrix_is_a_clear_error() -> None:
    # 64 factors over 15 items: YᵀY is singular and λ = 1e-5 is lost in float32; torch's LinAlgError named neither.
    data = _random_interactions(seed=3)
    with pytest.raises(ValueError, match=r"regularization 1e-05 and 64 factors over \d+ rows; raise regularization"):
        ALS(ALSConfig(regularization=1e-5)).fit(data, RunSettings(seed=0))


# ---- torch helpers -----------------------------------------------------------------------------------


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda:0")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_seeded_generator_is_local_and_repeatable() -> None:
    torch.manual_seed(0)
    global_before = torch.rand(1)
    torch.manual_seed(0)
    first = torch.rand(3, generator=seeded_generator(11, "cpu"))
    second = torch.rand(3, generator=seeded_generator(11, torch.device("cpu")))
    assert torch.equal(first, second)
    assert torch.equal(torch.rand(1), global_before)  # the global stream was not consumed


def test_set_threads_returns_previous_and_validates() -> None:
    torch.set_num_threads(2)  # the autouse fixture restores the original count
    assert set_threads(1) == 2
    assert set_threads(None) == 1 and torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="threads"):
        set_threads(0)


# ---- MovieLens 100K ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ml_split(ml100k_dir: Path) -> TemporalSplit:
    return temporal_holdout(load_movielens_100k(ml100k_dir).interactions, test_fraction=0.2)


def test_ml100k_default_reaches_the_bar(ml_split: TemporalSplit) -> None:
    # Bar: implicit's ALS (64 factors, 15 iterations, regularization 10, alpha 1) measures 0.199 here.
    result = evaluate_topn(ALS, ml_split, k=10, settings=RunSettings(seed=42))
    assert result["users"] == 943
    assert result["ndcg"] >= 0.199, result


def test_ml100k_cg_path_with_real_confidence_weighting(ml_split: TemporalSplit) -> None:
    # alpha > 0 goes through the CG solver (the default alpha 0 solves exactly); validation score 0.173 there.
    config = ALSConfig(alpha=2.0, regularization=20.0)
    result = evaluate_topn(lambda: ALS(config), ml_split, k=10, settings=RunSettings(seed=42))
    assert result["ndcg"] >= 0.18, result


def test_dense_product_is_numpys_product_for_the_layouts_models_pass() -> None:
    # The factor models score through torch (dense_product); the result must be numpy's @ for the layouts they
    # hand it: a gathered batch times a transposed factor matrix, float32 or float64, mixed, read-only, empty.
    rng = np.random.default_rng(3)
    users32 = rng.standard_normal((5, 4)).astype(np.float32)
    items32 = rng.standard_normal((7, 4)).astype(np.float32)
    out = dense_product(users32, items32.T)
    assert out.dtype == np.float32 and out.shape == (5, 7) and out.flags.writeable
    np.testing.assert_allclose(out, users32 @ items32.T, rtol=1e-5, atol=1e-6)
    items64 = items32.astype(np.float64)
    mixed = dense_product(users32, items64.T)
    assert mixed.dtype == np.float64
    np.testing.assert_allclose(mixed, users32.astype(np.float64) @ items64.T, rtol=1e-12)
    frozen = items32.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps a read-only array
        np.testing.assert_allclose(dense_product(users32, frozen.T), users32 @ items32.T, rtol=1e-5, atol=1e-6)
    assert dense_product(users32[:0], items32.T).shape == (0, 7)
    assert np.array_equal(dense_product(np.zeros((3, 0)), np.zeros((0, 7))), np.zeros((3, 7)))


def test_csr_tensors_are_built_without_touching_the_warnings_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch's once-per-process "CSR is beta" warning is drawn when torch_utils is imported, so sparse_csr needs no
    # catch_warnings, which is not thread-safe (two threads inside it at once can leave one's filter installed for
    # the whole process) — and sparse_csr runs in model and block threads. With warnings as errors, in 8 threads:
    from concurrent.futures import ThreadPoolExecutor

    from recmodels.torch_utils import sparse_csr

    def no_catch_warnings(*args: object, **kwargs: object) -> None:
        raise AssertionError("sparse_csr changed the process-wide warnings filters")

    def build(i: int) -> int:
        tensor = sparse_csr(torch.tensor([0, 1, 2]), torch.tensor([0, i % 2]), torch.ones(2), (2, 2))
        return int(tensor.to_dense().sum())

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.setattr(warnings, "catch_warnings", no_catch_warnings)
        with ThreadPoolExecutor(max_workers=8) as pool:
            assert list(pool.map(build, range(64))) == [2] * 64
        monkeypatch.undo()
