"""Writes the bad-input corpus that ``tests/test_bad_input.py`` feeds through the pipeline.

Every file is a small, valid-looking interaction log broken in exactly one way (a missing column, ratings as
text, timestamps in milliseconds, a truncated last line, ...), in each source format: CSV/TSV, Parquet, a
SQLite database for the SQL source, and MovieLens (GroupLens) folders. ``good/`` holds the unbroken data the
cases are derived from. The test module declares what each case must do; ``docs/reliability.md`` lists them.

Run from the repository root to regenerate the committed files (the output is deterministic: no random
numbers, fixed row order, ``\\n`` line ends)::

    .venv/bin/python tests/data/bad/make_corpus.py            # writes next to this script
    .venv/bin/python tests/data/bad/make_corpus.py --out DIR  # somewhere else
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
#: The first event second: 2021-01-01T00:00:00Z. Every good event falls in the first half of 2021.
BASE_EPOCH = 1_609_459_200
DAY = 86_400
N_USERS = 30
N_ITEMS = 24
FIRST_ITEM = 101
LAST_ITEM = FIRST_ITEM + N_ITEMS - 1
EVENTS_PER_USER = 8
HEADER = ("user_id", "item_id", "rating", "timestamp")
USERS_HEADER = ("user_id", "age", "gender")
ITEMS_HEADER = ("item_id", "title", "genres")
#: 2099-01-01T00:00:00Z: a timestamp in the future of any test run.
FUTURE_EPOCH = 4_070_908_800
#: Length of the over-long user id of ``csv/long_ids.csv`` (the store keeps at most 200 characters).
LONG_ID_LENGTH = 300
#: The user whose id is made too long in ``csv/long_ids.csv``.
LONG_ID_USER = 7
#: Files next to the corpus that are not corpus data (the test skips them when it compares).
KEEP = {"make_corpus.py"}
#: The folders the corpus consists of: a regeneration replaces these, and nothing else, under ``out``.
FOLDERS = ("good", "csv", "parquet", "sql", "movielens")

Row = list[object]


def good_events() -> list[Row]:
    """The unbroken interactions: 30 users x 8 distinct items each, ratings 1-5, epoch seconds, time order.

    Items are spread by ``(7u + 5k) mod 24`` (5 and 24 are coprime, so a user's 8 items differ) and every
    item is rated by several users, so both popularity and item-kNN models have something to learn.
    """
    rows: list[Row] = []
    for user in range(1, N_USERS + 1):
        for k in range(EVENTS_PER_USER):
            item = FIRST_ITEM + (user * 7 + k * 5) % N_ITEMS
            rating = 1 + (user * 3 + k * 2) % 5
            stamp = BASE_EPOCH + user * 3 * DAY + k * 5 * DAY + (user * k * 37) % 3600
            rows.append([user, item, rating, stamp])
    return sorted(rows, key=lambda r: (r[3], r[0], r[1]))


def users_table(users: Sequence[int] = range(1, N_USERS + 1)) -> list[Row]:
    """user_id, age, gender for the given users."""
    return [[u, 18 + (u * 7) % 50, "F" if u % 2 else "M"] for u in users]


def items_table(items: Sequence[int] = range(FIRST_ITEM, FIRST_ITEM + N_ITEMS)) -> list[Row]:
    """item_id, title, genres for the given items."""
    genres = ("Drama", "Comedy", "Drama|Romance", "Action|Sci-Fi")
    return [[i, f"Item {i}", genres[i % len(genres)]] for i in items]


def _lines(rows: Sequence[Sequence[object]], sep: str = ",") -> str:
    """Rows as text lines (no header), each ended by a newline."""
    return "".join(sep.join(str(v) for v in row) + "\n" for row in rows)


def _csv(rows: Sequence[Sequence[object]], header: Sequence[str] = HEADER, sep: str = ",") -> str:
    """A header line plus the rows."""
    return sep.join(header) + "\n" + _lines(rows, sep)


def _replace(rows: list[Row], positions: dict[int, tuple[int, object]]) -> list[Row]:
    """A copy of ``rows`` where row ``p`` gets value ``v`` in column ``c`` for each ``p: (c, v)``."""
    out = [list(r) for r in rows]
    for position, (column, value) in positions.items():
        out[position][column] = value
    return out


USER, ITEM, RATING, TIME = range(4)  # column positions in an event row


def _csv_cases(good: list[Row]) -> dict[str, bytes | str]:
    """File name under ``csv/`` -> content, one broken file per case."""
    truncated = _csv(good[:-1]) + ",".join(str(v) for v in good[-1][:3])  # cut after the rating, no newline
    repeated = _csv(good[:120]) + _csv(good[120:])  # two exports concatenated: the header again mid-file
    # One item id written in latin-1 (a spreadsheet's "ANSI" export) among UTF-8 lines.
    cafe = _lines(_replace(good, {12: (ITEM, "café")})[12:13]).encode("latin-1")
    non_utf8 = _csv(good[:12]).encode() + cafe + _lines(good[13:]).encode()
    mixed_units = [[u, i, r, t * 1000 if 100 <= n < 110 else t] for n, (u, i, r, t) in enumerate(good)]
    single_user = [[1, FIRST_ITEM + k, 1 + k % 5, BASE_EPOCH + k * DAY] for k in range(20)]
    single_item = [[u, FIRST_ITEM, 1 + u % 5, BASE_EPOCH + u * DAY] for u in range(1, N_USERS + 1)]
    two_ratings = [[u, i, r, 1 + r % 5, t] for u, i, r, t in good]
    long_user = "u" * LONG_ID_LENGTH
    big_ids = [[2**63 - u, 2**62 + i, r, t] for u, i, r, t in good]
    # A European decimal comma in one rating, unquoted: that line has a fifth field.
    decimal_comma = _replace(good, {30: (RATING, "4,5")})
    decimal_comma_first = _replace(good, {0: (RATING, "4,5")})
    spaced = _csv(good).replace(",", ", ")  # "user_id, item_id, …" as people and report tools write it
    # Cases that replace single values: file name -> {row position: (column, new value)}.
    edits: dict[str, dict[int, tuple[int, object]]] = {
        "rating_text.csv": {10: (RATING, "four"), 11: (RATING, "4 stars")},
        "null_ids.csv": {3: (USER, ""), 50: (USER, ""), 120: (USER, "")},
        "rating_out_of_range.csv": {8: (RATING, 0), 99: (RATING, 11)},
        "rating_missing.csv": {5: (RATING, ""), 17: (RATING, ""), 33: (RATING, "NaN"), 60: (RATING, "null")},
        "timestamp_negative.csv": {2: (TIME, -DAY), 40: (TIME, -1)},
        "timestamp_zero.csv": {6: (TIME, 0), 7: (TIME, 0), 8: (TIME, 0)},
        "timestamp_future.csv": {20: (TIME, FUTURE_EPOCH), 21: (TIME, FUTURE_EPOCH + DAY)},
        "timestamp_unparseable.csv": {4: (TIME, "yesterday"), 9: (TIME, "31/12/2020 10:00")},
    }
    cases: dict[str, bytes | str] = {name: _csv(_replace(good, edit)) for name, edit in edits.items()}
    return cases | {
        "missing_column.csv": _csv([r[:3] for r in good], header=HEADER[:3]),
        "renamed_column.csv": _csv(good, header=("userId", "item_id", "rating", "timestamp")),
        "timestamp_mixed_units.csv": _csv(mixed_units),
        "header_repeated.csv": repeated,
        "duplicate_columns.csv": _csv(two_ratings, header=(*HEADER[:3], "rating", "timestamp")),
        "truncated_last_line.csv": truncated,
        "wrong_delimiter.csv": _csv(good, sep=";"),
        "unquoted_separator.csv": _csv(decimal_comma),
        "unquoted_separator_first_row.csv": _csv(decimal_comma_first),
        "spaces_after_commas.csv": spaced,
        "no_header.csv": _lines(good),
        "non_utf8.csv": non_utf8,
        "bom.csv": b"\xef\xbb\xbf" + _csv(good).encode(),
        "empty.csv": b"",
        "header_only.csv": _csv([]),
        "single_user.csv": _csv(single_user),
        "single_item.csv": _csv(single_item),
        "all_after_as_of.csv": _csv([[u, i, r, t + 2 * 365 * DAY] for u, i, r, t in good]),
        "long_ids.csv": _csv([[long_user if u == LONG_ID_USER else u, i, r, t] for u, i, r, t in good]),
        "int64_ids.tsv": _csv(big_ids, sep="\t"),
        "unknown_refs/interactions.csv": _csv(good),
        "unknown_refs/users.csv": _csv(users_table(range(1, N_USERS - 1)), header=USERS_HEADER),
        "unknown_refs/items.csv": _csv(items_table(range(FIRST_ITEM, LAST_ITEM - 1)), header=ITEMS_HEADER),
    }


def _frame(rows: list[Row]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(HEADER))


def _parquet_cases(good: list[Row]) -> dict[str, pd.DataFrame]:
    """File name under ``parquet/`` -> frame written as Parquet."""
    frame = _frame(good)
    seconds = pd.to_datetime(frame["timestamp"], unit="s")  # naive datetimes: read as UTC
    rating_text = frame.assign(rating=frame["rating"].astype(str), timestamp=seconds)
    rating_text.loc[10, "rating"] = "four"
    float_ids = frame.assign(user_id=frame["user_id"].astype("float64"), timestamp=seconds)
    float_ids.loc[[3, 50], "user_id"] = float("nan")
    # 64-bit ids near the top of the int64 range: exact only if nothing passes them through float64.
    big = frame.assign(
        user_id=pd.array([2**63 - u for u in frame["user_id"]], dtype="int64"),
        item_id=pd.array([2**62 + i for i in frame["item_id"]], dtype="int64"),
        timestamp=seconds,
    )
    return {
        "rating_text.parquet": rating_text,
        "float_ids_nan.parquet": float_ids,
        "int64_ids.parquet": big,
        "ms_timestamps.parquet": frame.assign(timestamp=frame["timestamp"].astype("int64") * 1000),
        "missing_column.parquet": frame.drop(columns=["item_id"]).assign(timestamp=seconds),
    }


def _sql_tables(good: list[Row]) -> dict[str, tuple[str, list[Row]]]:
    """Table name in ``sql/cases.sqlite`` -> (CREATE TABLE column list, rows).

    SQLite keeps each value's own type, so one column can hold integers and text (mixed ids).
    """
    mixed = [[u if u % 2 else f"u{u}", i, r, t] for u, i, r, t in good]
    float_ids: list[Row] = [[float(u), float(i), r, t] for u, i, r, t in good]
    float_ids[3][USER] = None
    float_ids[50][USER] = None
    rating_text = _replace(good, {10: (RATING, "four")})
    return {
        "events_no_rows": ("user_id TEXT, item_id TEXT, rating REAL, timestamp INTEGER", []),
        "events_mixed_ids": ("user_id, item_id, rating, timestamp", mixed),
        "events_float_ids_null": ("user_id REAL, item_id REAL, rating REAL, timestamp INTEGER", float_ids),
        "events_rating_text": ("user_id INTEGER, item_id INTEGER, rating, timestamp INTEGER", rating_text),
    }


def _u_item(items: Sequence[int]) -> bytes:
    """A GroupLens ``u.item`` (latin-1, ``|``-separated, 19 genre flags) for the given items."""
    lines = []
    for i in items:
        flags = ["1" if g == 1 + i % 18 else "0" for g in range(19)]
        fields = [str(i), f"Item {i} (1995)", "01-Jan-1995", "", f"http://example.com/{i}", *flags]
        lines.append("|".join(fields))
    return ("\n".join(lines) + "\n").encode("latin-1")


def _u_data(rows: Sequence[Sequence[object]]) -> str:
    """GroupLens ``u.data``: tab-separated user, item, rating, epoch seconds; no header."""
    return _lines(rows, "\t")


def _movielens_cases(good: list[Row]) -> dict[str, bytes | str]:
    """File path under ``movielens/`` -> content; each case is a folder with a ``u.data`` (and ``u.item``)."""
    last = good[-1]
    return {
        "truncated_last_line/u.data": _u_data(good[:-1]) + f"{last[USER]}\t{last[ITEM]}",
        "rating_out_of_range/u.data": _u_data(_replace(good, {8: (RATING, 7)})),
        "wrong_delimiter/u.data": _lines(good, ","),
        "empty/u.data": b"",
        "ms_timestamps/u.data": _u_data([[u, i, r, t * 1000] for u, i, r, t in good]),
        "unknown_items/u.data": _u_data(good),
        "unknown_items/u.item": _u_item(range(FIRST_ITEM, FIRST_ITEM + N_ITEMS - 2)),
        "non_utf8/u.data": _u_data(good[:12]).encode()
        + _u_data(_replace(good, {12: (ITEM, "café")})[12:13]).encode("latin-1")
        + _u_data(good[13:]).encode(),
    }


def _write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _write_sqlite(path: Path, tables: dict[str, tuple[str, list[Row]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    connection = sqlite3.connect(path)
    try:
        for name, (columns, rows) in tables.items():
            # Fixed names from this script, not user input.
            connection.execute(f"CREATE TABLE {name} ({columns})")
            connection.executemany(f"INSERT INTO {name} VALUES (?, ?, ?, ?)", rows)
        connection.commit()
    finally:
        connection.close()
    return path


def write_corpus(out: Path = HERE) -> list[Path]:
    """Write every corpus file under ``out`` (replacing an earlier corpus there); returns the paths."""
    out = Path(out)
    for folder in FOLDERS:  # only the corpus's own folders: files dropped from the corpus do not linger
        shutil.rmtree(out / folder, ignore_errors=True)
    good = good_events()
    written = [
        _write(out / "good/interactions.csv", _csv(good)),
        _write(out / "good/users.csv", _csv(users_table(), header=USERS_HEADER)),
        _write(out / "good/items.csv", _csv(items_table(), header=ITEMS_HEADER)),
    ]
    written += [_write(out / "csv" / name, content) for name, content in _csv_cases(good).items()]
    for name, frame in _parquet_cases(good).items():
        target = out / "parquet" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(target, index=False)
        written.append(target)
    written.append(_write_sqlite(out / "sql/cases.sqlite", _sql_tables(good)))
    written += [_write(out / "movielens" / name, content) for name, content in _movielens_cases(good).items()]
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the corpus (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write to (default: this script's)")
    args = parser.parse_args(argv)
    paths = write_corpus(args.out)
    print(f"wrote {len(paths)} files under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
