"""Tests for recforge.features: user and item features from training interactions, hand-computed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge.data.contract import GENRES, ITEM, RATING, RATING_MISSING, TIMESTAMP, USER, DataError
from recforge.features import item_features, snake_case, user_features
from recforge.prepare import REPEAT_COUNT, clean_interactions
from recforge.store import features_table

DAY = 86_400
ML100K = Path(__file__).resolve().parents[1].parent / "shared/data/ml-100k"
AS_OF = datetime(1970, 1, 11, tzinfo=UTC)  # day 10


def _train(rows: list[tuple[str, str, float, float]], repeats: list[int] | None = None) -> pd.DataFrame:
    """Rows of (user, item, rating, day)."""
    users, items, ratings, days = zip(*rows, strict=True)
    frame = pd.DataFrame(
        {
            USER: list(users),
            ITEM: list(items),
            RATING: list(ratings),
            TIMESTAMP: pd.to_datetime([d * DAY for d in days], unit="s", utc=True),
        }
    )
    if repeats is not None:
        frame[REPEAT_COUNT] = repeats
    return frame


ITEMS = pd.DataFrame(
    {
        ITEM: ["i1", "i2", "i3", "i4"],
        GENRES: ["A|B", "A", "C", None],
        "release_year": [1990, 2000, np.nan, 1980],
        "title": ["x", "y", "z", "w"],
    }
)


def test_category_shares_and_activity_hand_computed() -> None:
    train = _train(
        [
            ("u", "i1", 4.0, 1.0),
            ("u", "i2", 2.0, 4.0),
            ("u", "i3", 3.0, 7.5),
            ("v", "i4", np.nan, 9.0),
        ]
    )
    out = user_features(train, AS_OF, ITEMS)
    u = out.set_index(USER).loc["u"]
    assert u["share_a"] == pytest.approx(2 / 3)
    assert u["share_b"] == pytest.approx(1 / 3)
    assert u["share_c"] == pytest.approx(1 / 3)
    assert u["activity_count"] == 3 and u["distinct_items"] == 3
    assert u["mean_rating"] == pytest.approx(3.0)
    assert u["days_since_last_event"] == pytest.approx(2.5)
    assert u["days_active"] == pytest.approx(6.5)
    assert u["repeat_share"] == 0.0
    v = out.set_index(USER).loc["v"]
    # i4 has no genres: it counts in v's events but in no share.
    assert (v["share_a"], v["share_b"], v["share_c"]) == (0.0, 0.0, 0.0)
    assert np.isnan(v["mean_rating"])
    assert v["days_active"] == 0.0 and v["days_since_last_event"] == pytest.approx(1.0)
    assert list(out[USER]) == ["u", "v"]
    assert list(out.columns) == [
        USER,
        "activity_count",
        "distinct_items",
        "mean_rating",
        "days_since_last_event",
        "days_active",
        "repeat_share",
        "share_a",
        "share_b",
        "share_c",
    ]
    assert out["activity_count"].dtype == np.int64 and out["distinct_items"].dtype == np.int64
    for column in ["mean_rating", "days_since_last_event", "days_active", "repeat_share", "share_a"]:
        assert out[column].dtype == np.float64, column


def test_repeat_counts_weight_events_and_shares() -> None:
    # u watched i1 (A|B) three times and i3 (C) once: 4 events over 2 distinct items.
    train = _train([("u", "i1", 5.0, 1.0), ("u", "i3", 1.0, 2.0)], repeats=[3, 1])
    u = user_features(train, AS_OF, ITEMS).iloc[0]
    assert u["activity_count"] == 4 and u["distinct_items"] == 2
    assert u["repeat_share"] == pytest.approx(2 / 4)
    assert u["share_a"] == pytest.approx(3 / 4) and u["share_c"] == pytest.approx(1 / 4)
    # Ratings average over rows (one latest rating per pair), not over events.
    assert u["mean_rating"] == pytest.approx(3.0)


def test_repeat_share_from_raw_repeated_rows() -> None:
    train = _train([("u", "i1", 1.0, 1.0), ("u", "i1", 1.0, 2.0), ("u", "i2", 1.0, 3.0), ("u", "i1", 1.0, 4.0)])
    u = user_features(train, AS_OF).iloc[0]
    assert u["activity_count"] == 4 and u["distinct_items"] == 2
    assert u["repeat_share"] == pytest.approx(0.5)
    assert not any(c.startswith("share_") for c in user_features(train, AS_OF).columns)


def test_labels_are_snake_cased_and_merged() -> None:
    assert snake_case("Sci-Fi") == "sci_fi"
    assert snake_case("Children's") == "childrens"
    assert snake_case("Film-Noir") == "film_noir"
    assert snake_case("(no genres listed)") == "no_genres_listed"
    assert snake_case("ScienceFiction") == "science_fiction"
    items = pd.DataFrame({ITEM: ["i1", "i2"], "tags": ["Sci-Fi|sci fi", "Children's"]})
    train = _train([("u", "i1", 1.0, 1.0), ("u", "i2", 1.0, 2.0)])
    out = user_features(train, AS_OF, items, category_column="tags")
    # Both spellings of sci-fi normalise to one label; an item with both counts once.
    assert out["share_sci_fi"].item() == pytest.approx(0.5)
    assert out["share_childrens"].item() == pytest.approx(0.5)


def test_labels_too_long_for_a_feature_name_are_shortened_and_stay_distinct() -> None:
    # share_<260-character label> failed the publish (features.feature is VARCHAR(200)) after training.
    long_a, long_b = "VeryLongGenre" * 20 + "A", "VeryLongGenre" * 20 + "B"
    items = pd.DataFrame({ITEM: ["i1", "i2"], GENRES: [f"Action|{long_a}", long_b]})
    train = _train([("u", "i1", 1.0, 1.0), ("u", "i2", 1.0, 2.0)])
    shares = [c for c in user_features(train, AS_OF, items).columns if c.startswith("share_")]
    assert len(shares) == 3 and "share_action" in shares
    limit = features_table.c.feature.type.length  # the published column, not a copy of its width
    assert limit == 200 and all(len(c) <= limit for c in shares)
    assert len({c[:-13] for c in shares if c != "share_action"}) == 1


def test_features_of_collapsed_repeats_use_the_first_event_and_measured_ratings() -> None:
    # After cleaning, a pair's row carries its latest event: u's A on day 1 and again on day 9 made u's days_active
    # 7 instead of 8 and A's age in the data 7 days instead of 9; and an item nobody rated had the filled-in
    # ratings' mean as its mean_rating (QA).
    events = _train([("u", "A", 1.0, 1.0), ("u", "B", 4.0, 2.0), ("u", "A", 5.0, 9.0), ("v", "X", 4.0, 3.0)])
    events = events.assign(rating=[1.0, 4.0, 5.0, np.nan])
    collapsed, _ = clean_interactions(events)
    assert collapsed[RATING_MISSING].tolist().count(True) == 1
    users = user_features(collapsed, AS_OF).set_index(USER)
    items = item_features(collapsed, AS_OF).set_index(ITEM)
    assert users.loc["u", "days_active"] == 8.0 and items.loc["A", "days_since_first_event"] == 9.0
    assert items.loc["A", "days_since_last_event"] == 1.0 and users.loc["u", "activity_count"] == 3
    filled = collapsed.assign(rating=collapsed[RATING].fillna(4.0))  # what fill_missing_ratings would do
    assert np.isnan(item_features(filled, AS_OF).set_index(ITEM).loc["X", "mean_rating"])
    assert user_features(filled, AS_OF).set_index(USER).loc["u", "mean_rating"] == pytest.approx(4.5)


def test_item_features_hand_computed() -> None:
    train = _train(
        [
            ("u1", "i1", 4.0, 2.0),
            ("u2", "i1", 2.0, 6.0),
            ("u3", "i1", 3.0, 8.0),
            ("u1", "i2", 5.0, 3.0),
            ("u2", "i2", 1.0, 4.0),
            ("u1", "i3", 3.0, 9.0),
            ("u1", "i5", np.nan, 5.0),
        ]
    )
    out = item_features(train, AS_OF, ITEMS).set_index(ITEM)
    assert out["popularity"].to_dict() == {"i1": 3, "i2": 2, "i3": 1, "i5": 1}
    assert out["distinct_users"].to_dict() == {"i1": 3, "i2": 2, "i3": 1, "i5": 1}
    # Items strictly more popular / (4 - 1); i3 and i5 tie and share the better rank.
    assert out["popularity_rank_pct"].to_dict() == pytest.approx({"i1": 0.0, "i2": 1 / 3, "i3": 2 / 3, "i5": 2 / 3})
    assert out.loc["i1", "mean_rating"] == pytest.approx(3.0)
    assert out.loc["i1", "rating_std"] == pytest.approx(np.sqrt(2 / 3))  # population std of 4, 2, 3
    assert out.loc["i2", "rating_std"] == pytest.approx(2.0)
    assert out.loc["i3", "rating_std"] == 0.0
    assert np.isnan(out.loc["i5", "mean_rating"]) and np.isnan(out.loc["i5", "rating_std"])
    assert out.loc["i1", "days_since_first_event"] == pytest.approx(8.0)
    assert out.loc["i1", "days_since_last_event"] == pytest.approx(2.0)
    # release_year passes through as float64; i5 is absent from the items table; text attributes are not passed.
    assert out.loc["i1", "release_year"] == 1990.0 and np.isnan(out.loc["i3", "release_year"])
    assert np.isnan(out.loc["i5", "release_year"])
    assert "title" not in out.columns and GENRES not in out.columns
    assert out["popularity"].dtype == np.int64 and out["distinct_users"].dtype == np.int64
    for column in ["popularity_rank_pct", "mean_rating", "rating_std", "days_since_first_event", "release_year"]:
        assert out[column].dtype == np.float64, column


def test_item_popularity_counts_repeat_events_and_attribute_clash_is_prefixed() -> None:
    train = _train([("u1", "i1", 1.0, 1.0), ("u2", "i2", 1.0, 1.0), ("u3", "i2", 1.0, 1.0)], repeats=[5, 1, 1])
    items = pd.DataFrame({ITEM: ["i1", "i2"], "popularity": [0.9, 0.1]})
    out = item_features(train, AS_OF, items).set_index(ITEM)
    assert out["popularity"].to_dict() == {"i1": 5, "i2": 2}
    assert out["distinct_users"].to_dict() == {"i1": 1, "i2": 2}
    assert out.loc["i1", "popularity_rank_pct"] == 0.0 and out.loc["i2", "popularity_rank_pct"] == 1.0
    assert out["attr_popularity"].to_dict() == {"i1": 0.9, "i2": 0.1}


def test_features_without_ratings_keep_their_columns() -> None:
    train = _train([("u", "i1", 1.0, 1.0)]).drop(columns=[RATING])
    assert np.isnan(user_features(train, AS_OF)["mean_rating"].item())
    items_out = item_features(train, AS_OF)
    assert np.isnan(items_out["mean_rating"].item()) and np.isnan(items_out["rating_std"].item())


def test_naive_as_of_is_read_as_utc() -> None:
    train = _train([("u", "i1", 1.0, 9.0)])
    aware = user_features(train, AS_OF)
    naive = user_features(train, AS_OF.replace(tzinfo=None))
    pd.testing.assert_frame_equal(aware, naive)


def test_events_after_as_of_are_rejected() -> None:
    train = _train([("u", "i1", 1.0, 1.0), ("u", "i2", 1.0, 12.0)])
    with pytest.raises(DataError, match="1 training interactions are later than as_of"):
        user_features(train, AS_OF)
    with pytest.raises(DataError, match="later than as_of"):
        item_features(train, AS_OF)


def test_features_do_not_mutate_inputs() -> None:
    train = _train([("u", "i1", 4.0, 1.0), ("u", "i2", 2.0, 4.0)], repeats=[2, 1])
    items = ITEMS.copy(deep=True)
    before_train, before_items = train.copy(deep=True), items.copy(deep=True)
    user_features(train, AS_OF, items)
    item_features(train, AS_OF, items)
    pd.testing.assert_frame_equal(train, before_train)
    pd.testing.assert_frame_equal(items, before_items)


def _read_ml100k() -> tuple[pd.DataFrame, pd.DataFrame]:
    inter = pd.read_csv(ML100K / "u.data", sep="\t", header=None, names=[USER, ITEM, RATING, "seconds"], dtype=str)
    inter[RATING] = inter[RATING].astype(np.float64)
    inter[TIMESTAMP] = pd.to_datetime(inter.pop("seconds").astype(np.int64), unit="s", utc=True)
    items = pd.read_csv(ML100K / "ml-100k.item", sep="\t", dtype=str)
    items.columns = [ITEM, "title", "release_year", GENRES]
    # RecBole separates genres with spaces; the contract uses "|".
    items[GENRES] = items[GENRES].str.replace(" ", "|", regex=False)
    items["release_year"] = pd.to_numeric(items["release_year"], errors="coerce")
    return inter, items


def test_movielens_100k_end_to_end() -> None:
    inter, items = _read_ml100k()
    clean, report = clean_interactions(inter, known_items=pd.Index(items[ITEM]))
    assert report.output_rows == 100_000 and report.repeats_collapsed == 0
    as_of = clean[TIMESTAMP].max()
    users = user_features(clean, as_of, items)
    assert len(users) == 943
    assert users["activity_count"].sum() == 100_000 and users["activity_count"].min() >= 20
    assert "share_sci_fi" in users.columns and "share_childrens" in users.columns
    shares = users.filter(regex="^share_")
    # Every movie has at least one genre, so each user's shares sum to at least 1.
    assert (shares.sum(axis=1) >= 1.0 - 1e-9).all()
    assert users["days_since_last_event"].min() == 0.0
    item_out = item_features(clean, as_of, items)
    assert len(item_out) == 1682
    assert item_out["popularity"].sum() == 100_000
    top = item_out.loc[item_out["popularity_rank_pct"] == 0.0, ITEM].tolist()
    assert top == inter[ITEM].value_counts().index[:1].tolist()
    assert item_out["release_year"].notna().sum() > 1600
