"""Tests of the ingest sources: synthetic, MovieLens 100K, files, SQL, and the SourceSpec dispatch."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from recforge.data import synthetic as synthetic_module
from recforge.data.contract import GENRES, ITEM, RATING, TIMESTAMP, USER, DataError, Dataset, title_column
from recforge.data.files import SourceUnavailableError, load_files
from recforge.data.movielens import U_DATA_MD5, load_movielens_100k
from recforge.data.sources import KINDS, SourceSpec, load_dataset
from recforge.data.sql import load_sql, mask_url
from recforge.data.synthetic import GENRE_NAMES, generate_synthetic

ML100K = Path(__file__).resolve().parents[1].parent / "shared/data/ml-100k"
BIG_ID = 2**62 + 1  # above 2**53: a float round trip would change it


def assert_contract(ds: Dataset, ratings: bool = True) -> None:
    """String ids (no "nan" text), float64 rating, tz-aware UTC timestamps; id columns first in attr tables."""
    inter = ds.interactions
    for col in (USER, ITEM):
        assert pd.api.types.is_string_dtype(inter[col].dtype), col
        present = inter[col].dropna()
        assert present.map(type).eq(str).all(), col
        assert not present.eq("nan").any(), col
    if ratings:
        assert inter[RATING].dtype == np.float64
    else:
        assert RATING not in inter.columns
    assert isinstance(inter[TIMESTAMP].dtype, pd.DatetimeTZDtype)
    assert str(inter[TIMESTAMP].dt.tz) == "UTC"
    for table, id_col in ((ds.users, USER), (ds.items, ITEM)):
        if table is not None:
            assert table.columns[0] == id_col
            assert table[id_col].dropna().map(type).eq(str).all()


# ---------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def synthetic() -> Dataset:
    return generate_synthetic()


def test_synthetic_is_the_same_whatever_the_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    # Sampling runs in blocks of users that bound memory (a dense users × items matrix of 200,000 × 20,000
    # would be 30 GB); the blocks draw from one stream in order, so the data set does not depend on them.
    whole = generate_synthetic(n_users=200, n_items=120, n_events=5000, seed=9)
    monkeypatch.setattr(synthetic_module, "_BLOCK_VALUES", 7 * 120)  # blocks of 7 users
    blocked = generate_synthetic(n_users=200, n_items=120, n_events=5000, seed=9)
    pd.testing.assert_frame_equal(whole.interactions, blocked.interactions)


def test_synthetic_shape_and_contract(synthetic: Dataset) -> None:
    assert_contract(synthetic)
    inter = synthetic.interactions
    assert synthetic.name == "synthetic"
    assert synthetic.rating_range == (1.0, 5.0)
    assert len(inter) == 60_000
    assert synthetic.users is not None and synthetic.items is not None
    assert list(synthetic.users.columns) == [USER, "age", "gender", "occupation"]
    assert list(synthetic.items.columns) == [ITEM, "title", GENRES, "release_year"]
    assert len(synthetic.users) == 1500 and synthetic.users[USER].is_unique
    assert len(synthetic.items) == 800 and synthetic.items[ITEM].is_unique
    assert inter[USER].str.fullmatch(r"u\d+").all() and inter[ITEM].str.fullmatch(r"i\d+").all()
    assert set(inter[USER]) == set(synthetic.users[USER])  # every user has events
    assert set(inter[ITEM]) <= set(synthetic.items[ITEM])
    assert inter.groupby(USER).size().min() >= 5
    assert set(inter[RATING].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert 3.0 < inter[RATING].mean() < 4.0
    start = pd.Timestamp("2024-01-01", tz="UTC")
    assert inter[TIMESTAMP].min() >= start and inter[TIMESTAMP].max() < start + pd.Timedelta(days=180)
    assert inter[TIMESTAMP].is_monotonic_increasing


def test_synthetic_attributes_have_realistic_gaps(synthetic: Dataset) -> None:
    users, items = synthetic.users, synthetic.items
    assert users is not None and items is not None
    assert 0.05 < users["age"].isna().mean() < 0.11
    assert 0.02 < users["gender"].isna().mean() < 0.08
    assert 0.02 < users["occupation"].isna().mean() < 0.08
    assert 0.02 < items["release_year"].isna().mean() < 0.08
    assert 0.0 < items[GENRES].isna().mean() < 0.05
    assert str(users["age"].dtype) == "Int64" and users["age"].dropna().between(13, 80).all()
    assert set(users["gender"].dropna()) == {"M", "F"}
    labels = set(items[GENRES].dropna().str.split("|").explode())
    assert labels == set(GENRE_NAMES)


def test_synthetic_has_duplicates_and_later_repeats(synthetic: Dataset) -> None:
    inter = synthetic.interactions
    exact = inter.duplicated().mean()
    assert 0.003 < exact < 0.008
    # Repeated pairs that are not exact copies: same user and item, later time, a different rating.
    pairs = (
        inter.drop_duplicates()
        .groupby([USER, ITEM])
        .agg(n=(RATING, "size"), ratings=(RATING, "nunique"), first=(TIMESTAMP, "min"), last=(TIMESTAMP, "max"))
    )
    repeated = pairs[pairs["n"] > 1]
    assert 0.005 * len(inter) < len(repeated) < 0.02 * len(inter)
    assert (repeated["ratings"] > 1).mean() > 0.95
    assert (repeated["last"] > repeated["first"]).all()


def test_synthetic_is_deterministic_per_seed() -> None:
    a = generate_synthetic(n_users=200, n_items=120, n_events=4000, seed=7)
    b = generate_synthetic(n_users=200, n_items=120, n_events=4000, seed=7)
    c = generate_synthetic(n_users=200, n_items=120, n_events=4000, seed=8)
    for name, frame in a.tables().items():
        pd.testing.assert_frame_equal(frame, b.tables()[name])
    assert not a.interactions.equals(c.interactions)
    assert not a.users.equals(c.users)  # type: ignore[union-attr]
    assert len(c.interactions) == 4000 and c.interactions.groupby(USER).size().min() >= 5


def test_synthetic_honours_start_and_days() -> None:
    ds = generate_synthetic(n_users=50, n_items=40, n_events=600, start="2023-06-01", days=10)
    ts = ds.interactions[TIMESTAMP]
    assert ts.min() >= pd.Timestamp("2023-06-01", tz="UTC")
    assert ts.max() < pd.Timestamp("2023-06-11", tz="UTC")
    shifted = generate_synthetic(n_users=50, n_items=40, n_events=600, start="2023-06-01T00:00+02:00", days=10)
    assert (ts - shifted.interactions[TIMESTAMP]).eq(pd.Timedelta(hours=2)).all()


def test_synthetic_users_have_their_own_active_periods(synthetic: Dataset) -> None:
    span = synthetic.interactions.groupby(USER)[TIMESTAMP].agg(lambda t: t.max() - t.min())
    window = pd.Timedelta(days=180)
    assert (span < 0.5 * window).mean() > 0.4  # many users are active for a part of the window only
    first = synthetic.interactions.groupby(USER)[TIMESTAMP].min()
    assert (first > pd.Timestamp("2024-03-01", tz="UTC")).mean() > 0.2  # and users join throughout it


def test_synthetic_rejects_impossible_sizes() -> None:
    with pytest.raises(ValueError, match="each user needs"):
        generate_synthetic(n_users=100, n_items=50, n_events=300)  # fewer than 5 events per user
    with pytest.raises(ValueError, match="each user needs"):
        generate_synthetic(n_users=10, n_items=20, n_events=1000)  # more than half the catalogue per user
    with pytest.raises(ValueError, match="n_items >= 5"):
        generate_synthetic(n_users=10, n_items=3, n_events=60)


def test_synthetic_is_fast() -> None:
    began = time.perf_counter()
    generate_synthetic(seed=3)
    assert time.perf_counter() - began < 2.0


def test_synthetic_popularity_is_long_tailed(synthetic: Dataset) -> None:
    counts = synthetic.interactions[ITEM].value_counts()
    top = counts.iloc[: int(np.ceil(0.1 * 800))].sum() / counts.sum()
    assert top > 0.35
    assert counts.iloc[-80:].sum() / counts.sum() < 0.02  # and a thin tail


def test_synthetic_users_concentrate_on_their_favourite_genre(synthetic: Dataset) -> None:
    items = synthetic.items
    assert items is not None
    genre_of = items.dropna(subset=[GENRES]).assign(genre=lambda d: d[GENRES].str.split("|")).explode("genre")
    events = synthetic.interactions.merge(genre_of[[ITEM, "genre"]], on=ITEM)
    per_user = events.groupby([USER, "genre"]).size().unstack(fill_value=0)
    share = per_user.div(synthetic.interactions.groupby(USER).size(), axis=0)
    base = events["genre"].value_counts() / len(synthetic.interactions)
    favourite = share.idxmax(axis=1)
    # Users' favourite genre takes far more of their events than that genre's share of all events.
    assert share.max(axis=1).mean() > 2.0 * base[favourite].to_numpy().mean()


def test_synthetic_collaborative_signal_beats_popularity(synthetic: Dataset) -> None:
    """Leave-last-out hit rate@10: item-item cosine neighbours must clearly beat most-popular."""
    events = synthetic.interactions.drop_duplicates([USER, ITEM]).sort_values(TIMESTAMP, kind="stable")
    last = events.groupby(USER).tail(1)
    train = events.drop(last.index)
    users = {u: i for i, u in enumerate(events[USER].unique())}
    items = {t: i for i, t in enumerate(events[ITEM].unique())}
    x = np.zeros((len(users), len(items)))
    x[train[USER].map(users), train[ITEM].map(items)] = 1.0
    co = x.T @ x
    norm = np.sqrt(np.diag(co)) + 1e-9
    sim = co / np.outer(norm, norm)
    np.fill_diagonal(sim, 0.0)
    rows = last[USER].map(users).to_numpy()
    target = last[ITEM].map(items).to_numpy()

    def hit_rate(scores: np.ndarray) -> float:
        scores = np.where(x[rows] > 0, -np.inf, scores)
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        return float((top == target[:, None]).any(axis=1).mean())

    popularity = hit_rate(np.broadcast_to(x.sum(axis=0), (len(rows), len(items))))
    neighbours = hit_rate(x[rows] @ sim)
    assert popularity > 0.05  # popularity carries real signal too
    assert neighbours > 1.4 * popularity


# ---------------------------------------------------------------- MovieLens 100K


def test_movielens_shared_folder_loads() -> None:
    ds = load_movielens_100k(ML100K)
    assert_contract(ds)
    assert ds.name == "movielens-100k" and ds.rating_range == (1.0, 5.0)
    inter, users, items = ds.interactions, ds.users, ds.items
    assert users is not None and items is not None
    assert len(inter) == 100_000 and inter[USER].nunique() == 943 and inter[ITEM].nunique() == 1682
    assert len(users) == 943 and len(items) == 1682
    assert list(users.columns) == [USER, "age", "gender", "occupation", "zip_code"]
    assert list(items.columns) == [ITEM, "title", "release_year", GENRES]
    # First line of u.data: 196 242 3 881250949.
    first = inter.iloc[0]
    assert (first[USER], first[ITEM], first[RATING]) == ("196", "242", 3.0)
    assert first[TIMESTAMP] == pd.Timestamp("1997-12-04 15:55:49", tz="UTC")
    toy_story = items.set_index(ITEM).loc["1"]
    assert toy_story[GENRES] == "Animation|Children's|Comedy" and toy_story["release_year"] == 1995
    assert items[GENRES].notna().mean() > 0.99
    assert users.set_index(USER).loc["1", "zip_code"] == "85711"
    # This folder has no u.item, so items come from the RecBole file.
    assert ds.metadata["items"] == "ml-100k.item" and ds.metadata["interactions"] == "u.data"


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


U_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "2|Misérables, Les (1995)|01-Jan-1995||http://y|0|0|0|0|0|0|0|0|1|0|0|0|1|0|0|0|0|0|0\n"
    "3|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
)


def test_movielens_grouplens_item_file_is_latin1_with_genre_flags(tmp_path: Path) -> None:
    _write(tmp_path / "u.data", "1\t1\t5\t0\n1\t2\t3\t60\n2\t3\t1\t86400\n")
    _write(tmp_path / "u.item", U_ITEM, encoding="latin-1")
    ds = load_movielens_100k(tmp_path)
    items = ds.items
    assert items is not None and ds.users is None
    assert items[ITEM].tolist() == ["1", "2", "3"]
    assert items["title"].tolist()[:2] == ["Toy Story (1995)", "Misérables, Les (1995)"]
    assert items[GENRES].tolist()[:2] == ["Animation|Children's|Comedy", "Drama|Musical"]
    assert pd.isna(items[GENRES].iloc[2])  # only the "unknown" flag → no genre
    assert items["release_year"].tolist()[:2] == [1995, 1995] and pd.isna(items["release_year"].iloc[2])
    assert ds.interactions[TIMESTAMP].tolist() == [
        pd.Timestamp("1970-01-01 00:00:00", tz="UTC"),
        pd.Timestamp("1970-01-01 00:01:00", tz="UTC"),
        pd.Timestamp("1970-01-02 00:00:00", tz="UTC"),
    ]


def test_movielens_reads_genre_names_from_u_genre(tmp_path: Path) -> None:
    _write(tmp_path / "u.data", "1\t1\t5\t0\n")
    _write(tmp_path / "u.genre", "unknown|0\nFirst|1\nSecond|2\n\n")
    _write(tmp_path / "u.item", "1|A|01-Jan-2000|||0|1|1\n2|B|||url|0|0|1\n", encoding="latin-1")
    items = load_movielens_100k(tmp_path).items
    assert items is not None
    assert items[GENRES].tolist() == ["First|Second", "Second"]


def test_movielens_names_bad_values_by_row_as_the_other_messages_do(tmp_path: Path) -> None:
    _write(tmp_path / "u.data", "7\t9\t4\t881250949\n8\t9\tfour\t881250950\n")
    with pytest.raises(DataError, match=r"column rating: 1 value\(s\) are not numbers, e\.g\. row 1: 'four'"):
        load_movielens_100k(tmp_path)


def test_movielens_recbole_only_folder(tmp_path: Path) -> None:
    _write(
        tmp_path / "ml-100k.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n7\t9\t4\t881250949\n8\t9\t2.0\t60.0\n",
    )
    _write(
        tmp_path / "ml-100k.user",
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n7\t31\tF\tunknown\t0123\n",
    )
    _write(
        tmp_path / "ml-100k.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        '9\tThe "Quoted" Film\t1994\tComedy Sci-Fi\n10\tunknown\tunknown\tunknown\n',
    )
    ds = load_movielens_100k(tmp_path)
    assert_contract(ds)
    inter, users, items = ds.interactions, ds.users, ds.items
    assert users is not None and items is not None
    assert inter[USER].tolist() == ["7", "8"] and inter[RATING].tolist() == [4.0, 2.0]
    assert inter[TIMESTAMP].iloc[1] == pd.Timestamp("1970-01-01 00:01:00", tz="UTC")
    assert users.iloc[0].tolist()[:3] == ["7", 31, "F"]
    assert pd.isna(users["occupation"].iloc[0]) and users["zip_code"].iloc[0] == "0123"
    assert items.iloc[0][["title", "release_year", GENRES]].tolist() == ['The "Quoted" Film', 1994, "Comedy|Sci-Fi"]
    assert items.iloc[1][["title", "release_year", GENRES]].isna().all()


def test_movielens_prefers_grouplens_per_table(tmp_path: Path) -> None:
    _write(tmp_path / "u.data", "1\t2\t5\t0\n")
    _write(tmp_path / "ml-100k.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n9\t9\t1\t0\n")
    _write(tmp_path / "ml-100k.user", "user_id\tage\tgender\toccupation\tzip_code\n1\t20\tM\twriter\t1\n")
    ds = load_movielens_100k(tmp_path)
    assert ds.interactions[USER].tolist() == ["1"]  # u.data wins over ml-100k.inter
    assert ds.users is not None and ds.users["occupation"].tolist() == ["writer"]  # RecBole fallback, untyped header
    assert ds.items is None


def test_movielens_folder_without_either_format(tmp_path: Path) -> None:
    _write(tmp_path / "ratings.csv", "a,b\n")
    with pytest.raises(DataError, match=r"u\.data.*ml-100k\.inter") as err:
        load_movielens_100k(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_movielens_malformed_file_is_named(tmp_path: Path) -> None:
    bad = _write(tmp_path / "u.data", "1\t2\t5\n")
    with pytest.raises(DataError, match="expected 4") as err:
        load_movielens_100k(tmp_path)
    assert str(bad) in str(err.value)


class _ZipServer:
    """A loopback HTTP server for files in a folder that counts the requests it answered."""

    def __init__(self, root: Path) -> None:
        self.requests = 0
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def url(self, name: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/{name}"


@pytest.fixture
def zip_server(tmp_path: Path) -> Iterator[tuple[_ZipServer, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    server = _ZipServer(root)
    server.thread.start()
    yield server, root
    server.server.shutdown()
    server.server.server_close()


def _ml_zip(path: Path, u_data: bytes) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml-100k/u.data", u_data)
        zf.writestr("ml-100k/u.user", (ML100K / "u.user").read_bytes())
        zf.writestr("ml-100k/u.item", U_ITEM.encode("latin-1"))


def test_movielens_download_verifies_extracts_and_caches(tmp_path: Path, zip_server: tuple[_ZipServer, Path]) -> None:
    server, root = zip_server
    _ml_zip(root / "ml-100k.zip", (ML100K / "u.data").read_bytes())
    cache = tmp_path / "cache" / "ml-100k"
    ds = load_movielens_100k(cache_dir=cache, url=server.url("ml-100k.zip"))
    assert len(ds.interactions) == 100_000 and ds.users is not None and len(ds.users) == 943
    assert ds.items is not None and ds.items[GENRES].tolist()[:2] == ["Animation|Children's|Comedy", "Drama|Musical"]
    assert (cache / "u.data").is_file() and server.requests == 1
    assert sorted(p.name for p in cache.parent.iterdir()) == ["ml-100k"]  # no temp folder left behind
    again = load_movielens_100k(cache_dir=cache, url=server.url("ml-100k.zip"))
    assert server.requests == 1  # served from the cache
    pd.testing.assert_frame_equal(again.interactions, ds.interactions)


def test_movielens_download_with_wrong_checksum_is_refused(tmp_path: Path, zip_server: tuple[_ZipServer, Path]) -> None:
    server, root = zip_server
    data = bytearray((ML100K / "u.data").read_bytes())
    data[2] = ord("7")  # one changed digit: a corrupt (or tampered) file
    assert hashlib.md5(bytes(data)).hexdigest() != U_DATA_MD5
    _ml_zip(root / "tampered.zip", bytes(data))
    cache = tmp_path / "cache" / "ml-100k"
    with pytest.raises(DataError, match=f"expected {U_DATA_MD5}"):
        load_movielens_100k(cache_dir=cache, url=server.url("tampered.zip"))
    assert not cache.exists()
    assert list(cache.parent.iterdir()) == []  # the extracted files were deleted


def test_movielens_download_of_a_broken_zip_is_refused(tmp_path: Path, zip_server: tuple[_ZipServer, Path]) -> None:
    server, root = zip_server
    buffer = io.BytesIO()
    _ml_zip(root / "ok.zip", (ML100K / "u.data").read_bytes())
    buffer.write((root / "ok.zip").read_bytes()[:5000])  # truncated transfer
    (root / "broken.zip").write_bytes(buffer.getvalue())
    cache = tmp_path / "cache" / "ml-100k"
    with pytest.raises(DataError, match="not a valid zip"):
        load_movielens_100k(cache_dir=cache, url=server.url("broken.zip"))
    with pytest.raises(DataError, match="HTTP 404") as err:
        load_movielens_100k(cache_dir=cache, url=server.url("missing.zip"))
    assert not isinstance(err.value, OSError)  # a wrong URL is not worth retrying
    assert not cache.exists() and list(cache.parent.iterdir()) == []


# ---------------------------------------------------------------- files


def test_csv_with_column_mapping_preserves_ids(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "orders.csv",
        "customer,sku,stars,ts,channel\n"
        f"007,{BIG_ID},4.5,2024-01-01T10:00:00,web\n"
        "NA,0042,3,2024-01-01T12:00:00+02:00,app\n"
        ",1,,2024-03-01,web\n",
    )
    ds = load_files(path, columns={"user_id": "customer", "item_id": "sku", "rating": "stars", "timestamp": "ts"})
    assert_contract(ds)
    inter = ds.interactions
    assert ds.name == "orders" and ds.source == f"interactions={path}"
    assert list(inter.columns) == [USER, ITEM, TIMESTAMP, RATING, "channel"]
    assert inter[USER].tolist()[:2] == ["007", "NA"]  # "NA" is a real code in an id column
    assert pd.isna(inter[USER].iloc[2])  # an empty id stays missing, not the text "nan"
    assert inter[ITEM].tolist() == [str(BIG_ID), "0042", "1"]
    assert inter[RATING].iloc[:2].tolist() == [4.5, 3.0] and pd.isna(inter[RATING].iloc[2])
    assert inter[TIMESTAMP].tolist() == [
        pd.Timestamp("2024-01-01 10:00", tz="UTC"),  # naive → UTC
        pd.Timestamp("2024-01-01 10:00", tz="UTC"),  # +02:00 converted
        pd.Timestamp("2024-03-01 00:00", tz="UTC"),
    ]
    assert inter["channel"].tolist() == ["web", "app", "web"]


def test_recbole_atomic_files_are_read_by_extension_and_typed_header(tmp_path: Path) -> None:
    inter = _write(
        tmp_path / "shop.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n007\t0042\t4\t881250949\n8\t9\t2.5\t60.0\n",
    )
    users = _write(tmp_path / "shop.user", "user_id:token\tage:token\tzip_code:token\n007\t31\t01234\n8\t\t98105\n")
    items = _write(
        tmp_path / "shop.item",
        "item_id:token\tmovie_title:token_seq\tyear:float\tgenre:token_seq\n"
        '0042\tThe "Quoted" Film\t1994\tComedy Sci-Fi\n9\tPlain\t\t\n',
    )
    ds = load_files(inter, users=users, items=items)
    assert_contract(ds)
    assert ds.name == "shop"
    frame = ds.interactions
    assert frame[USER].tolist() == ["007", "8"] and frame[ITEM].tolist() == ["0042", "9"]
    assert frame[RATING].tolist() == [4.0, 2.5]
    assert frame[TIMESTAMP].iloc[1] == pd.Timestamp("1970-01-01 00:01:00", tz="UTC")
    assert ds.users is not None and ds.items is not None
    assert list(ds.users.columns) == [USER, "age", "zip_code"]
    assert ds.users["age"].dtype == "Int64" and ds.users["age"].iloc[0] == 31 and pd.isna(ds.users["age"].iloc[1])
    assert ds.users["zip_code"].tolist() == ["01234", "98105"]  # a code keeps its leading zero
    assert list(ds.items.columns) == [ITEM, "movie_title", "year", GENRES]
    assert ds.items["movie_title"].tolist() == ['The "Quoted" Film', "Plain"]  # no quoting in atomic files
    assert ds.items[GENRES].iloc[0] == "Comedy|Sci-Fi" and pd.isna(ds.items[GENRES].iloc[1])
    assert ds.items["year"].iloc[0] == 1994.0
    # The typed header is recognised in any text file (here a .tsv); untyped or partly typed headers are kept.
    tsv = _write(tmp_path / "events.tsv", "user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t0\n")
    assert load_files(tsv).interactions[USER].tolist() == ["u1"]
    quoted = _write(
        tmp_path / "events.csv", 'user_id:token,item_id:token,timestamp:float,note:token_seq\nu1,i1,0,"a, b"\n'
    )
    assert load_files(quoted).interactions["note"].tolist() == ["a, b"]  # a CSV keeps its quoting
    partly = _write(tmp_path / "partly.tsv", "user_id:token\titem_id\ttimestamp\nu1\ti1\t0\n")
    with pytest.raises(DataError, match="'user_id:token'"):
        load_files(partly)
    # RecBole's MovieLens 100K files name the genres "class"; an explicit genres column wins over it.
    both = _write(tmp_path / "both.item", "item_id:token\tclass:token_seq\tgenres:token_seq\n1\tA B\tC D\n")
    assert load_files(inter, items=both).items[[GENRES, "class"]].iloc[0].tolist() == ["C|D", "A B"]
    only_class = _write(tmp_path / "class.item", "item_id:token\tclass:token_seq\n1\tAnimation Children's\n")
    assert load_files(inter, items=only_class).items[GENRES].tolist() == ["Animation|Children's"]


def test_shared_recbole_files_load_as_files_like_the_movielens_loader() -> None:
    files = load_files(ML100K / "ml-100k.inter", users=ML100K / "ml-100k.user", items=ML100K / "ml-100k.item")
    movielens = load_movielens_100k(ML100K)
    assert_contract(files)
    columns = [USER, ITEM, RATING, TIMESTAMP]
    pd.testing.assert_frame_equal(files.interactions[columns], movielens.interactions[columns], check_dtype=False)
    assert files.users is not None and movielens.users is not None and files.items is not None
    assert files.users["age"].tolist() == movielens.users["age"].tolist()
    assert files.users["zip_code"].tolist() == movielens.users["zip_code"].tolist()
    assert len(files.items) == 1682 and files.items[GENRES].iloc[0] == "Animation|Children's|Comedy"
    # Reasons and the report name items by their title: RecBole calls it movie_title (the report showed ids).
    assert title_column(files.items) == "movie_title" and movielens.items is not None
    assert files.items["movie_title"].iloc[0] == movielens.items["title"].iloc[0].removesuffix(" (1995)")


def test_missing_column_error_explains_the_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path / "events.tsv", "customer\titem_id\ttimestamp\nu1\ti1\t0\n")
    with pytest.raises(DataError) as err:
        load_files(path)
    message = str(err.value)
    assert str(path) in message and "'user_id'" in message
    assert "['customer', 'item_id', 'timestamp']" in message
    assert "--columns user_id=" in message
    with pytest.raises(DataError, match=r"'stars' \(mapped to rating\)"):
        load_files(path, columns={"user_id": "customer", "rating": "stars"})
    with pytest.raises(DataError, match="unknown key"):
        load_files(path, columns={"customer": "user_id"})  # reversed mapping


def test_headerless_file_is_recognised_and_read_with_names(tmp_path: Path) -> None:
    # MovieLens' own layouts: u.data (tabs) and ratings.dat ("::"), no header line.
    body = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"
    tsv = _write(tmp_path / "u.tsv", body)
    with pytest.raises(DataError) as err:
        load_files(tsv)
    message = str(err.value)
    assert "first line looks like data ('196', '242', '3', '881250949')" in message
    assert "--names user_id,item_id,rating,timestamp" in message
    names = "user_id,item_id,rating,timestamp"
    data = load_files(tsv, names=names.split(","))
    assert data.interactions[USER].tolist() == ["196", "186", "22"]  # the first line is an event, not lost
    assert data.interactions[RATING].tolist() == [3.0, 3.0, 1.0]
    dat = _write(tmp_path / "ratings.dat", body.replace("\t", "::"))
    spec = SourceSpec.from_mapping({"kind": "csv", "interactions": str(dat), "sep": "::", "names": names})
    assert spec.names == tuple(names.split(",")) and "names=user_id,item_id" in spec.describe()
    pd.testing.assert_frame_equal(load_dataset(spec).interactions, data.interactions)
    # Names pass through the column mapping like header names do.
    mapped = load_files(tsv, names=["customer", "sku", "stars", "ts"], columns={"user_id": "customer",
        "item_id": "sku", "rating": "stars", "timestamp": "ts"})  # fmt: skip
    pd.testing.assert_frame_equal(mapped.interactions, data.interactions)
    with pytest.raises(DataError, match=r"first line has 4 field\(s\).*names gives 3"):
        load_files(tsv, names=["user_id", "item_id", "timestamp"])
    with pytest.raises(DataError, match="repeated column name"):
        SourceSpec.from_mapping({"names": "user_id,user_id,item_id,timestamp"})
    with pytest.raises(DataError, match="non-empty"):
        SourceSpec.from_mapping({"names": "user_id,,item_id"})
    parquet = tmp_path / "events.parquet"
    data.interactions.to_parquet(parquet)
    with pytest.raises(DataError, match=r"Parquet.*--columns"):
        load_files(parquet, names=names.split(","))


def test_headerless_side_files_and_a_latin1_file_read_with_names_and_encoding(tmp_path: Path) -> None:
    # MovieLens 1M's layout: every file "::"-separated without a header line, movies.dat in Latin-1.
    names = "user_id,item_id,rating,timestamp"
    ratings = _write(tmp_path / "ratings.dat", "1::10::5::978300760\n2::20::3::978302109\n2::10::4::978301968\n")
    users = _write(tmp_path / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    movies_text = "10::GoldenEye (1995)::Action\n20::Café Lumière (2003)::Drama\n"
    movies = _write(tmp_path / "movies.dat", movies_text, "latin-1")
    user_names, item_names = "user_id,gender,age,occupation,zip_code", "item_id,title,genres"
    files = {"sep": "::", "names": names.split(",")}

    with pytest.raises(DataError) as err:
        load_files(ratings, users=users, **files)
    message = str(err.value)
    # User 1 is aged 1: the repeated value is not taken for a repeated column name.
    assert str(users) in message and "first line looks like data ('1', 'F', '1', '10', '48067')" in message
    assert f"--user-names {user_names}" in message and "user_names=[...]" in message
    with pytest.raises(DataError, match=r"users.dat: its first line has 5 field\(s\).*but user_names gives 2"):
        load_files(ratings, users=users, user_names=["user_id", "gender"], **files)
    with pytest.raises(DataError) as err:  # an unknown layout: the id column's name and one name per field
        load_files(ratings, items=_write(tmp_path / "items.dat", "10::a::b::c\n"), **files)
    assert "--item-names item_id,… (one name per field" in str(err.value)
    with pytest.raises(DataError) as err:
        load_files(ratings, items=movies, item_names=item_names.split(","), **files)
    message = str(err.value)  # the line, its bytes and the way out
    assert str(movies) in message and "line 2 (b'20::Caf\\xe9 Lumi\\xe8re (2003)::Drama') is not UTF-8" in message
    assert "--encoding" in message and "latin-1" in message and "re-save it as UTF-8" in message

    data = load_files(
        ratings, users=users, items=movies, user_names=user_names.split(","), item_names=item_names.split(","),
        encoding="latin-1", **files,
    )  # fmt: skip
    assert data.users is not None and data.items is not None
    assert data.users[USER].tolist() == ["1", "2"] and data.users["gender"].tolist() == ["F", "M"]
    assert data.items[ITEM].tolist() == ["10", "20"] and data.items["title"].tolist()[1] == "Café Lumière (2003)"
    assert data.items[GENRES].tolist() == ["Action", "Drama"]
    assert len(data.interactions) == 3  # the events file is plain ASCII, so Latin-1 reads it alike

    spec = SourceSpec.from_mapping(
        {"kind": "csv", "interactions": str(ratings), "users": str(users), "items": str(movies), "sep": "::",
         "names": names, "user_names": user_names, "item_names": item_names, "encoding": "latin-1"}
    )  # fmt: skip
    assert spec.user_names == tuple(user_names.split(",")) and spec.encoding == "latin-1"
    assert "user_names=user_id,gender" in spec.describe() and "encoding=latin-1" in spec.describe()
    loaded = load_dataset(spec)
    assert loaded.items is not None
    pd.testing.assert_frame_equal(loaded.items, data.items)
    with pytest.raises(DataError, match="unknown text encoding 'latin-9000'"):
        SourceSpec.from_mapping({"encoding": "latin-9000"})
    with pytest.raises(DataError, match="item_names must be non-empty column names"):
        SourceSpec.from_mapping({"item_names": "item_id,,genres"})
    with pytest.raises(DataError, match="repeated column name"):
        SourceSpec.from_mapping({"user_names": "user_id,age,age"})


def test_movielens_placeholder_for_no_genres_is_a_missing_value(tmp_path: Path) -> None:
    events = _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.5,1700000000\n")
    movies = _write(
        tmp_path / "movies.csv",
        'movieId,title,genres\n10,"Heat, The (1995)",Action|Crime\n20,Lost (2020),(no genres listed)\n30,X (2021),\n',
    )
    data = load_files(events, items=movies, columns={"user_id": "userId", "item_id": "movieId"})
    assert data.items is not None
    genres = data.items.set_index(ITEM)[GENRES]
    assert genres["10"] == "Action|Crime" and data.items["title"].tolist()[0] == "Heat, The (1995)"
    assert genres[["20", "30"]].isna().all()


def test_undecodable_line_is_found_in_compressed_files_and_other_codecs(tmp_path: Path) -> None:
    import gzip

    body = "user_id,item_id,timestamp\nu1,i1,1\nu2,i2,2\nu3,\u00e9t\u00e9,3\n"
    packed = tmp_path / "events.csv.gz"
    packed.write_bytes(gzip.compress(body.encode("latin-1")))
    with pytest.raises(DataError, match=r"line 4 \(b'u3,\\xe9t\\xe9,3'\) is not UTF-8 text"):
        load_files(packed)
    assert load_files(packed, encoding="latin-1").interactions[ITEM].tolist() == ["i1", "i2", "été"]
    # cp1252 leaves 0x81 undefined: the message names the codec asked for.
    odd = tmp_path / "odd.csv"
    odd.write_bytes(b"user_id,item_id,timestamp\nu1,i\x81,1\n")
    with pytest.raises(DataError, match=r"line 2 .* is not cp1252 text"):
        load_files(odd, encoding="cp1252")


def test_implicit_epoch_ms_and_parquet_attribute_tables(tmp_path: Path) -> None:
    events = _write(tmp_path / "events.tsv", f"user_id\titem_id\ttimestamp\n{BIG_ID}\t5\t1700000000123\nu2\t6\t0\n")
    pd.DataFrame({"item_id": [5, 6], GENRES: ["A|B", None], "price": [9.5, 3.0]}).to_parquet(tmp_path / "items.pq")
    pd.DataFrame({"user_id": ["u2"], "age": [30]}).to_parquet(tmp_path / "users.parquet")
    ds = load_files(events, users=tmp_path / "users.parquet", items=tmp_path / "items.pq", timestamp_unit="ms")
    assert_contract(ds, ratings=False)
    assert not ds.has_ratings
    assert ds.interactions[USER].tolist() == [str(BIG_ID), "u2"]
    assert ds.interactions[TIMESTAMP].iloc[0] == pd.Timestamp("2023-11-14 22:13:20.123", tz="UTC")
    items = ds.items
    assert items is not None and items[ITEM].tolist() == ["5", "6"]  # parquet int64 ids → exact text
    assert items[GENRES].iloc[0] == "A|B" and pd.isna(items[GENRES].iloc[1])
    assert ds.users is not None and ds.users["age"].tolist() == [30]


def test_parquet_interactions_with_int_float_and_naive_datetime_columns(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pd.DataFrame(
        {
            "user_id": pd.array([BIG_ID, 2], dtype="int64"),
            "item_id": [7.0, np.nan],  # an int column widened to float by a gap
            "rating": pd.array([5, 1], dtype="int64"),
            "timestamp": pd.to_datetime(["2024-05-01 08:00", "2024-05-02 09:30"]),
        }
    ).to_parquet(path)
    ds = load_files(path)
    assert_contract(ds)
    assert ds.interactions[USER].tolist() == [str(BIG_ID), "2"]
    assert ds.interactions[ITEM].iloc[0] == "7" and pd.isna(ds.interactions[ITEM].iloc[1])
    assert ds.interactions[RATING].tolist() == [5.0, 1.0]
    assert ds.interactions[TIMESTAMP].iloc[1] == pd.Timestamp("2024-05-02 09:30", tz="UTC")


def test_float_ids_convert_value_by_value(tmp_path: Path) -> None:
    # One non-integral id turned every id of the column into "7.0" text: the same item got two ids across nights.
    path = tmp_path / "events.parquet"
    frame = pd.DataFrame({"user_id": ["a", "b", "c"], "item_id": [7.0, 20.0, 1.5], "timestamp": [0, 1, 2]})
    frame.to_parquet(path)
    assert load_files(path).interactions[ITEM].tolist() == ["7", "20", "1.5"]


def test_binary_ids_must_be_utf8_text(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(users: list[bytes]) -> Path:
        path = tmp_path / "events.parquet"
        table = pa.table(
            {"user_id": pa.array(users, pa.binary()), "item_id": ["i"] * len(users), "timestamp": range(len(users))}
        )
        pq.write_table(table, path)
        return path

    # Binary columns that hold text (older Parquet writers) read as that text.
    assert load_files(write([b"alice", "böb".encode()])).interactions[USER].tolist() == ["alice", "böb"]
    # Keys that are not UTF-8 were decoded "with replacement": 0x80..0x95 all became one user.
    keys = [i.to_bytes(2, "big") for i in range(0x7F00, 0x7F00 + 3)] + [b"\x80", b"\x81"]
    with pytest.raises(DataError, match=r"events\.parquet, column 'user_id': 2 id\(s\) are not UTF-8 text \(row 3: "):
        load_files(write(keys))


def test_ids_with_nul_are_refused_on_every_database(tmp_path: Path) -> None:
    # PostgreSQL cannot store NUL; SQLite can. Refused when loading, the same data fails the same way on both, and
    # before any training rather than at publish.
    path = _write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu1,i1,0\nu2,i2,1\n")
    frame = pd.read_csv(path, dtype=str)
    frame.loc[1, "item_id"] = "i\x002"
    frame.to_parquet(tmp_path / "events.parquet")
    with pytest.raises(DataError, match=r"column 'item_id': 1 id\(s\) contain the NUL character \(row 1: 'i\\x002'\)"):
        load_files(tmp_path / "events.parquet")


def test_infinite_ratings_are_refused_naming_the_rows(tmp_path: Path) -> None:
    # They passed ingest and validation; then every model failed on "2 missing or infinite values (events 248,
    # 1050)", positions after cleaning, with no file or column named.
    path = _write(tmp_path / "events.csv", "user_id,item_id,rating,timestamp\nu1,i1,4,0\nu2,i2,inf,1\nu3,i3,-inf,2\n")
    with pytest.raises(
        DataError, match=r"events\.csv, column 'rating': 2 rating\(s\) are infinite or too large for a rating"
    ):
        load_files(path)
    # Finite in float64 but infinite as the float32 the models hold.
    huge = _write(tmp_path / "huge.csv", "user_id,item_id,rating,timestamp\nu1,i1,4,0\nu2,i2,1e300,1\n")
    with pytest.raises(DataError, match=r"huge\.csv, column 'rating': 1 rating\(s\) .* row 1: 1e\+300"):
        load_files(huge)


def test_source_columns_named_like_the_cleaning_stages_bookkeeping_are_kept_apart(tmp_path: Path) -> None:
    # A source's repeat_count was read as the cleaning stage's event weight: activity features 1,000 times too high.
    path = _write(tmp_path / "e.csv", "user_id,item_id,timestamp,repeat_count,rating_missing\nu1,i1,0,1000,no\n")
    frame = load_files(path).interactions
    assert "repeat_count" not in frame.columns and "rating_missing" not in frame.columns
    assert frame["source_repeat_count"].tolist() == [1000] and frame["source_rating_missing"].tolist() == ["no"]
    clash = _write(tmp_path / "c.csv", "user_id,item_id,timestamp,repeat_count,source_repeat_count\nu1,i1,0,1,2\n")
    with pytest.raises(DataError, match=r"c\.csv: rename or drop the column\(s\) \['repeat_count'\]"):
        load_files(clash)


def test_genres_as_a_parquet_list_column_are_labels(tmp_path: Path) -> None:
    # They came out as the text "['Action' 'Comedy']", one made-up label per combination (share_action_comedy).
    events = _write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu1,i1,0\nu1,i2,1\nu2,i3,2\n")
    items = pd.DataFrame({"item_id": ["i1", "i2", "i3"], "genres": [["Action", "Comedy"], [], None]})
    items.to_parquet(tmp_path / "items.parquet")
    loaded = load_files(events, items=tmp_path / "items.parquet").items
    assert loaded is not None
    assert loaded[GENRES].iloc[0] == "Action|Comedy" and loaded[GENRES].iloc[1:].isna().all()


def test_a_users_file_keeps_its_own_id_name_when_the_mapping_names_the_events_files(tmp_path: Path) -> None:
    # --columns user_id=customer for the events file; users.csv calls it user_id. The error advised
    # --columns user_id=user_id, which then broke the events file.
    events = _write(tmp_path / "events.csv", "customer,item_id,timestamp\nc1,i1,0\nc2,i2,1\n")
    users = _write(tmp_path / "users.csv", "user_id,age\nc1,30\nc2,40\n")
    data = load_files(events, users=users, columns={"user_id": "customer"})
    assert data.users is not None and data.users[USER].tolist() == ["c1", "c2"]
    assert data.interactions[USER].tolist() == ["c1", "c2"]


def test_timestamp_problems_are_explained(tmp_path: Path) -> None:
    text = _write(tmp_path / "a.csv", "user_id,item_id,timestamp\nu,i,2024-01-01\nu,i,yesterday\n")
    with pytest.raises(DataError, match=r"row 1: 'yesterday'"):
        load_files(text)
    millis = _write(tmp_path / "b.csv", "user_id,item_id,timestamp\nu,i,1700000000123\n")
    with pytest.raises(DataError, match="timestamp_unit"):
        load_files(millis)  # declared seconds, given milliseconds
    with pytest.raises(DataError, match="not one of"):
        load_files(millis, timestamp_unit="weeks")
    stars = _write(tmp_path / "c.csv", "user_id,item_id,timestamp,rating\nu,i,0,five\n")
    with pytest.raises(DataError, match=r"rating.*'five'"):
        load_files(stars)


def test_unreadable_or_unknown_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=r"nope\.csv"):
        load_files(missing)
    garbage = tmp_path / "bad.parquet"
    garbage.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match=r"bad\.parquet.*Parquet"):
        load_files(garbage)
    odd = _write(tmp_path / "events.txt", "user_id;item_id;timestamp\nu;i;0\n")
    with pytest.raises(DataError, match="sep"):
        load_files(odd)
    assert load_files(odd, sep=";").interactions[ITEM].tolist() == ["i"]
    clash = _write(tmp_path / "clash.csv", "customer,user_id,item_id,timestamp\na,b,i,0\n")
    with pytest.raises(DataError, match="both 'customer'"):
        load_files(clash, columns={"user_id": "customer"})


def test_csv_with_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("user_id,item_id,timestamp\nu1,i1,0\n".encode("utf-8-sig"))
    assert load_files(path).interactions[USER].tolist() == ["u1"]


def test_spaces_around_commas_are_not_part_of_names_or_ids(tmp_path: Path) -> None:
    # "a, b" as people and report tools write it: " item_id" would be missing and " i1" another item than "i1".
    events = tmp_path / "events.csv"
    events.write_text('user_id, item_id, rating, timestamp\nu1, i1, 4, 0\nu2,  "i1", 5, 60\nu1,i2,3,120\n')
    items = tmp_path / "items.csv"
    items.write_text('item_id, title, genres\ni1, "Heat, 1995", Action|Crime\ni2, Up, Animation\n')
    data = load_files(events, items=items)
    assert data.interactions[ITEM].tolist() == ["i1", "i1", "i2"]
    assert data.interactions[RATING].tolist() == [4.0, 5.0, 3.0]
    assert data.items is not None
    assert data.items.set_index(ITEM)["title"].to_dict() == {"i1": "Heat, 1995", "i2": "Up"}
    # Nor before one: "u1 ," was another user than "u1", and a header "user_id ,..." was missing user_id while
    # the error's advice (--columns user_id=user_id ) was stripped to the same failing mapping.
    before = tmp_path / "before.csv"
    before.write_text("user_id ,item_id  ,timestamp\nu1 ,i1,0\n u1,i2  ,60\nu1,i3,120\n")
    assert load_files(before).interactions[[USER, ITEM]].values.tolist() == [["u1", "i1"], ["u1", "i2"], ["u1", "i3"]]
    # Attributes too: "M ," and "M," were two genders, "Drama ," and "Drama," two labels.
    users = tmp_path / "users.csv"
    users.write_text("user_id,gender\nu1,M \nu2,M\n")
    assert load_files(before, users=users).users["gender"].tolist() == ["M", "M"]  # type: ignore[index]
    # Tab-separated files keep their spaces: a leading space there is written on purpose, or not a separator.
    tabbed = tmp_path / "events.tsv"
    tabbed.write_text("user_id\titem_id\ttimestamp\nu1\t i1\t0\n")
    assert load_files(tabbed).interactions[ITEM].tolist() == [" i1"]


# ---------------------------------------------------------------- SQL


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    events = sa.Table(
        "events",
        meta,
        sa.Column("customer", sa.BigInteger),
        sa.Column("sku", sa.String),
        sa.Column("stars", sa.Integer),
        sa.Column("at", sa.DateTime),
    )
    products = sa.Table("products", meta, sa.Column("sku", sa.String), sa.Column("genres", sa.String))
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            events.insert(),
            [
                {"customer": BIG_ID, "sku": "007", "stars": 5, "at": pd.Timestamp("2024-02-01 10:00").to_pydatetime()},
                {"customer": 2, "sku": "008", "stars": 2, "at": pd.Timestamp("2024-02-02 11:00").to_pydatetime()},
                {"customer": 2, "sku": "007", "stars": 4, "at": pd.Timestamp("2024-02-03 12:00").to_pydatetime()},
            ],
        )
        conn.execute(products.insert(), [{"sku": "007", "genres": "A|B"}, {"sku": "008", "genres": None}])
    engine.dispose()
    return url


SQL_COLUMNS = {"user_id": "customer", "item_id": "sku", "rating": "stars", "timestamp": "at"}


def test_sql_table_with_items_table(sqlite_url: str) -> None:
    ds = load_sql(sqlite_url, table="events", columns=SQL_COLUMNS, items_table="products")
    assert_contract(ds)
    inter = ds.interactions
    assert ds.name == "events" and ds.source == f"{sqlite_url} (table events)"
    assert inter[USER].tolist() == [str(BIG_ID), "2", "2"]
    assert inter[ITEM].tolist() == ["007", "008", "007"]
    assert inter[RATING].tolist() == [5.0, 2.0, 4.0]
    assert inter[TIMESTAMP].iloc[2] == pd.Timestamp("2024-02-03 12:00", tz="UTC")
    assert ds.items is not None and ds.items[ITEM].tolist() == ["007", "008"]


def test_sql_integer_ids_with_nulls_stay_exact(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gaps.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE clicks (user_id BIGINT, item_id BIGINT, timestamp BIGINT)"))
        conn.execute(sa.text(f"INSERT INTO clicks VALUES ({BIG_ID}, NULL, 60), (NULL, {BIG_ID}, 120)"))
    engine.dispose()
    inter = load_sql(url, table="clicks").interactions
    assert inter[USER].iloc[0] == str(BIG_ID) and pd.isna(inter[USER].iloc[1])
    assert inter[ITEM].iloc[1] == str(BIG_ID) and pd.isna(inter[ITEM].iloc[0])
    assert inter[TIMESTAMP].tolist() == [pd.Timestamp(60, unit="s", tz="UTC"), pd.Timestamp(120, unit="s", tz="UTC")]


def test_sql_query_runs_as_given(sqlite_url: str) -> None:
    query = "SELECT customer, sku, at FROM events WHERE stars >= 4 ORDER BY at"
    ds = load_sql(sqlite_url, query=query, columns={"user_id": "customer", "item_id": "sku", "timestamp": "at"})
    assert_contract(ds, ratings=False)
    assert ds.interactions[[USER, ITEM]].values.tolist() == [[str(BIG_ID), "007"], ["2", "007"]]
    assert ds.metadata["query"] == query


def test_sql_table_names_are_not_sql_text(sqlite_url: str) -> None:
    with pytest.raises(DataError, match=r"available tables and views: \['events', 'products'\]"):
        load_sql(sqlite_url, table="events; DROP TABLE products", columns=SQL_COLUMNS)
    engine = sa.create_engine(sqlite_url)
    assert sorted(sa.inspect(engine).get_table_names()) == ["events", "products"]  # nothing was dropped
    engine.dispose()


def test_sql_argument_and_query_errors(sqlite_url: str) -> None:
    with pytest.raises(DataError, match="exactly one"):
        load_sql(sqlite_url)
    with pytest.raises(DataError, match="exactly one"):
        load_sql(sqlite_url, table="events", query="SELECT 1")
    with pytest.raises(DataError, match="reading the query"):
        load_sql(sqlite_url, query="SELECT * FROM no_such_table")
    with pytest.raises(DataError, match=r"has no column 'user_id'.*\['customer', 'sku', 'stars', 'at'\]"):
        load_sql(sqlite_url, table="events")


def test_a_missing_sqlite_file_is_reported_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    with pytest.raises(SourceUnavailableError, match=f"no SQLite database file at {missing}"):
        load_sql(f"sqlite:///{missing}", table="events")
    assert not missing.exists()


def test_sql_query_side_effects_are_rolled_back(sqlite_url: str) -> None:
    cols = {"user_id": "customer", "item_id": "sku", "timestamp": "at"}
    deleted = load_sql(sqlite_url, query="DELETE FROM events WHERE stars < 3 RETURNING customer, sku, at", columns=cols)
    assert deleted.interactions[ITEM].tolist() == ["008"]
    assert len(load_sql(sqlite_url, table="events", columns=SQL_COLUMNS).interactions) == 3


def test_unreachable_sources_are_retryable_os_errors(tmp_path: Path, zip_server: tuple[_ZipServer, Path]) -> None:
    with pytest.raises(SourceUnavailableError, match="cannot connect") as err:
        load_sql(f"sqlite:///{tmp_path / 'no_such_dir' / 'x.db'}", table="events")
    assert isinstance(err.value, OSError) and isinstance(err.value, DataError)
    server, _ = zip_server
    closed = server.url("ml-100k.zip")
    server.server.shutdown()
    server.server.server_close()  # nothing listens on that port any more
    with pytest.raises(SourceUnavailableError, match="could not download"):
        load_movielens_100k(cache_dir=tmp_path / "cache", url=closed)


def test_mask_url_hides_passwords() -> None:
    assert mask_url("postgresql+psycopg://bob:s3cret@db.example:5432/shop") == (
        "postgresql+psycopg://bob:***@db.example:5432/shop"
    )
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"
    assert "s3cret" not in mask_url("not a url://bob:s3cret@host")
    with pytest.raises(DataError) as err:  # an invalid SQLite URL carrying a password
        load_sql("sqlite://bob:s3cret@//tmp/x.db", table="events")
    assert "s3cret" not in str(err.value) and "bob:***@" in str(err.value)


# ---------------------------------------------------------------- SourceSpec


def test_source_spec_from_mapping() -> None:
    spec = SourceSpec.from_mapping(
        {"kind": "csv", "interactions": "data/events.csv", "columns": "user_id=customer, item_id=sku", "seed": "3"}
    )
    assert spec.interactions == Path("data/events.csv") and spec.seed == 3
    assert spec.columns == {"user_id": "customer", "item_id": "sku"}
    assert SourceSpec.from_mapping({"columns": ["rating=stars"], "sep": None}).columns == {"rating": "stars"}
    with pytest.raises(DataError, match=r"unknown source setting\(s\) \['path'\].*'interactions'"):
        SourceSpec.from_mapping({"kind": "csv", "path": "x.csv"})
    with pytest.raises(DataError, match=r"valid kinds: .*'movielens-100k'"):
        SourceSpec.from_mapping({"kind": "excel"})
    with pytest.raises(DataError, match="integer"):
        SourceSpec.from_mapping({"synthetic_users": "many"})
    assert SourceSpec.from_mapping({"sep": "\\t"}).sep == "\t" and SourceSpec.from_mapping({"sep": ";"}).sep == ";"
    with pytest.raises(DataError, match="timestamp_unit 'sec'"):
        SourceSpec.from_mapping({"timestamp_unit": "sec"})
    with pytest.raises(DataError, match="unknown key"):
        SourceSpec.from_mapping({"columns": {"customer": "user_id"}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.kind = "sql"  # type: ignore[misc]


def test_load_dataset_dispatches_every_kind(tmp_path: Path, sqlite_url: str) -> None:
    assert set(KINDS) == {"synthetic", "movielens-100k", "csv", "parquet", "sql"}
    small = load_dataset(SourceSpec(synthetic_users=30, synthetic_items=40, synthetic_events=400, seed=1))
    assert small.name == "synthetic" and len(small.interactions) == 400
    with pytest.raises(DataError, match="synthetic_events"):
        load_dataset(SourceSpec(synthetic_users=30, synthetic_items=20, synthetic_events=400))
    assert len(load_dataset(SourceSpec(kind="movielens-100k", data_dir=ML100K)).interactions) == 100_000
    csv = _write(tmp_path / "e.csv", "u,i,t\na,b,0\n")
    cols = {"user_id": "u", "item_id": "i", "timestamp": "t"}
    assert load_dataset(SourceSpec(kind="csv", interactions=csv, columns=cols)).interactions[USER].tolist() == ["a"]
    pq = tmp_path / "e.parquet"
    pd.read_csv(csv).to_parquet(pq)
    assert load_dataset(SourceSpec(kind="parquet", interactions=pq, columns=cols)).interactions[ITEM].tolist() == ["b"]
    sql = load_dataset(SourceSpec(kind="sql", source_url=sqlite_url, table="events", columns=SQL_COLUMNS))
    assert len(sql.interactions) == 3
    with pytest.raises(DataError, match="needs interactions"):
        load_dataset(SourceSpec(kind="csv"))
    with pytest.raises(DataError, match="needs source_url"):
        load_dataset(SourceSpec(kind="sql", table="events"))
    with pytest.raises(DataError, match="valid kinds"):
        load_dataset(SourceSpec(kind="excel"))


def test_describe_is_one_line_without_passwords() -> None:
    sql = SourceSpec(kind="sql", source_url="postgresql://bob:s3cret@db/shop", query="SELECT *\n  FROM events")
    text = sql.describe()
    assert text == "sql(url=postgresql://bob:***@db/shop, query='SELECT * FROM events')"
    assert SourceSpec().describe() == "synthetic(users=1500, items=800, events=60000, seed=42)"
    files = SourceSpec(kind="csv", interactions=Path("e.csv"), columns={"user_id": "c"}).describe()
    assert files == "csv(interactions=e.csv, columns=user_id=c)"
    assert "\n" not in SourceSpec(kind="movielens-100k").describe()


def test_rating_range_is_parsed_and_applied(tmp_path: Path) -> None:
    from recforge.data.sources import SourceSpec, load_dataset

    path = tmp_path / "e.csv"
    path.write_text("user_id,item_id,rating,timestamp\nu1,i1,4,1000\nu2,i1,9,2000\n")
    for given in ("0,10", [0, 10], (0.0, 10.0)):
        spec = SourceSpec.from_mapping({"kind": "csv", "interactions": str(path), "rating_range": given})
        assert spec.rating_range == (0.0, 10.0)
        assert load_dataset(spec).rating_range == (0.0, 10.0)
    assert "rating_range=0-10" in spec.describe()
    assert load_dataset(SourceSpec.from_mapping({"kind": "csv", "interactions": str(path)})).rating_range is None
    for bad in ("5,1", "one,five", [1]):
        with pytest.raises(DataError, match="rating_range"):
            SourceSpec.from_mapping({"kind": "csv", "interactions": str(path), "rating_range": bad})


def test_source_url_reads_environment_references(monkeypatch: pytest.MonkeyPatch) -> None:
    from recforge.data.contract import DataError
    from recforge.data.sources import expand_url

    monkeypatch.setenv("RF_TEST_PASSWORD", "s3cret")
    assert expand_url("postgresql://app:${RF_TEST_PASSWORD}@db/events") == "postgresql://app:s3cret@db/events"
    assert expand_url("sqlite:///plain.db") == "sqlite:///plain.db"
    monkeypatch.delenv("RF_TEST_PASSWORD")
    with pytest.raises(DataError, match="RF_TEST_PASSWORD is not set"):
        expand_url("postgresql://app:${RF_TEST_PASSWORD}@db/events")


def test_only_passing_io_failures_are_retried(tmp_path: Path, zip_server: tuple[_ZipServer, Path]) -> None:
    import socket
    import urllib.error

    from tasks.ingest import _is_transient

    def unavailable(cause: BaseException) -> SourceUnavailableError:
        try:
            raise SourceUnavailableError("could not download") from cause
        except SourceUnavailableError as exc:
            return exc

    no_such_host = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    resolver_hiccup = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    assert not _is_transient(unavailable(urllib.error.URLError(no_such_host)))
    assert _is_transient(unavailable(urllib.error.URLError(resolver_hiccup)))
    assert _is_transient(unavailable(urllib.error.URLError("timed out")))  # a text reason: still I/O
    assert _is_transient(unavailable(ConnectionRefusedError(111, "refused")))
    assert not _is_transient(DataError("column 'rating' holds text"))
    assert not _is_transient(FileNotFoundError("events.csv"))
    # A real refused download (nothing listens on the port) stays retryable.
    server, _ = zip_server
    closed = server.url("ml-100k.zip")
    server.server.shutdown()
    server.server.server_close()
    with pytest.raises(SourceUnavailableError) as err:
        load_movielens_100k(cache_dir=tmp_path / "cache", url=closed)
    assert _is_transient(err.value)


@pytest.mark.parametrize(
    ("settings", "kind"),
    [
        ({"data_dir": "/data/ml-100k"}, "movielens-100k"),
        ({"interactions": "events.csv"}, "csv"),
        ({"interactions": "events.PARQUET"}, "parquet"),
        ({"source_url": "sqlite:///x.db", "table": "events"}, "sql"),
        ({"source_url": "postgresql://app@db/shop"}, "sql"),  # check_complete then asks for a table or query
        # MovieLens' download from a mirror: was read as a database URL and failed to connect to "https".
        ({"source_url": "https://mirror.example/ml-100k.zip"}, "movielens-100k"),
        ({"source_url": "file:///srv/ml-100k.zip", "data_dir": "/cache/ml-100k"}, "movielens-100k"),
        ({"source_url": "https://warehouse.example/db", "query": "select 1"}, "sql"),
        ({"source_url": "sqlite:////data/events.zip"}, "sql"),  # a database whose file ends in .zip
        ({"source_url": "postgresql://u@h/db?sslrootcert=/c/root.zip"}, "sql"),
        ({}, "synthetic"),
        ({"kind": "csv", "data_dir": "/ignored"}, "csv"),  # a kind given wins
    ],
)
def test_a_source_without_a_kind_gets_the_one_its_settings_describe(settings: dict[str, str], kind: str) -> None:
    # A deployment's or TOML file's source with a data_dir but no kind trained on, and published, synthetic data.
    assert SourceSpec.from_mapping(settings).kind == kind
