"""Cold start (recmodels.coldstart): the maths on hand-made cases, the chain's labels, persistence, and ML-100K."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recforge.data.contract import ITEM, USER
from recforge.data.movielens import load_movielens_100k
from recforge.ids import IdIndex, sorted_ids
from recforge.metrics import topn_metrics
from recmodels.baselines.popularity import Popularity
from recmodels.coldstart import (
    ColdStartChain,
    ColdStartConfig,
    ContentScorer,
    SegmentPopularity,
    SegmentPopularityConfig,
    UserAttributes,
    blend_scores,
    encode_item_features,
    encode_user_attributes,
    tfidf,
    tokenize,
)
from recmodels.data import Interactions
from recmodels.knn.item import ItemKNN

# Eight users, four items. Occupation a = users 0–2, b = users 3–7; gender F = 0, 1, 3, 4, M = 2, 5, 6, 7.
# Segment a watched item 0, segment b item 1 (the global favourite); the (b, M) users also watched item 2.
EVENTS = [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1), (5, 1), (6, 1), (7, 1), (5, 2), (6, 2), (7, 2), (0, 3)]
LEVELS = {"occupation": ("a", "b"), "gender": ("F", "M")}


def _data() -> Interactions:
    user, item = zip(*EVENTS, strict=True)
    return Interactions.from_arrays(np.array(user), np.array(item), n_users=8, n_items=4)


def _attributes(occupation: list[int], gender: list[int]) -> UserAttributes:
    return UserAttributes({"occupation": np.array(occupation), "gender": np.array(gender)}, LEVELS)


TRAIN_ATTRIBUTES = _attributes([0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 1, 0, 0, 1, 1, 1])


def _segments(max_order: int, min_support: int = 3) -> SegmentPopularity:
    cfg = SegmentPopularityConfig(min_support=min_support, smoothing=0.0, max_order=max_order)
    return SegmentPopularity(cfg).fit(_data(), attributes=TRAIN_ATTRIBUTES)


def test_segment_popularity_picks_the_segments_top_item() -> None:
    model = _segments(max_order=1)
    query = _attributes([0, 1], [-1, -1])
    scores = model.score_attributes(query)
    # Segment a: 3 users, all watched item 0, one watched item 3 → shares 1, 0, 0, 1/3.
    np.testing.assert_allclose(scores[0], [1.0, 0.0, 0.0, 1 / 3], rtol=1e-6)
    assert scores[0].argmax() == 0 and scores[1].argmax() == 1
    assert list(model.labels(model.segments(query))) == [
        "segment_popularity:occupation=a",
        "segment_popularity:occupation=b",
    ]


def test_back_off_from_unsupported_combination_to_most_specific_single_attribute() -> None:
    model = _segments(max_order=2)
    # (a, F) has 2 users < 3: back off to one attribute, where occupation=a (3 users) is smaller than gender=F (4).
    # (b, M) has 3 users: the combination itself is used.
    query = _attributes([0, 1], [0, 1])
    assert list(model.labels(model.segments(query))) == [
        "segment_popularity:occupation=a",
        "segment_popularity:occupation=b&gender=M",
    ]
    np.testing.assert_allclose(model.score_attributes(query)[1], [0.0, 1.0, 1.0, 0.0])


def test_missing_or_unsupported_attributes_fall_back_to_global_popularity() -> None:
    model = _segments(max_order=2, min_support=6)  # no segment has 6 users
    query = _attributes([-1, 0], [-1, 0])
    assert list(model.labels(model.segments(query))) == ["popularity", "popularity"]
    np.testing.assert_allclose(model.score_attributes(query)[0], np.array([3, 5, 3, 1]) / 8)


def test_smoothing_shrinks_segment_shares_towards_global_popularity() -> None:
    model = SegmentPopularity(SegmentPopularityConfig(min_support=3, smoothing=3.0, max_order=1))
    model.fit(_data(), attributes=TRAIN_ATTRIBUTES)
    scores = model.score_attributes(_attributes([0], [-1]))[0]
    # (counts + β p) / (support + β) with β = 3, support 3, p = global shares over 8 active users.
    np.testing.assert_allclose(scores, (np.array([3, 0, 0, 1]) + 3 * np.array([3, 5, 3, 1]) / 8) / 6, rtol=1e-6)


def test_encode_user_attributes_buckets_numbers_and_reuses_levels() -> None:
    frame = pd.DataFrame({"user_id": ["u1", "u2", "u3", "u4"], "age": [18, 25, 40, 60], "job": ["x", "y", "x", None]})
    fitted = encode_user_attributes(frame, ["u1", "u2", "u3", "u4"], n_buckets=2)
    assert fitted.levels == {"age": ("<32.5", ">=32.5"), "job": ("x", "y")}
    np.testing.assert_array_equal(fitted.codes["age"], [0, 0, 1, 1])
    np.testing.assert_array_equal(fitted.codes["job"], [0, 1, 0, -1])
    later = pd.DataFrame({"user_id": ["n1", "n2"], "age": [70, None], "job": ["z", "y"]})
    query = encode_user_attributes(later, ["n1", "n2", "ghost"], like=fitted)
    assert query.levels == fitted.levels
    np.testing.assert_array_equal(query.codes["age"], [1, -1, -1])
    np.testing.assert_array_equal(query.codes["job"], [-1, 1, -1])


@pytest.mark.parametrize(
    "values",
    [
        [-8.0, -6.0, -4.0, -3.0, -2.0, 1.0, 2.0, 3.0],
        [1_000_000.0, 1_234_567.0, 1_234_568.0, 2_000_000.0],
        [n / 7 for n in range(1, 9)],  # edges of 17 digits at full precision: 41-character labels
    ],
    ids=["negative", "large", "long"],
)
def test_bucket_edges_read_back_exactly_for_negative_and_large_numbers(values: list[float]) -> None:
    # The labels are the saved form of the edges: "-5.25--3.5" read back as +3.5 and 1234567.5 as 1.23457e+06,
    # so the same users got other codes at serving time than at fit time (QA); full-precision labels then
    # overflowed the published strategy column (QA again).
    ids = [f"u{n}" for n in range(len(values))]
    frame = pd.DataFrame({"user_id": ids, "x": values})
    fitted = encode_user_attributes(frame, ids, n_buckets=4)
    again = encode_user_attributes(frame, ids, like=fitted)
    np.testing.assert_array_equal(again.codes["x"], fitted.codes["x"])
    # Labels short enough for the strategy column, the edges rounded to what they print.
    assert all(len(label) <= 30 for label in fitted.levels["x"]) and len(set(fitted.codes["x"].tolist())) >= 3
    # Older files wrote "lo-hi"; their lower edges still read.
    from recmodels.coldstart.attribute_popularity import _bucket_edges

    np.testing.assert_array_equal(_bucket_edges(("<-5.25", "-5.25--3.5", "-3.5-0.25", ">=0.25")), [-5.25, -3.5, 0.25])


def test_tfidf_weights_match_the_formula() -> None:
    counts = sp.csr_matrix(np.array([[1, 0, 0], [1, 1, 0], [0, 4, 1]], dtype=float))
    weights = tfidf(counts).toarray()
    idf = np.log(4 / np.array([3, 3, 2])) + 1  # smoothed idf: log((1 + n) / (1 + df)) + 1
    raw = np.array([[1, 0, 0], [1, 1, 0], [0, 1 + np.log(4), 1]]) * idf
    np.testing.assert_allclose(weights, raw / np.linalg.norm(raw, axis=1, keepdims=True))
    assert tokenize("Schindler's List (1993)") == ["schindler", "s", "list", "1993"]


def _items_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": ["i0", "i1", "i2", "i3", "i4", "i5"],
            "title": ["Star Wars", "Star Trek", "Love Story", "Star Wars Returns", "Love Actually", "Star Quest"],
            "genres": ["Action|Sci-Fi", "Sci-Fi", "Romance", "Action|Sci-Fi", "Romance|Comedy", "Sci-Fi"],
        }
    )


def test_content_scorer_ranks_new_item_with_matching_genre_first() -> None:
    features = encode_item_features(_items_frame(), ["i0", "i1", "i2", "i3", "i4", "i5"])
    assert "genres=Sci-Fi" in features.names and "title=star" in features.names
    # Items 3–5 have no events; user 0 liked the two science-fiction films.
    data = Interactions.from_arrays(np.array([0, 0, 1]), np.array([0, 1, 2]), n_users=2, n_items=6)
    scores = ContentScorer().fit(data, features=features).score(np.array([0, 1]))
    assert scores[0, 3] > scores[0, 5] > scores[0, 4] == 0.0
    assert scores[1, 4] > scores[1, 5] == scores[1, 3] == 0.0


def test_blend_scores_by_hand() -> None:
    collaborative = np.array([[4.0, 2.0, 0.0, 9.0, -np.inf]])
    content = np.array([[0.0, 1.0, 0.5, 1.0, 1.0]])
    new = np.array([False, False, False, True, False])
    # Warm: min-max [1, .5, 0]; content [0, 1, .5, 1, 1]. The new item takes the median warm score (0.5).
    blended = blend_scores(collaborative, content, new, alpha=0.75, new_item_quantile=0.5)
    np.testing.assert_allclose(blended, [[0.75, 0.625, 0.125, 0.625, -np.inf]])
    last = blend_scores(collaborative, content, new, alpha=0.75, new_item_quantile=0.0)
    assert last[0, 3] == pytest.approx(0.25)


def _chain(hybrid: bool = False) -> tuple[ColdStartChain, Interactions]:
    # Users 0–7 as above (user 0 has 2 events, the others 1–2); user 8 has 5 events → the model serves them.
    events = [*EVENTS, (8, 0), (8, 1), (8, 2), (8, 3), (8, 4)]
    user, item = zip(*events, strict=True)
    data = Interactions.from_arrays(np.array(user), np.array(item), n_users=9, n_items=6)
    attributes = _attributes([0, 0, 0, 1, 1, 1, 1, 1, -1], [0, 0, 1, 0, 0, 1, 1, 1, -1])
    features = encode_item_features(_items_frame(), ["i0", "i1", "i2", "i3", "i4", "i5"])
    config = ColdStartConfig(segments=SegmentPopularityConfig(min_support=3), hybrid_alpha=0.5 if hybrid else None)
    chain = ColdStartChain(config).fit(
        data, model=Popularity().fit(data), user_attributes=attributes, item_features=features if hybrid else None
    )
    return chain, data


def test_chain_labels_every_cell_with_its_strategy() -> None:
    chain, _ = _chain()
    new_user = _attributes([-1, -1, 0, -1], [-1, -1, 1, -1])
    items, _, labels = chain.recommend_with_strategy(np.array([8, 3, -1, -1]), 3, attributes=new_user)
    assert list(chain.strategy(np.array([8, 3, -1]))) == ["model", "item_neighbours", "cold"]
    # User 8 saw items 0–4. Item 5 has no events: the model may not rank it, so popularity (0 events) fills in.
    assert list(items[0]) == [5, -1, -1] and list(labels[0]) == ["popularity", "", ""]
    assert labels[1, 0] == "item_neighbours"  # item 2: co-watched with item 1 by users 5–7
    assert set(labels[1]) <= {"item_neighbours", "segment_popularity:occupation=b"}
    assert list(labels[2]) == ["segment_popularity:occupation=a"] * 3
    assert items[2, 0] == 0
    assert list(labels[3]) == ["popularity"] * 3 and items[3, 0] == 1


def test_hybrid_lets_new_items_in_and_labels_them_content() -> None:
    chain, _ = _chain(hybrid=True)
    items, _, labels = chain.recommend_with_strategy(np.array([8, 1]), 4)
    assert items[0, 0] == 5 and labels[0, 0] == "content"  # user 8 has seen every other item
    assert 5 not in items[0, 1:]
    # User 1 watched Star Wars: the new science-fiction item comes in through content.
    assert 5 in items[1] and list(labels[1][items[1] == 5]) == ["content"]
    assert set(labels[1][items[1] != 5]) <= {"item_neighbours", "segment_popularity:occupation=a"}


@pytest.mark.parametrize("hybrid", [False, True])
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_a_users_row_does_not_depend_on_the_batch_it_is_ranked_in(hybrid: bool, exclude_seen: bool) -> None:
    # Batches mix model, neighbour and cold rows, rows the first strategy fills and rows the fallback completes;
    # only the latter are scored by the segment popularity, and unknown users' seen rows are empty.
    chain, _ = _chain(hybrid=hybrid)
    users = np.array([8, 0, -1, 3, 1, 8, -1, 2, 5, 7])
    query = _attributes([-1, -1, 1, -1, -1, -1, 0, -1, -1, -1], [-1, -1, 1, -1, -1, -1, 0, -1, -1, -1])
    whole = chain.recommend_with_strategy(users, 4, attributes=query, exclude_seen=exclude_seen)
    # One batch at a time and three at once (pool threads); the row order of the output is the callers'.
    for batch_size, threads in ((1, 1), (3, 1), (1, 3), (3, 3)):
        batched = chain.recommend_with_strategy(
            users, 4, attributes=query, exclude_seen=exclude_seen, batch_size=batch_size, threads=threads
        )
        for expected, got in zip(whole, batched, strict=True):
            np.testing.assert_array_equal(got, expected)
    one_by_one = [chain.recommend_with_strategy(users[[r]], 4, attributes=query.take(np.array([r]))) for r in (0, 2)]
    if exclude_seen:
        np.testing.assert_array_equal(one_by_one[0][0][0], whole[0][0])  # user 8: item 5, then padding
        np.testing.assert_array_equal(one_by_one[1][2][0], whole[2][2])


def test_chain_save_load_round_trip_and_determinism(tmp_path: Path) -> None:
    chain, _ = _chain(hybrid=True)
    users = np.array([8, 0, 3, -1])
    query = _attributes([-1, -1, -1, 1], [-1, -1, -1, 1])
    before = chain.recommend_with_strategy(users, 4, attributes=query)
    again = _chain(hybrid=True)[0].recommend_with_strategy(users, 4, attributes=query)
    loaded = ColdStartChain.load(chain.save(tmp_path / "chain.npz"))
    after = loaded.recommend_with_strategy(users, 4, attributes=query)
    for first, second, third in zip(before, again, after, strict=True):
        np.testing.assert_array_equal(first, second)
        np.testing.assert_array_equal(first, third)
    assert loaded.config == chain.config
    segments = SegmentPopularity.load(chain.segments_.save(tmp_path / "segments.npz"))
    assert segments.levels_ == chain.segments_.levels_
    # A truncated chain file or a single model's file: one clear error (a KeyError '__chain__' before).
    (tmp_path / "cut.npz").write_bytes((tmp_path / "chain.npz").read_bytes()[:2_000])
    for broken in (tmp_path / "cut.npz", tmp_path / "segments.npz"):
        with pytest.raises(ValueError, match="is not a consistent cold-start chain file"):
            ColdStartChain.load(broken)
    np.testing.assert_array_equal(segments.score_attributes(query), chain.segments_.score_attributes(query))


def test_neighbours_are_fitted_only_when_a_user_reaches_that_step(tmp_path: Path) -> None:
    # Every user with five or more events, and a model: no user reaches the item-neighbours step, so no kNN is
    # fitted (at scale that fit costs as much as a model) and the rankings are those of a chain that has one.
    events = [(u, i) for u in range(6) for i in range(6) if (u + i) % 6 != 0]  # 5 items each
    user, item = zip(*events, strict=True)
    data = Interactions.from_arrays(np.array(user), np.array(item), n_users=6, n_items=7)
    model = Popularity().fit(data)
    calls: list[int] = []

    def neighbours() -> ItemKNN:
        calls.append(1)
        return ItemKNN().fit(data)

    lean = ColdStartChain().fit(data, model=model, neighbours=neighbours)
    assert lean.neighbours_ is None and calls == []
    full = ColdStartChain().fit(data, model=model, neighbours=ItemKNN().fit(data))  # a fitted one is kept
    assert isinstance(full.neighbours_, ItemKNN)
    users = np.array([0, 3, 5, -1])
    for got, expected in zip(
        lean.recommend_with_strategy(users, 3), full.recommend_with_strategy(users, 3), strict=True
    ):
        np.testing.assert_array_equal(got, expected)
    loaded = ColdStartChain.load(lean.save(tmp_path / "lean.npz"))
    assert loaded.neighbours_ is None  # not the model standing in for them
    # One user with a single event does reach it: the function is called, once.
    light = Interactions.from_arrays(np.array([*user, 6]), np.array([*item, 6]), n_users=7, n_items=7)
    chain = ColdStartChain().fit(light, model=Popularity().fit(light), neighbours=lambda: ItemKNN().fit(light))
    assert isinstance(chain.neighbours_, ItemKNN) and list(chain.strategy(np.array([6]))) == ["item_neighbours"]
    without_model = ColdStartChain().fit(data, neighbours=neighbours)  # every user with events reaches it
    assert without_model.neighbours_ is not None and calls == [1]


def test_ml100k_new_users_segments_beat_global_popularity(ml100k_dir: Path) -> None:
    # bench/coldstart.py protocol 1, seed 0: popularity 0.5448, chain 0.5590 (docs/benchmarks/coldstart.md).
    data = load_movielens_100k(ml100k_dir)
    events = data.interactions
    ids = sorted_ids(events[USER])
    held = pd.Index(ids[np.sort(np.random.default_rng(0).permutation(len(ids))[: round(0.2 * len(ids))])])
    train_events = events[~events[USER].isin(held)]
    index = IdIndex.from_frame(train_events)
    train = index.interactions(train_events, ratings=False)
    test = events[events[USER].isin(held)]
    row, item = held.get_indexer(test[USER]), index.item_codes(test[ITEM])
    keep = item >= 0
    relevant = sp.csr_matrix((np.ones(int(keep.sum())), (row[keep], item[keep])), shape=(len(held), index.n_items))
    relevant.data[:] = 1.0
    fitted = encode_user_attributes(data.users, index.users)
    chain = ColdStartChain().fit(train, user_attributes=fitted)
    unknown = np.full(len(held), -1)
    items, _, labels = chain.recommend_with_strategy(unknown, 10, encode_user_attributes(data.users, held, like=fitted))
    chain_ndcg = topn_metrics(items, relevant, k=10)["ndcg"]
    popularity_ndcg = topn_metrics(Popularity().fit(train).recommend(unknown, 10)[0], relevant, k=10)["ndcg"]
    assert np.char.startswith(labels[:, 0], "segment_popularity:").mean() > 0.9
    assert chain_ndcg >= 0.555
    assert chain_ndcg - popularity_ndcg >= 0.01


def test_chain_refuses_a_negative_k() -> None:
    data = Interactions.from_arrays(np.array([0, 1, 1]), np.array([0, 1, 2]), n_users=2, n_items=3)
    with pytest.raises(ValueError, match="k must be ≥ 0, got -1"):
        ColdStartChain().fit(data).recommend(np.array([0]), -1)


def test_the_chain_refuses_what_is_not_a_list_of_user_indices() -> None:
    # Floats were truncated (0.9 → user 0) and booleans read as users 0 and 1, as Recommender.recommend no longer does.
    events = [(u, i) for u in range(6) for i in range(6) if (u + i) % 6]
    users, items = (np.array(column) for column in zip(*events, strict=True))
    data = Interactions.from_arrays(users, items, n_users=6, n_items=7)
    chain = ColdStartChain().fit(data, model=Popularity().fit(data), neighbours=ItemKNN().fit(data))
    for bad in (np.array([0.9, 1.7]), np.array([True, False])):
        with pytest.raises(ValueError, match="integer user indices"):
            chain.recommend_with_strategy(bad, 2)
        with pytest.raises(ValueError, match="integer user indices"):
            chain.recommend(bad, 2)
    assert chain.recommend_with_strategy(np.array([0, 9]), 2)[0].shape == (2, 2)  # 9: unknown, served the fallback
