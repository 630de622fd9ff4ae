"""The shared model contract: every registered model passes these, on real MovieLens 100K data.

A new model joins by being registered and naming its minimum NDCG@10 under the standard protocol below.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from recforge.data.movielens import load_movielens_100k
from recforge.evaluation import relevance_matrix
from recforge.ids import IdIndex
from recforge.metrics import topn_metrics
from recforge.split import TemporalSplit, temporal_holdout
from recmodels import base as recmodels_base
from recmodels.base import Recommender, RunSettings, top_k, topk_set
from recmodels.data import Interactions
from recmodels.registry import DEFAULT_MODELS, families, get_model_class, hyperparameters, model_names

# Minimum NDCG@10 on ML-100K (per-user temporal holdout, 20%): a floor a little under what each model measures,
# so a regression fails while run-to-run noise does not. docs/BENCHMARKS.md has the measured values.
MIN_NDCG = {
    "popularity": 0.11,
    "item_knn": 0.19,
    "user_knn": 0.185,
    "neumf": 0.19,
    "caser": 0.19,
    "gru4rec": 0.215,
    "als": 0.195,
    "bpr": 0.18,
    "pure_svd": 0.185,
    "biased_mf": 0.19,
    "nmf": 0.18,
    "ease": 0.235,
}


@pytest.fixture(scope="module")
def ml_split(ml100k_dir: Path) -> TemporalSplit:
    return temporal_holdout(load_movielens_100k(ml100k_dir).interactions, test_fraction=0.2)


@pytest.fixture(scope="module")
def ml_index(ml_split: TemporalSplit) -> IdIndex:
    return IdIndex.from_frame(ml_split.train)


@pytest.fixture(scope="module")
def ml_train(ml_split: TemporalSplit, ml_index: IdIndex) -> Interactions:
    return ml_index.interactions(ml_split.train, ratings=True)


@pytest.fixture(scope="module")
def fitted(ml_train: Interactions) -> Callable[[str], Recommender]:
    """Each model fitted once on the ML-100K training part and shared by the tests (neural fits are costly)."""
    cache: dict[str, Recommender] = {}

    def get(name: str) -> Recommender:
        if name not in cache:
            cache[name] = get_model_class(name)().fit(ml_train, RunSettings(seed=7))
        return cache[name]

    return get


def _ndcg(model: Recommender, split: TemporalSplit, index: IdIndex) -> dict[str, float]:
    users, relevant = relevance_matrix(index, split.test)
    items, _ = model.recommend(users, 10)
    return topn_metrics(items, relevant, k=10, n_items=index.n_items)


def test_every_model_has_a_floor() -> None:
    assert set(MIN_NDCG) == set(model_names())
    assert set(DEFAULT_MODELS) <= set(model_names())
    assert sum(len(v) for v in families().values()) == len(model_names())


@pytest.mark.parametrize("name", model_names())
def test_every_hyperparameter_is_documented(name: str) -> None:
    # `recforge models --params` shows these texts, and `model_params` may set every field.
    described = hyperparameters(name)
    assert [h.name for h in described] == list(get_model_class(name).config_class.__dataclass_fields__)
    assert all(len(h.doc) > 10 for h in described), [h.name for h in described if len(h.doc) <= 10]
    assert {h.name: h.default for h in described} == get_model_class(name).config_class().to_dict()


@pytest.mark.parametrize("name", model_names())
def test_every_float_hyperparameter_must_be_finite(name: str) -> None:
    # NaN passes `x < 0` and infinity `not x > 0`; `--param als.alpha=NaN` reads as a float. Accepted, they gave NaN
    # scores, all-zero similarities or unrelated errors deep inside a fit.
    from recforge.config import check_model_params

    floats = [h.name for h in hyperparameters(name) if "float" in h.type]
    assert floats, name
    for field in floats:
        for value in (float("nan"), float("inf"), float("-inf")):
            with pytest.raises(ValueError, match=rf"^{name}: {field} must be a finite number, got {value}$"):
                check_model_params(name, {field: value})


@pytest.mark.parametrize("name", model_names())
def test_fits_ml100k_and_reaches_its_floor(
    name: str, ml_split: TemporalSplit, ml_index: IdIndex, fitted: Callable[[str], Recommender]
) -> None:
    metrics = _ndcg(fitted(name), ml_split, ml_index)
    assert metrics["users"] == 943
    assert metrics["ndcg"] >= MIN_NDCG[name], metrics
    if name != "popularity":
        popularity = _ndcg(fitted("popularity"), ml_split, ml_index)["ndcg"]
        assert metrics["ndcg"] > popularity + 0.02, (metrics["ndcg"], popularity)


@pytest.mark.parametrize("name", model_names())
def test_unknown_users_get_popularity(name: str, ml_train: Interactions, fitted: Callable[[str], Recommender]) -> None:
    model = fitted(name)
    scores = model.score(np.array([-1, ml_train.n_users, 10**9]))
    expected = ml_train.item_counts.astype(np.float32)
    assert np.array_equal(scores, np.tile(expected, (3, 1)))
    items, _ = model.recommend(np.array([-1]), k=5)
    assert list(items[0]) == list(np.argsort(-expected, kind="stable")[:5])


@pytest.mark.parametrize("name", model_names())
def test_recommend_excludes_seen_and_is_sorted(
    name: str, ml_train: Interactions, fitted: Callable[[str], Recommender]
) -> None:
    model = fitted(name)
    users = np.arange(0, ml_train.n_users, 97)
    items, scores = model.recommend(users, k=20)
    assert items.shape == scores.shape == (len(users), 20)
    seen = ml_train.binary
    for row, user in enumerate(users):
        assert not set(items[row]) & set(seen[user].indices)
        assert np.all(np.diff(scores[row]) <= 0)
    with_seen, _ = model.recommend(users[:3], k=20, exclude_seen=False)
    assert with_seen.shape == (3, 20)
    # Batches bounded by SCORE_BATCH_VALUES (here: 2 users each) give the same lists; the deep models' matrix
    # products round differently by batch shape, in the last float32 bits of each term. A score near 0 is a sum
    # of terms that cancel, so its rounding is bounded relative to the scores' scale, not to itself (NeuMF gave
    # -0.0019120 vs -0.0019118 among scores up to 3).
    scale = float(np.abs(scores[np.isfinite(scores)]).max(initial=1.0))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recmodels_base, "SCORE_BATCH_VALUES", 2 * ml_train.n_items)
        small_items, small_scores = model.recommend(users, k=20)
        # The same batches ranked on one thread and on three (unknown users among them): the same lists; the
        # pool's threads run torch on one thread, so products may round differently in the last bits.
        mixed = np.concatenate([users, [-1, ml_train.n_users]])
        one = model.recommend(mixed, k=20, threads=1)
        three = model.recommend(mixed, k=20, threads=3)
    np.testing.assert_array_equal(one[0], three[0])
    np.testing.assert_allclose(one[1], three[1], rtol=1e-6, atol=1e-7 * scale)
    np.testing.assert_array_equal(one[0][: len(users)], small_items)
    np.testing.assert_array_equal(small_items, items)
    np.testing.assert_allclose(small_scores, scores, rtol=1e-5, atol=1e-6 * scale)


def test_recommend_threads_leave_torch_thread_counts_as_they_were(fitted: Callable[[str], Recommender]) -> None:
    import threading

    import torch

    model = fitted("item_knn")
    users = np.arange(50)
    caller = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recmodels_base, "SCORE_BATCH_VALUES", 3 * model.n_items_)  # 17 batches
        model.recommend(users, k=5, threads=2)
    assert torch.get_num_threads() == caller
    later: list[int] = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [caller]  # a thread started afterwards begins with the caller's count, not the pool's 1
    with pytest.raises(ValueError, match="threads must be"):
        model.recommend(users, k=5, threads=0)


def test_a_small_user_set_is_ranked_in_one_batch_per_thread(fitted: Callable[[str], Recommender]) -> None:
    model = fitted("ease")
    sizes: list[int] = []
    score_known = model._score_known
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model, "_score_known", lambda users: sizes.append(len(users)) or score_known(users))
        for n_users, threads, expected in [(300, 2, [150, 150]), (300, 1, [300]), (100, 2, [36, 64])]:
            sizes.clear()
            model.recommend(np.arange(n_users), k=5, threads=threads)
            assert sorted(sizes) == expected, (n_users, threads)  # batches of at least MIN_SPLIT_BATCH (64)


@pytest.mark.parametrize("name", ["als", "popularity"])
def test_a_model_with_threaded_scoring_ranks_a_small_user_set_in_one_batch(
    name: str, fitted: Callable[[str], Recommender]
) -> None:
    model = fitted(name)
    assert model.threaded_scoring
    sizes: list[int] = []
    score_known = model._score_known
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model, "_score_known", lambda users: sizes.append(len(users)) or score_known(users))
        items, _ = model.recommend(np.arange(300), k=5, threads=2)
    assert sizes == [300]
    np.testing.assert_array_equal(items, model.recommend(np.arange(300), k=5, threads=1)[0])


@pytest.mark.parametrize("name", model_names())
def test_save_load_round_trip(name: str, fitted: Callable[[str], Recommender], tmp_path: Path) -> None:
    model = fitted(name)
    path = model.save(tmp_path / f"{name}.npz")
    loaded = get_model_class(name).load(path)
    users = np.array([0, 5, 500, -1])
    assert loaded.config == model.config
    np.testing.assert_allclose(loaded.score(users), model.score(users), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(loaded.recommend(users, 10)[0], model.recommend(users, 10)[0])


@pytest.mark.parametrize("name", model_names())
def test_same_seed_same_result(name: str, ml_train: Interactions) -> None:
    # A slice of the users keeps two extra fits cheap even for the neural models.
    small = ml_train.subset(ml_train.user < 150)
    users = np.arange(50)
    first = get_model_class(name)().fit(small, RunSettings(seed=3)).score(users)
    second = get_model_class(name)().fit(small, RunSettings(seed=3)).score(users)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("name", model_names())
def test_a_fit_puts_torchs_thread_count_back(name: str, ml_train: Interactions) -> None:
    import torch

    # torch's count is process-wide: als and bpr left the fit's count behind for whatever ran next in the
    # process (a notebook, a benchmark), even after a fit that failed.
    small = ml_train.subset(ml_train.user < 60)
    caller = torch.get_num_threads()
    get_model_class(name)().fit(small, RunSettings(seed=3, threads=caller + 1))
    assert torch.get_num_threads() == caller

    def stop(stage: str, done: float) -> None:
        raise KeyboardInterrupt("stopped")

    with contextlib.suppress(KeyboardInterrupt):  # models that report no progress fit to the end
        get_model_class(name)().fit(small, RunSettings(seed=3, threads=caller + 1, progress=stop))
    assert torch.get_num_threads() == caller


def test_load_refuses_other_model_and_pickles(ml_train: Interactions, tmp_path: Path) -> None:
    path = get_model_class("popularity")().fit(ml_train).save(tmp_path / "pop.npz")
    with pytest.raises(ValueError, match="popularity"):
        get_model_class("item_knn").load(path)
    # An object array can only be stored with pickle; loading must refuse it instead of unpickling.
    crafted = tmp_path / "crafted.npz"
    np.savez(crafted, __model__=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        get_model_class("popularity").load(crafted)


def test_load_refuses_files_whose_arrays_do_not_make_one_model(ml_train: Interactions, tmp_path: Path) -> None:
    # An edited file with 5 extra item rows loaded and recommended items 50-54 of a 50-item catalogue.
    path = get_model_class("als")().fit(ml_train).save(tmp_path / "als.npz")
    with np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files}
    factors = arrays["state/item_factors"]
    broken = {
        "extra_rows": arrays | {"state/item_factors": np.vstack([factors, np.ones((5, factors.shape[1]), np.float32)])},
        "fewer_rows": arrays | {"state/item_factors": factors[:10]},
        "missing_state": {k: v for k, v in arrays.items() if k != "state/item_factors"},
        "short_popularity": arrays | {"__popularity__": arrays["__popularity__"][:-1]},
        "seen_out_of_range": arrays | {"__seen_indices__": arrays["__seen_indices__"] + 10_000},
    }
    for label, content in broken.items():
        np.savez(tmp_path / f"{label}.npz", **content)
        with pytest.raises(ValueError, match=f"{label}.npz is not a consistent als model file"):
            get_model_class("als").load(tmp_path / f"{label}.npz")
    (tmp_path / "truncated.npz").write_bytes(path.read_bytes()[:5_000])
    np.save(tmp_path / "array.npy", np.ones(3))
    for name in ("truncated.npz", "array.npy"):
        with pytest.raises(ValueError, match="not a consistent als model file"):
            get_model_class("als").load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        get_model_class("als").load(tmp_path / "absent.npz")


def test_a_fit_that_fails_leaves_the_earlier_fit_in_place(ml_train: Interactions) -> None:
    # bpr's second fit fails (one item): its catalogue size was already 1 while the factors were still the first
    # fit's, and recommend went on listing items of a 1-item catalogue.
    bpr = get_model_class("bpr")
    model = bpr(bpr.config_class(epochs=2)).fit(ml_train)
    before = model.score(np.arange(5))
    one_item = Interactions.from_arrays(np.arange(5), np.zeros(5, dtype=np.int64), n_users=5, n_items=1)
    with pytest.raises(ValueError, match="at least 2 items"):
        model.fit(one_item)
    assert model.n_items_ == ml_train.n_items
    np.testing.assert_array_equal(model.score(np.arange(5)), before)
    fresh = bpr(bpr.config_class(epochs=2))
    with pytest.raises(ValueError, match="at least 2 items"):
        fresh.fit(one_item)
    with pytest.raises(RuntimeError, match="not fitted"):
        fresh.score(np.arange(2))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's overflow warnings: the overflow is the point
@pytest.mark.parametrize(
    ("name", "params"),
    [("als", {"alpha": 1e20}), ("biased_mf", {"regularization": 1e20})],
)
def test_a_fit_whose_scores_are_not_finite_fails(name: str, params: dict[str, float], ml_train: Interactions) -> None:
    # Each value passes its config's checks; together with the data they overflow float32, and every score was
    # NaN while the fit "succeeded".
    cls = get_model_class(name)
    small = ml_train.subset(ml_train.user < 60)
    with pytest.raises(FloatingPointError, match=f"{name}: the fitted model gives non-finite scores"):
        cls(cls.config_class(**params)).fit(small)


def test_index_arrays_that_int32_cannot_hold_are_refused() -> None:
    # An int64 index of 2**32 + 1 wrapped to 1 (the event went to another user) and 1.9 was truncated to 1.
    with pytest.raises(ValueError, match=r"user indices must fit int32"):
        Interactions.from_arrays(np.array([0, 2**32 + 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"item indices must be integers"):
        Interactions.from_arrays(np.array([0, 1]), np.array([0.4, 1.9]))
    assert Interactions.from_arrays(np.array([0.0, 1.0]), np.array([1, 0], dtype=np.uint8)).user.tolist() == [0, 1]
    # A boolean mask became users 1 and 0 (recommend's user_indices refused it already).
    with pytest.raises(ValueError, match=r"user indices must be integers, got booleans"):
        Interactions.from_arrays(np.array([True, False]), np.array([0, 1]))


@pytest.mark.parametrize("name", ["nmf", "item_knn", "user_knn", "biased_mf"])
def test_predict_takes_one_pair_as_scalars(name: str, ml_train: Interactions) -> None:
    model = get_model_class(name)().fit(ml_train.subset(ml_train.user < 60))
    one = model.predict(0, 1)
    assert one.shape == (1,) and one.tolist() == model.predict(np.array([0]), np.array([1])).tolist()


def test_unknown_model_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="choose from: popularity, item_knn"):
        get_model_class("nope")


def test_unfitted_model_says_so() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        get_model_class("item_knn")().score(np.array([0]))


# ---- model-specific maths ------------------------------------------------------------------------------


def _tiny() -> Interactions:
    # users × items:   i0 i1 i2 i3
    #             u0    1  1  0  0
    #             u1    1  1  1  0
    #             u2    0  0  1  1
    user = np.array([0, 0, 1, 1, 1, 2, 2])
    item = np.array([0, 1, 0, 1, 2, 2, 3])
    return Interactions.from_arrays(user, item, n_users=3, n_items=4)


def test_item_knn_cosine_by_hand() -> None:
    config = get_model_class("item_knn").config_class(neighbors=3, alpha=0.5, exponent=1.0)  # the plain cosine
    model = get_model_class("item_knn")(config).fit(_tiny())
    sim = model.similarity_.toarray()
    # cos(i0, i1) = 2 / (√2·√2) = 1; cos(i0, i2) = 1 / (√2·√2) = 0.5; cos(i2, i3) = 1 / (√2·1) ≈ 0.7071
    assert sim[0, 1] == pytest.approx(1.0)
    assert sim[0, 2] == pytest.approx(0.5)
    assert sim[2, 3] == pytest.approx(1 / np.sqrt(2))
    assert sim[0, 3] == 0.0 and np.all(np.diag(sim) == 0)
    # u0 has i0, i1: score(i2) = sim(i0,i2) + sim(i1,i2) = 1.0; score(i3) = 0
    np.testing.assert_allclose(model.score(np.array([0]))[0, 2:], [1.0, 0.0], atol=1e-6)


def test_item_knn_keeps_only_k_neighbours() -> None:
    config = get_model_class("item_knn").config_class(neighbors=1)
    sim = get_model_class("item_knn")(config).fit(_tiny()).similarity_.toarray()
    assert np.all((sim > 0).sum(axis=1) <= 1)
    assert np.argmax(sim[2]) == 3  # i2's single nearest neighbour is i3 (0.707 > 0.5)


def test_item_knn_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="neighbors"):
        get_model_class("item_knn").config_class(neighbors=0)


@pytest.mark.parametrize(
    ("name", "params"),
    [("item_knn", {"min_similarity": 1.5}), ("user_knn", {"min_similarity": 5.0}), ("item_knn", {"exponent": 1e6})],
)
def test_knn_settings_that_drop_every_similarity_fail_the_fit(name: str, params: dict[str, float]) -> None:
    # Every score was 0 and each list the first unseen items by index (272, 273, 274, …), evaluated and published.
    cls = get_model_class(name)
    rng = np.random.default_rng(0)
    data = Interactions.from_arrays(rng.integers(0, 50, 500), rng.integers(0, 30, 500), n_users=50, n_items=30)
    with pytest.raises(ValueError, match=r"no similarity is left to rank by: .* share .* in the data, but min_sim"):
        cls(cls.config_class(**params)).fit(data)
    assert cls().fit(data).similarity_.nnz > 0  # the defaults keep some on the same data
    lonely = Interactions.from_arrays(np.arange(3), np.arange(3), n_users=3, n_items=3)  # no two share anything
    assert cls(cls.config_class(**params)).fit(lonely).similarity_.nnz == 0  # nothing to lose: not an error


def test_popularity_counts_distinct_users_and_recent_window() -> None:
    data = _tiny()
    model = get_model_class("popularity")().fit(data)
    np.testing.assert_array_equal(model.score(np.array([0]))[0], [2, 2, 2, 1])
    stamped = Interactions.from_arrays(
        data.user,
        data.item,
        timestamp=np.array([0, 0, 0, 0, 86_400 * 10, 86_400 * 10, 86_400 * 9]),
        n_users=3,
        n_items=4,
    )
    recent = get_model_class("popularity")(get_model_class("popularity").config_class(recent_days=2)).fit(stamped)
    np.testing.assert_array_equal(recent.score(np.array([0]))[0], [0, 0, 2, 1])


def test_top_k_orders_ties_by_index_and_marks_exhausted_rows() -> None:
    scores = np.array([[1, 3, 3, 0, -np.inf], [5, 5, 5, 5, 5]], dtype=np.float32)
    items, values = top_k(scores, 3)
    assert items.tolist() == [[1, 2, 0], [0, 1, 2]]
    items, values = top_k(scores, 5)
    assert items[0].tolist() == [1, 2, 0, 3, -1] and np.isneginf(values[0, -1])


def test_top_k_is_a_prefix_of_a_longer_top_k_under_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(200, 300)).astype(np.float32)  # many ties straddle every cut-off
    long_items, _ = top_k(scores, 40)
    for k in (1, 5, 10, 33):
        items, _ = top_k(scores, k)
        np.testing.assert_array_equal(items, long_items[:, :k])
        # Reference: full stable sort by descending score then ascending column.
        reference = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(items, reference)


@pytest.mark.parametrize("width", [1_682, 5_000, 20_011])
def test_topk_set_leaves_out_nothing_above_what_it_returns(width: int) -> None:
    # topk_set's contract (every entry left out is at most the smallest returned), on rows whose n largest values
    # each sit in a chunk of their own among low values: pre-selecting one chunk too few loses one of them.
    import torch

    rng = np.random.default_rng(width)
    for n in (2, 11, 21, 51):
        scores = rng.uniform(0.0, 1.0, size=(40, width)).astype(np.float32)
        for row in scores:
            spots = rng.choice(width // 32, size=min(n, width // 32), replace=False) * 32 + rng.integers(0, 32)
            row[spots] = rng.uniform(2.0, 3.0, size=len(spots))
        values, columns = topk_set(torch.from_numpy(scores), n)
        assert values.shape == (40, n)
        np.testing.assert_array_equal(np.take_along_axis(scores, columns.numpy(), axis=1), values.numpy())
        left_out = scores.copy()
        np.put_along_axis(left_out, columns.numpy(), -np.inf, axis=1)
        assert (left_out.max(axis=1) <= values.numpy().min(axis=1)).all(), n


@pytest.mark.parametrize("kind", ["distinct", "few_values", "clustered", "mostly_exhausted", "flat"])
def test_top_k_of_wide_rows_matches_a_full_sort(kind: str) -> None:
    # Wide enough for top_k's pre-selection by chunk maxima; each kind stresses one way it could go wrong.
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(60, 5_000))
    if kind == "few_values":  # ties straddle every cut-off, inside and outside the selected chunks
        scores = rng.integers(0, 4, size=scores.shape).astype(np.float64)
    elif kind == "clustered":  # the best columns share a few chunks
        scores[:, 100:300] += 5.0
    elif kind == "mostly_exhausted":
        scores[rng.random(scores.shape) < 0.995] = -np.inf
    elif kind == "flat":
        scores = np.zeros(scores.shape)
        scores[:, rng.integers(0, 5_000, 3)] = 1.0
    scores = scores.astype(np.float32)
    for k in (1, 10, 50):
        items, values = top_k(scores, k)
        reference = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        reference_values = np.take_along_axis(scores, reference, axis=1)
        np.testing.assert_array_equal(np.where(np.isneginf(reference_values), -1, reference), items)
        np.testing.assert_array_equal(reference_values, values)


@pytest.mark.parametrize("width", [7, 300, 50_000])
def test_top_k_refuses_nan_scores_naming_the_rows(width: int) -> None:
    # NaN compares false with everything: the exact path failed with "cannot reshape" and torch ranks it first.
    scores = np.random.default_rng(0).random((5, width)).astype(np.float32)
    scores[3, width // 2] = np.nan
    for k in (1, 5, width):
        with pytest.raises(ValueError, match="NaN in 1 of 5 rows \\(first: row 3\\)"):
            top_k(scores, k)


def test_recommend_names_the_model_and_users_whose_scores_are_nan(ml_train: Interactions) -> None:
    model = get_model_class("pure_svd")().fit(ml_train)
    model.item_factors_[5, 0] = np.nan  # a state gone non-finite: every user's score of item 5 is NaN
    message = r"pure_svd scored NaN for 3 of 3 users in a batch \(user indices \[0, 1, 2\]\)"
    with pytest.raises(ValueError, match=message):
        model.recommend(np.array([0, 1, 2]), 10)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"seed": -1}, "seed must lie in"),
        ({"threads": 0}, r"threads must lie in \[1, 1024\]"),
        ({"batch_size": 0}, "batch_size"),
        # Accepted before: fractional and text seeds failed deep in numpy, True became seed 1, and 100,000 threads
        # crashed the interpreter in torch (SIGSEGV).
        ({"seed": 3.0}, r"seed must be a whole number, got 3.0 \(float\)"),
        ({"seed": True}, "seed must be a whole number, got True"),
        ({"seed": "42"}, "seed must be a whole number"),
        ({"threads": 100_000}, r"threads must lie in \[1, 1024\]"),
        ({"threads": 1.5}, "threads must be a whole number"),
        ({"threads": True}, "threads must be a whole number"),
    ],
)
def test_run_settings_refuse_values_a_fit_would_fail_on_later(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunSettings(**settings)  # type: ignore[arg-type]
    assert RunSettings(seed=np.int64(5), threads=np.int32(2)).seed == 5  # numpy's integers are whole numbers


def test_recommend_refuses_what_is_not_a_list_of_user_indices() -> None:
    model = get_model_class("item_knn")().fit(_tiny())
    # Before: 0.9 and 1.7 were users 0 and 1, booleans users 0 and 1, a uint64 2**63 wrapped to a negative index
    # (popularity), and a 2-D array or a scalar failed with an unrelated scipy or len() error.
    for users, message in [
        (np.array([0.9, 1.7]), "integer user indices, got dtype float64"),
        (np.array([True, False]), "integer user indices, got dtype bool"),
        (np.array([2**63], dtype=np.uint64), "beyond int64"),
        (np.array([[0, 1]]), r"1-D array of user indices, got an array of shape \(1, 2\)"),
        (np.int64(0), r"got an array of shape \(\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            model.recommend(users, 2)
    items, _ = model.recommend(np.array([0, 1], dtype=np.uint8), 99)
    assert items.shape == (2, 4)  # k beyond the catalogue is cut to it, as the docstring says
    assert model.recommend([], 2)[0].shape == (0, 2)


_SMALL = {"bpr": {"epochs": 5}, "neumf": {"max_epochs": 2}, "caser": {"max_epochs": 2}, "gru4rec": {"max_epochs": 2}}


@pytest.mark.parametrize("name", model_names())
def test_a_user_in_range_without_events_gets_popularity(name: str) -> None:
    # An index space wider than the events (user 4 has none): every model answers with popularity, as for an
    # index it never saw, instead of all-zero scores in index order or untrained random factors.
    users = np.array([0, 1, 2, 3, 0, 1, 2, 0, 1, 3, 2])
    items = np.array([5, 5, 5, 5, 4, 4, 4, 3, 3, 0, 1])
    ratings = np.array([5, 4, 5, 3, 4, 4, 2, 3, 5, 1, 2], dtype=np.float32)
    data = Interactions.from_arrays(users, items, rating=ratings, timestamp=np.arange(11) * 100, n_users=5, n_items=6)
    cls = get_model_class(name)
    model = cls(cls.config_class(**_SMALL.get(name, {}))).fit(data, RunSettings(seed=7))
    ranked, _ = model.recommend(np.array([4, -1]), 3)
    assert ranked.tolist() == [[5, 4, 3], [5, 4, 3]]


def test_repeated_pairs_keep_their_latest_rating_not_the_sum() -> None:
    data = Interactions.from_arrays([0, 0, 0, 1], [0, 0, 1, 0], rating=[5.0, 3.0, 4.0, 2.0], timestamp=[3, 9, 1, 1])
    assert data.ratings.toarray().tolist() == [[3.0, 4.0], [2.0, 0.0]]  # (0, 0): rated 3 last (t=9)
    assert data.binary.toarray().tolist() == [[1.0, 1.0], [1.0, 0.0]]
    untimed = Interactions.from_arrays([0, 0], [0, 0], rating=[5.0, 3.0])
    assert untimed.ratings.toarray().tolist() == [[3.0]]  # the last in array order
    with pytest.raises(ValueError, match=r"rating holds 1 missing or infinite values \(events 1\)"):
        Interactions.from_arrays([0, 1], [0, 0], rating=[4.0, np.nan])


def test_recommend_and_load_refuse_what_they_cannot_do(tmp_path: Path) -> None:
    model = get_model_class("popularity")().fit(Interactions.from_arrays([0, 1], [0, 1]))
    with pytest.raises(ValueError, match="k must be ≥ 0"):
        model.recommend(np.array([0]), -1)
    path = model.save(tmp_path / "popularity.npz")
    with pytest.raises(TypeError, match="with the class of the model it holds"):
        Recommender.load(path)


def test_recent_popularity_ranks_every_user_alike() -> None:
    # Item 1 is the recent favourite, item 0 the all-time one: a new user gets the trend too.
    data = Interactions.from_arrays([0, 1, 2, 3, 4], [0, 0, 0, 1, 1], timestamp=[0, 0, 0, 99 * 86_400, 99 * 86_400])
    cls = get_model_class("popularity")
    model = cls(cls.config_class(recent_days=10)).fit(data)
    ranked, _ = model.recommend(np.array([4, -1, 50]), 2, exclude_seen=False)
    assert ranked.tolist() == [[1, 0]] * 3
    with pytest.raises(ValueError, match="recent_days must be > 0"):
        cls.config_class(recent_days=0)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("nmf", {"biased": False, "epochs": 20}),
        ("nmf", {"bias_regularization": 0.0, "epochs": 20}),
        ("item_knn", {"mode": "rating", "baseline_reg_users": 0.0, "baseline_reg_items": 0.0}),
        ("user_knn", {"mode": "rating", "baseline_reg_users": 0.0}),
    ],
)
def test_predictions_for_indices_without_ratings_are_finite_baselines(name: str, params: dict[str, object]) -> None:
    # User 3 and item 4 lie inside the index space without a rating: a baseline like unknown indices get, never
    # NaN (0/0 with no regularisation) nor the scale's floor (an untrained unbiased factor product of 0).
    rng = np.random.default_rng(0)
    users, items = np.repeat([0, 1, 2], 4), np.tile([0, 1, 2, 3], 3)
    data = Interactions.from_arrays(users, items, rating=rng.choice([4.0, 5.0], 12), n_users=4, n_items=5)
    cls = get_model_class(name)
    model = cls(cls.config_class(**params)).fit(data, RunSettings(seed=1))
    predicted = model.predict(np.array([3, -1, 0, 0]), np.array([0, 0, 4, 5]))
    assert np.isfinite(predicted).all() and (predicted > 3.0).all(), predicted
    if name == "nmf" and params.get("biased") is False:
        assert predicted[0] == pytest.approx(predicted[1]) and predicted[2] == pytest.approx(predicted[3])


def test_a_weighting_that_zeroes_every_similarity_is_named_with_the_way_out() -> None:
    # BM25's idf is 0 or less for what nearly every entity has: on three items, every weight. The message blamed
    # min_similarity, exponent and shrinkage, all already neutral.
    data = Interactions.from_arrays(
        np.array([0, 0, 1, 1, 2, 2, 3]), np.array([0, 1, 1, 2, 0, 2, 0]), n_users=4, n_items=3
    )
    config = get_model_class("item_knn").config_class(weighting="bm25", shrinkage=0)
    with pytest.raises(ValueError, match=r"but weighting='bm25', min_similarity=0.*use weighting='none'"):
        get_model_class("item_knn")(config).fit(data)
