"""Tests for recforge.prepare: interaction cleaning with row accounting, and train-only imputation."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from recforge.data.contract import ITEM, RATING, TIMESTAMP, USER, DataError
from recforge.prepare import (
    RATING_MISSING,
    REPEAT_COUNT,
    CleaningReport,
    Imputer,
    ImputeRule,
    blank_implausible_ages,
    clean_interactions,
    declared_rules,
    fill_missing_ratings,
)


def _ts(seconds: list[int]) -> pd.Series:
    return pd.Series(pd.to_datetime(seconds, unit="s", utc=True))


def _interactions(rows: list[tuple[str, str, float, int]], **extra: list[object]) -> pd.DataFrame:
    users, items, ratings, seconds = zip(*rows, strict=True)
    frame = pd.DataFrame({USER: list(users), ITEM: list(items), RATING: list(ratings), TIMESTAMP: _ts(list(seconds))})
    for name, values in extra.items():
        frame[name] = values
    return frame


def _accounted(report: CleaningReport) -> int:
    return (
        report.input_rows
        - sum(report.invalid_rows_dropped.values())
        - report.exact_duplicates_dropped
        - report.repeats_collapsed
    )


# ----------------------------------------------------------------------------------------------- cleaning


def test_repeats_collapse_to_latest_event_with_count() -> None:
    frame = _interactions(
        [
            ("u1", "i1", 2.0, 300),  # latest of three u1/i1 events -> kept
            ("u1", "i1", 5.0, 100),
            ("u2", "i1", 4.0, 200),
            ("u1", "i1", 3.0, 200),
        ],
        source=["c", "a", "x", "b"],
    )
    out, report = clean_interactions(frame)

    assert list(out[USER]) == ["u2", "u1"]  # sorted by timestamp: 200 then 300
    u1 = out.loc[out[USER] == "u1"].iloc[0]
    assert u1[RATING] == 2.0
    assert u1[TIMESTAMP] == pd.Timestamp(300, unit="s", tz="UTC")
    assert u1["source"] == "c"  # extra columns come from the latest event
    assert u1[REPEAT_COUNT] == 3
    assert out.loc[out[USER] == "u2", REPEAT_COUNT].item() == 1
    assert out[REPEAT_COUNT].dtype == np.int64
    assert isinstance(out.index, pd.RangeIndex) and list(out.index) == [0, 1]
    assert report.repeats_collapsed == 2
    assert report.exact_duplicates_dropped == 0
    assert report.output_rows == 2


def test_tied_latest_timestamp_keeps_later_row_in_input_order() -> None:
    frame = _interactions([("u", "i", 1.0, 50), ("u", "i", 4.0, 50), ("u", "i", 2.0, 10)])
    out, _ = clean_interactions(frame)
    assert out[RATING].tolist() == [4.0]
    assert out[REPEAT_COUNT].tolist() == [3]


def test_exact_duplicates_counted_apart_from_repeats() -> None:
    frame = _interactions(
        [("u", "i", 3.0, 10), ("u", "i", 3.0, 10), ("u", "i", 4.0, 20), ("v", "i", 1.0, 5), ("v", "i", 1.0, 5)]
    )
    out, report = clean_interactions(frame)
    assert report.exact_duplicates_dropped == 2
    assert report.repeats_collapsed == 1
    # Exact duplicates are not events of their own: u/i counts its two distinct events.
    assert dict(zip(out[USER], out[REPEAT_COUNT], strict=True)) == {"u": 2, "v": 1}
    assert list(out[USER]) == ["v", "u"]


def test_extra_columns_holding_lists_are_kept_and_compared() -> None:
    # A Parquet list column (tags) cannot be hashed by pandas: rows are compared by the lists' contents.
    rows = [("u", "i", 3.0, 10), ("u", "i", 3.0, 10), ("u", "i", 3.0, 10), ("v", "i", 1.0, 5)]
    tags = [np.array(["a", "b"]), np.array(["a", "b"]), np.array(["c"]), ["d"]]
    out, report = clean_interactions(_interactions(rows, tags=tags))
    assert report.exact_duplicates_dropped == 1  # the two ["a", "b"] rows; ["c"] differs
    assert report.repeats_collapsed == 1
    assert [list(t) for t in out["tags"]] == [["d"], ["c"]]


def test_output_sorted_by_timestamp_then_user_then_item() -> None:
    frame = _interactions(
        [("b", "y", 1.0, 7), ("a", "z", 1.0, 7), ("a", "x", 1.0, 7), ("c", "c", 1.0, 1), ("a", "a", 1.0, 9)]
    )
    out, _ = clean_interactions(frame)
    assert list(zip(out[USER], out[ITEM], strict=True)) == [
        ("c", "c"),
        ("a", "x"),
        ("a", "z"),
        ("b", "y"),
        ("a", "a"),
    ]


def test_drop_reasons_are_counted_and_sum_to_rows_removed() -> None:
    frame = _interactions(
        [
            ("u1", "i1", 4.0, 1),  # 0 kept
            ("u1", "i2", 9.0, 2),  # 1 flagged by validation (rating out of range)
            ("u2", "i1", np.nan, 3),  # 2 missing rating: kept, marked
            ("ghost", "i1", 3.0, 4),  # 3 unknown user
            ("u2", "gone", 3.0, 5),  # 4 unknown item
            ("u2", "i2", 2.0, 6),  # 5 kept
            ("u2", "i2", 2.0, 6),  # 6 exact duplicate of 5
            ("u2", "i2", 5.0, 7),  # 7 repeat of the pair of 5 -> collapsed into one row
            ("ghost", "i2", 9.0, 8),  # 8 flagged AND unknown user: counted once, under the flag
        ]
    )
    out, report = clean_interactions(
        frame,
        drop_rows={"rating out of range": np.array([1, 8])},
        known_users=pd.Index(["u1", "u2"]),
        known_items=pd.Index(["i1", "i2"]),
    )
    assert report.invalid_rows_dropped == {
        "rating out of range": 2,
        "unknown user": 1,
        "unknown item": 1,
    }
    assert report.exact_duplicates_dropped == 1
    assert report.repeats_collapsed == 1
    assert report.input_rows == 9 and report.output_rows == 3 == len(out) and report.ratings_missing == 1
    assert _accounted(report) == report.output_rows
    assert list(zip(out[USER], out[ITEM], out[REPEAT_COUNT], out[RATING_MISSING], strict=True)) == [
        ("u1", "i1", 1, False),
        ("u2", "i1", 1, True),
        ("u2", "i2", 2, False),
    ]
    assert "1 rows without a rating kept" in report.summary()


def test_missing_ratings_are_filled_from_the_users_training_ratings() -> None:
    frame = _interactions(
        [("a", "x", 4.0, 1), ("a", "y", 2.0, 2), ("a", "z", np.nan, 3), ("b", "x", np.nan, 4), ("c", "x", 5.0, 9)]
    )
    cleaned, _ = clean_interactions(frame)
    train, test = cleaned[cleaned[TIMESTAMP] < _ts([5])[0]], cleaned[cleaned[TIMESTAMP] >= _ts([5])[0]]
    train_filled, test_filled = fill_missing_ratings(train, [train, test])
    ratings = dict(zip(zip(train_filled[USER], train_filled[ITEM], strict=True), train_filled[RATING], strict=True))
    assert ratings[("a", "z")] == 3.0  # a's mean over its training ratings
    assert ratings[("b", "x")] == 3.0  # b has none: the training mean (c's 5.0 is held out, so not used)
    assert test_filled[RATING].tolist() == [5.0] and train_filled[RATING_MISSING].tolist() == [False, False, True, True]
    plain = _interactions([("a", "x", 4.0, 1)])
    assert fill_missing_ratings(plain, [plain])[0] is plain
    # No training rating at all: the held-out ratings filled the training ones (their mean was the fallback, QA).
    only_test_rated = cleaned.assign(
        **{RATING: np.where(cleaned[USER] == "c", 5.0, np.nan), RATING_MISSING: cleaned[USER] != "c"}
    )
    unrated, held_out = only_test_rated[only_test_rated[USER] != "c"], only_test_rated[only_test_rated[USER] == "c"]
    unrated_filled, _ = fill_missing_ratings(unrated, [unrated, held_out])
    assert unrated_filled[RATING].isna().all() and unrated_filled[RATING_MISSING].all()


def test_a_text_column_named_first_timestamp_is_named_in_the_error() -> None:
    # A code-built frame with its own "first_timestamp" failed on a complaint about the timestamp column (QA).
    frame = _interactions([("u", "A", 1.0, 1), ("u", "A", 2.0, 2)], first_timestamp=["x", "y"])
    with pytest.raises(DataError, match=r"column 'first_timestamp' holds .*recforge's own"):
        clean_interactions(frame)


def test_a_pair_whose_latest_event_lacks_a_rating_keeps_its_measured_one() -> None:
    # u rated A 1.0, later had A again without a rating: the collapse kept the unrated event, so the real rating
    # was replaced by u's mean and left out of RMSE (QA).
    frame = _interactions(
        [("u", "A", 1.0, 1), ("u", "A", np.nan, 5), ("u", "B", 5.0, 2), ("v", "A", np.nan, 3), ("v", "A", np.nan, 4)]
    )
    out, report = clean_interactions(frame)
    rows = {
        (u, i): (r, m, c)
        for u, i, r, m, c in out[[USER, ITEM, RATING, RATING_MISSING, REPEAT_COUNT]].itertuples(index=False)
    }
    assert rows[("u", "A")] == (1.0, False, 2) and rows[("u", "B")] == (5.0, False, 1)
    assert np.isnan(rows[("v", "A")][0]) and rows[("v", "A")][1:] == (True, 2)  # never rated: still missing
    assert report.ratings_missing == 1
    # The latest measured one when there are several, and a measured latest event wins as before.
    again = _interactions(
        [
            ("u", "A", 1.0, 1),
            ("u", "A", 3.0, 2),
            ("u", "A", np.nan, 3),
            ("u", "B", 2.0, 1),
            ("u", "B", np.nan, 2),
            ("u", "B", 4.0, 3),
        ]
    )
    assert dict(zip(clean_interactions(again)[0][ITEM], clean_interactions(again)[0][RATING], strict=True)) == {
        "A": 3.0,
        "B": 4.0,
    }


def test_all_missing_rating_column_is_treated_as_implicit() -> None:
    frame = _interactions([("u", "i", np.nan, 1), ("v", "i", np.nan, 2)])
    out, report = clean_interactions(frame)
    assert len(out) == 2
    assert not report.invalid_rows_dropped and RATING_MISSING not in out.columns


def test_missing_ids_are_dropped_and_counted_not_lost() -> None:
    frame = _interactions([("u", "i", 1.0, 1), ("v", "i", 1.0, 2)])
    frame.loc[1, USER] = None
    out, report = clean_interactions(frame)
    assert report.invalid_rows_dropped == {"missing user_id": 1}
    assert out[USER].tolist() == ["u"]


def test_report_records_and_summary() -> None:
    frame = _interactions([("u", "i", 1.0, 1), ("u", "i", 1.0, 1), ("u", "i", 2.0, 2), ("v", "j", 1.0, 3)])
    _, report = clean_interactions(frame, drop_rows={"bad": np.array([3])})
    records = report.to_records()
    assert records[0] == {"step": "input rows", "rows": 4}
    assert {"step": "dropped: bad", "rows": 1} in records
    assert records[-1] == {"step": "output rows", "rows": 1}
    summary = report.summary()
    assert "4 rows in -> 1 rows out" in summary and "bad: 1" in summary and "1 exact duplicates" in summary


def test_report_rejects_inconsistent_accounting() -> None:
    with pytest.raises(ValueError, match="does not add up"):
        CleaningReport(
            input_rows=10, exact_duplicates_dropped=1, repeats_collapsed=1, invalid_rows_dropped={}, output_rows=9
        )


def test_clean_does_not_mutate_input() -> None:
    frame = _interactions([("u", "i", 1.0, 2), ("u", "i", 2.0, 1), ("v", "i", 3.0, 0)])
    before = frame.copy(deep=True)
    clean_interactions(frame, drop_rows={"x": np.array([2])}, known_users=pd.Index(["u", "v"]))
    pd.testing.assert_frame_equal(frame, before)


def test_cleaning_twice_keeps_repeat_counts() -> None:
    frame = _interactions([("u", "i", 1.0, 1), ("u", "i", 2.0, 2), ("u", "i", 3.0, 3), ("v", "i", 1.0, 1)])
    once, _ = clean_interactions(frame)
    twice, report = clean_interactions(once)
    pd.testing.assert_frame_equal(once, twice)
    assert report.repeats_collapsed == 0


def test_bad_drop_rows_and_id_mismatch_raise_actionable_errors() -> None:
    frame = _interactions([("1", "i", 1.0, 1), ("2", "i", 1.0, 2)])
    with pytest.raises(DataError, match="outside the 2 interactions rows"):
        clean_interactions(frame, drop_rows={"x": np.array([5])})
    with pytest.raises(DataError, match="boolean mask"):
        clean_interactions(frame, drop_rows={"x": np.array([True, False])})
    with pytest.raises(DataError, match="Read ids as strings"):
        clean_interactions(frame, known_users=pd.Index([1, 2]))
    with pytest.raises(DataError, match="lacks column"):
        clean_interactions(frame.drop(columns=[TIMESTAMP]))
    with pytest.raises(DataError, match="not datetime"):
        clean_interactions(frame.assign(timestamp=[1, 2]))


def test_collapse_of_one_million_rows_is_fast() -> None:
    rng = np.random.default_rng(7)
    n = 1_000_000
    frame = pd.DataFrame(
        {
            USER: pd.Series(rng.integers(0, 20_000, n)).astype(str),
            ITEM: pd.Series(rng.integers(0, 2_000, n)).astype(str),
            RATING: rng.integers(1, 6, n).astype(np.float64),
            TIMESTAMP: pd.to_datetime(rng.integers(0, 10_000_000, n), unit="s", utc=True),
        }
    )
    start = time.perf_counter()
    out, report = clean_interactions(frame)
    elapsed = time.perf_counter() - start
    assert elapsed < 15.0, f"collapsing 1M rows took {elapsed:.1f} s"
    n_pairs = len(frame[[USER, ITEM]].drop_duplicates())
    assert len(out) == n_pairs
    assert int(out[REPEAT_COUNT].sum()) == n - report.exact_duplicates_dropped
    assert out[TIMESTAMP].is_monotonic_increasing


# --------------------------------------------------------------------------------------------- imputation


def _users() -> pd.DataFrame:
    return pd.DataFrame(
        {
            USER: ["a", "b", "c", "d", "t1", "t2"],
            "age": [20.0, np.nan, 30.0, 40.0, 90.0, 95.0],
            "occupation": ["doctor", "artist", None, "artist", "retired", "retired"],
            "genres": ["A|B", None, "A|B", "C", "C", "C"],
        }
    )


TRAIN_IDS = pd.Index(["a", "b", "c", "d"])


def test_imputer_fits_only_on_training_ids() -> None:
    users = _users()
    imputer = Imputer([ImputeRule("age", "median")]).fit(users, id_column=USER, fit_ids=TRAIN_IDS)
    # Train rows' ages 20, 30, 40 -> 30; all rows (with test-only 90, 95) would give 40.
    assert imputer.statistics_["age"] == 30.0
    assert users["age"].median() == 40.0
    out = imputer.transform(users)
    assert out.loc[1, "age"] == 30.0


def test_imputer_strategies_hand_computed() -> None:
    users = _users()
    rules = [
        ImputeRule("age", "mean"),
        ImputeRule("occupation", "most_frequent"),
        ImputeRule("genres", "constant", fill_value="unknown"),
    ]
    imputer = Imputer(rules).fit(users, id_column=USER, fit_ids=TRAIN_IDS)
    assert imputer.statistics_ == {"age": 30.0, "occupation": "artist", "genres": "unknown"}
    out = imputer.transform(users)
    assert out["age"].tolist() == [20.0, 30.0, 30.0, 40.0, 90.0, 95.0]
    assert out["occupation"].tolist() == ["doctor", "artist", "artist", "artist", "retired", "retired"]
    assert out.loc[1, "genres"] == "unknown"
    assert imputer.report() == [
        {"column": "age", "strategy": "mean", "value": 30.0, "filled": 1},
        {"column": "occupation", "strategy": "most_frequent", "value": "artist", "filled": 1},
        {"column": "genres", "strategy": "constant", "value": "unknown", "filled": 1},
    ]


def test_default_rules_numeric_median_other_most_frequent() -> None:
    users = _users()
    users["empty"] = pd.Series([None] * 6, dtype="str")
    imputer = Imputer().fit(users, id_column=USER, fit_ids=TRAIN_IDS)
    strategies = {rule.column: rule.strategy for rule in imputer.rules_}
    assert strategies == {
        "age": "median",
        "occupation": "most_frequent",
        "genres": "most_frequent",
        "empty": "most_frequent",
    }
    # genres is multi-label text: the whole label string is one category; "A|B" occurs twice among train ids.
    assert imputer.statistics_["genres"] == "A|B"
    assert imputer.statistics_["age"] == 30.0
    assert imputer.statistics_["empty"] == "unknown"
    out = imputer.transform(users)
    assert out[USER].tolist() == users[USER].tolist()
    assert out["empty"].eq("unknown").all()
    assert not out.isna().any().any()


def test_most_frequent_tie_takes_smallest_value() -> None:
    table = pd.DataFrame({"id": ["1", "2", "3"], "city": ["zurich", "athens", None]})
    imputer = Imputer([ImputeRule("city", "most_frequent")]).fit(table, id_column="id")
    assert imputer.statistics_["city"] == "athens"


def test_transform_does_not_mutate_and_ids_are_never_imputed() -> None:
    users = _users()
    users.loc[5, USER] = None
    before = users.copy(deep=True)
    imputer = Imputer().fit(users, id_column=USER, fit_ids=TRAIN_IDS)
    out = imputer.transform(users)
    pd.testing.assert_frame_equal(users, before)
    assert pd.isna(out.loc[5, USER])
    assert USER not in imputer.statistics_
    with pytest.raises(DataError, match="never imputed"):
        Imputer([ImputeRule(USER, "most_frequent")]).fit(users, id_column=USER)


def test_rule_errors_name_the_columns() -> None:
    users = _users()
    with pytest.raises(DataError, match=r"\['agee'\].*\['user_id', 'age', 'occupation', 'genres'\]"):
        Imputer([ImputeRule("agee", "median")]).fit(users, id_column=USER)
    with pytest.raises(DataError, match="needs numbers"):
        Imputer([ImputeRule("occupation", "median")]).fit(users, id_column=USER)
    with pytest.raises(DataError, match="not text"):
        Imputer([ImputeRule("occupation", "constant", fill_value=0)]).fit(users, id_column=USER)
    with pytest.raises(ValueError, match="needs a fill_value"):
        ImputeRule("age", "constant")
    with pytest.raises(ValueError, match="unknown strategy"):
        ImputeRule("age", "mode")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="none of the table's user_id values are in fit_ids"):
        Imputer().fit(users, id_column=USER, fit_ids=pd.Index([1, 2]))
    with pytest.raises(RuntimeError, match="not fitted"):
        Imputer().transform(users)
    fitted = Imputer([ImputeRule("age", "median")]).fit(users, id_column=USER)
    with pytest.raises(DataError, match="lacks column"):
        fitted.transform(users.drop(columns=["age"]))


def test_nullable_integer_column_widens_for_fractional_median() -> None:
    table = pd.DataFrame({"id": ["1", "2", "3"], "n": pd.array([1, 2, None], dtype="Int64")})
    out = Imputer([ImputeRule("n", "median")]).fit_transform(table, id_column="id")
    assert out["n"].tolist() == [1.0, 2.0, 1.5]


def test_genres_are_left_missing_unless_declared() -> None:
    # The most frequent combination ("Drama|Sci-Fi") was given to every item without labels: invented labels in
    # the genre-share features and the content scores.
    items = pd.DataFrame(
        {"item_id": ["a", "b", "c"], "genres": ["Drama|Sci-Fi", None, "Drama|Sci-Fi"], "year": [1.0, None, 3.0]}
    )
    assert [(r.column, r.strategy) for r in declared_rules(items, "item_id", {})] == [("year", "median")]
    # Nor a list-valued column: the most frequent "value" was a list, and filling with it crashed pandas.
    tags = items.assign(tags=[np.array(["x"]), None, np.array(["y"])])
    assert [r.column for r in declared_rules(tags, "item_id", {})] == ["year"]
    declared = declared_rules(items, "item_id", {"genres": "constant:Unknown"})
    assert ("genres", "constant") in [(r.column, r.strategy) for r in declared]


def test_ages_that_are_not_numbers_or_not_plausible_become_missing() -> None:
    # One "unknown" made the column text, and then 999 and -5 stayed too (the cleaning skipped text columns).
    users = pd.DataFrame({"user_id": ["a", "b", "c", "d", "e"], "age": ["30", "unknown", "999", None, "-5"]})
    cleaned, count = blank_implausible_ages(users)
    assert count == 3 and cleaned["age"].tolist()[0] == 30.0 and cleaned["age"].iloc[1:].isna().all()
    numeric = pd.DataFrame({"user_id": ["a", "b"], "age": [30.0, 120.0]})
    same, none = blank_implausible_ages(numeric)
    assert same is numeric and none == 0


def test_preparation_artifact_cells_keep_labels_and_line_breaks_inside_their_cell() -> None:
    from tasks.prepare import markdown_cell

    row = "| " + " | ".join(markdown_cell(v) for v in ("items", "category", "most_frequent", "Drama|Crime\nx")) + " |"
    assert row == "| items | category | most_frequent | Drama\\|Crime x |"
    assert row.replace("\\|", "").count("|") == 5  # four cells: the label's bar is escaped
