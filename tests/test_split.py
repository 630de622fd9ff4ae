"""Temporal holdout, random rating split and the training window, on tiny frames with known answers."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from recforge.data.contract import DataError
from recforge.split import events_before, random_rating_split, temporal_holdout


def frame(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    """(user, item, seconds) rows as a contract frame, plus an extra column that must survive."""
    users, items, seconds = zip(*rows, strict=True)
    return pd.DataFrame(
        {
            "user_id": pd.Series(users, dtype="str"),
            "item_id": pd.Series(items, dtype="str"),
            "timestamp": pd.to_datetime(list(seconds), unit="s", utc=True),
            "source_row": np.arange(len(rows)),
        }
    )


def pairs(df: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(df["user_id"], df["item_id"], strict=True))


@pytest.fixture
def log() -> pd.DataFrame:
    rows = [
        # u1: 5 events, ceil(0.2 × 5) = 1 test; "9" and "10" share the last second: numeric id order puts "10"
        # last (string order would put "9" last).
        ("u1", "10", 4),
        ("u1", "1", 1),
        ("u1", "9", 4),
        ("u1", "2", 2),
        ("u1", "3", 3),
        # u3: a single event: all test, no train.
        ("u3", "5", 7),
        # u4: 2 events, ceil(0.4) = 1 test: item "99" never occurs in train, so it is dropped.
        ("u4", "1", 1),
        ("u4", "99", 2),
        # u5: the held-out event repeats an item the user already has in train: dropped.
        ("u5", "1", 1),
        ("u5", "2", 2),
        ("u5", "3", 3),
        ("u5", "4", 4),
        ("u5", "1", 5),
        # u6 puts u2's newest items into train; its own test event is item "2".
        ("u6", "13", 1),
        ("u6", "14", 2),
        ("u6", "15", 3),
        ("u6", "2", 4),
    ]
    # u2: 15 events in reverse time order: 3 test.
    rows += [("u2", str(i), 100 + i) for i in range(15, 0, -1)]
    return frame(rows)


def test_holdout_takes_last_ceil_fraction_per_user(log: pd.DataFrame) -> None:
    split = temporal_holdout(log)
    assert pairs(split.test) == {("u1", "10"), ("u2", "13"), ("u2", "14"), ("u2", "15"), ("u6", "2")}
    assert pairs(split.train) >= {("u1", "9"), ("u2", "12"), ("u4", "1"), ("u5", "1")}
    assert ("u2", "13") not in pairs(split.train)
    # Counts: u3 has no train; u4's only test item is unseen; u5's only test event repeats a train item.
    assert split.users_without_train == 1
    assert split.dropped_unseen_items == 1
    assert split.dropped_seen_pairs == 1
    assert split.users_without_test == 2
    assert split.n_test_users == 3
    # Every event ends in exactly one place: train, test, or one of the counted drops.
    assert len(split.train) + len(split.test) + 1 + 1 + 1 == len(log)
    assert "u3" not in set(split.train["user_id"])
    assert "source_row" in split.test.columns


def test_train_is_ordered_by_user_time_item(log: pd.DataFrame) -> None:
    train = temporal_holdout(log).train
    u1 = train.loc[train["user_id"] == "u1", "item_id"].tolist()
    assert u1 == ["1", "2", "3", "9"]
    u2 = train.loc[train["user_id"] == "u2", "item_id"].tolist()
    assert u2 == [str(i) for i in range(1, 13)]


def test_ties_use_string_order_for_non_numeric_ids() -> None:
    rows = [("a", "b", 5), ("a", "a", 5), ("a", "c", 1), ("b", "b", 1), ("b", "a", 2)]
    split = temporal_holdout(frame(rows))
    # User a: "a" < "b" within the tie, so "b" is the newest event; user b: "a" is later in time.
    assert pairs(split.test) == {("a", "b"), ("b", "a")}


def test_larger_fraction_and_bad_input() -> None:
    # v has every item early on (its own last item is 0), so u's test items are all known.
    df = frame([("u", str(i), i) for i in range(10)] + [("v", str(9 - i), i) for i in range(10)])
    split = temporal_holdout(df, test_fraction=0.35)  # ceil(3.5) = 4
    assert sorted(split.test.loc[split.test["user_id"] == "u", "item_id"], key=int) == ["6", "7", "8", "9"]
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        temporal_holdout(df, test_fraction=1.0)
    with pytest.raises(DataError, match="timestamp"):
        temporal_holdout(df.drop(columns="timestamp"))
    broken = df.copy()
    broken.loc[3, "timestamp"] = pd.NaT
    with pytest.raises(DataError, match="missing in 1 row"):
        temporal_holdout(broken)


def test_exact_multiples_are_not_rounded_up() -> None:
    # 0.28 × 25 is 7.000000000000001 in floating point; a plain ceil would hold out 8 events.
    df = frame([("u", str(i), i) for i in range(25)] + [("v", str(24 - i), i) for i in range(25)])
    split = temporal_holdout(df, test_fraction=0.28)
    assert split.test.groupby("user_id").size().to_dict() == {"u": 7, "v": 7}


def test_random_split_reproduces_numpy_mask() -> None:
    n = 200
    df = pd.DataFrame({"user_id": [str(i % 7) for i in range(n)], "item_id": [str(i) for i in range(n)]})
    train, test = random_rating_split(df)
    mask = np.random.default_rng(42).random(n) < 0.2
    assert test["item_id"].tolist() == [str(i) for i in np.flatnonzero(mask)]
    assert train["item_id"].tolist() == [str(i) for i in np.flatnonzero(~mask)]
    other_train, _ = random_rating_split(df, seed=7)
    assert other_train["item_id"].tolist() != train["item_id"].tolist()


def test_events_before_is_strict_and_needs_a_time_zone() -> None:
    df = frame([("u", "a", 0), ("u", "b", 60), ("u", "c", 120)])
    cut = datetime(1970, 1, 1, 0, 1, tzinfo=UTC)  # exactly the second event
    assert events_before(df, cut)["item_id"].tolist() == ["a"]
    assert len(events_before(df, datetime(1970, 1, 1, 0, 1, 1, tzinfo=UTC))) == 2
    with pytest.raises(ValueError, match="no time zone"):
        events_before(df, datetime(1970, 1, 1, 0, 1))
