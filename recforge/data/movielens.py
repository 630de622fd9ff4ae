"""MovieLens 100K: read the GroupLens folder format or RecBole atomic files, or download and cache it.

Two on-disk layouts are understood, table by table (a folder may mix them; GroupLens files win per table):

============  =========================================  ==========================================
table         GroupLens (original)                       RecBole atomic file
============  =========================================  ==========================================
interactions  ``u.data``: ``user item rating ts`` (tab)  ``ml-100k.inter`` (typed header, tab)
users         ``u.user``: ``id|age|gender|occ|zip``      ``ml-100k.user``
items         ``u.item``: ``id|title|date|video|url|``   ``ml-100k.item`` (``class:token_seq``
              19 genre flags, latin-1; ``u.genre``       genres space-separated)
============  =========================================  ==========================================

Only the interactions are required. The genre label ``unknown`` (a placeholder in both layouts) is dropped, so
an item without a real genre has a missing ``genres`` value; RecBole's ``unknown`` cells are missing values.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from recforge.data.contract import CATEGORY_SEPARATOR, GENRES, ITEM, RATING, TIMESTAMP, USER, DataError, Dataset
from recforge.data.files import SourceUnavailableError, to_utc

OFFICIAL_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
#: md5 of the official ``u.data`` (100,000 rows); a download whose ``u.data`` differs is refused.
U_DATA_MD5 = "6e47046882bad158b0efbb84cd5cb987"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "recforge" / "ml-100k"
#: The 19 genre names of ``u.genre``, in flag order; used when ``u.genre`` is absent.
STANDARD_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

# Per table: (GroupLens file, RecBole file). The order of each pair is the preference order.
_FILES = {
    "interactions": ("u.data", "ml-100k.inter"),
    "users": ("u.user", "ml-100k.user"),
    "items": ("u.item", "ml-100k.item"),
}
# RecBole's ml-100k files write missing values as "unknown" (and once, for item 267, as "unkonwn").
_RECBOLE_MISSING = ("", "unknown", "unkonwn")
_UNKNOWN_GENRE = "unknown"
# RecBole column names that differ from ours.
_RECBOLE_RENAMES = {"movie_title": "title", "class": GENRES}
_DOWNLOAD_TIMEOUT_S = 60
# MovieLens files hold epoch seconds; there is no unit setting to point at.
_SECONDS_HINT = "MovieLens files hold epoch seconds: are these milliseconds? convert them to seconds"


def require_folder(folder: Path) -> None:
    """Raise a DataError unless ``folder`` is a folder (that should hold u.data)."""
    if not Path(folder).is_dir():
        raise DataError(f"MovieLens folder {folder} does not exist; pass the folder that holds u.data")


def load_movielens_100k(
    data_dir: Path | None = None, cache_dir: Path | None = None, url: str = OFFICIAL_URL
) -> Dataset:
    """Load MovieLens 100K as a :class:`Dataset` (name ``"movielens-100k"``, ratings 1–5).

    Args:
        data_dir: a folder with GroupLens and/or RecBole files. When None, ``cache_dir`` is used, and the
            data set is downloaded there first if the cache holds no interactions file.
        cache_dir: where the download is kept (default ``~/.cache/recforge/ml-100k``).
        url: the zip to download (the official GroupLens zip by default); its ``u.data`` must have md5
            :data:`U_DATA_MD5`.

    Returns:
        interactions (user_id, item_id, rating, timestamp in UTC); users (user_id, age, gender, occupation,
        zip_code) and items (item_id, title, release_year, genres) when the folder has them.

    Raises:
        DataError: the folder has neither format, a file cannot be parsed, or the download fails or is corrupt.
    """
    if data_dir is None:
        folder = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
        if not _has_interactions(folder):
            download_movielens_100k(folder, url)
        source = f"{folder} (cache of {url})"
    else:
        folder = Path(data_dir)
        source = str(folder)
    require_folder(folder)
    interactions = _read_table(folder, "interactions", _read_grouplens_data, _read_recbole_inter)
    if interactions is None:
        looked_for = ", ".join(f"{gl} or {rb}" for gl, rb in _FILES.values())
        raise DataError(
            f"{folder} holds no MovieLens 100K interactions: looked for the GroupLens file u.data and the "
            f"RecBole atomic file ml-100k.inter (all tables: {looked_for}); point data_dir at the folder "
            "that contains them, or leave it unset to download the data set"
        )
    users = _read_table(folder, "users", _read_grouplens_user, _read_recbole_user)
    items = _read_table(folder, "items", _read_grouplens_item, _read_recbole_item)
    return Dataset(
        name="movielens-100k",
        interactions=interactions,
        users=users,
        items=items,
        source=source,
        rating_range=(1.0, 5.0),
        metadata={
            table: next((name for name in names if (folder / name).is_file()), "") for table, names in _FILES.items()
        },
    )


def download_movielens_100k(target: Path, url: str = OFFICIAL_URL) -> Path:
    """Download the zip at ``url``, check ``u.data``'s md5 and move the extracted folder to ``target``.

    The zip is fetched and extracted in a temporary folder beside ``target`` and renamed into place only
    after the checksum matched, so an interrupted or corrupt download never leaves a half-filled cache.
    Returns ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        archive = work / "download.zip"
        try:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response, archive.open("wb") as out:
                shutil.copyfileobj(response, out)
        except urllib.error.HTTPError as exc:  # the server answered: retrying will not help
            raise DataError(
                f"could not download MovieLens 100K from {url}: HTTP {exc.code} {exc.reason}; check the URL, or "
                "download and unzip it yourself and pass its folder as data_dir"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise SourceUnavailableError(
                f"could not download MovieLens 100K from {url}: {exc}; check the network, or download and "
                "unzip it yourself and pass its folder as data_dir"
            ) from exc
        extracted = work / "extracted"
        _safe_extract(archive, extracted, url)
        found = sorted(extracted.rglob("u.data"))
        if not found:
            raise DataError(f"the zip downloaded from {url} has no u.data; is it the MovieLens 100K zip?")
        digest = _md5(found[0])
        if digest != U_DATA_MD5:
            raise DataError(
                f"refusing the MovieLens 100K download from {url}: u.data has md5 {digest}, expected "
                f"{U_DATA_MD5}; the file is corrupt or not the official data set. Nothing was cached; retry, "
                "or pass data_dir pointing at a verified copy"
            )
        try:
            found[0].parent.rename(target)
        except OSError:
            # Another process filled the cache meanwhile: use theirs if it is complete, else report.
            if not _has_interactions(target):
                raise DataError(
                    f"could not move the download into {target} (the folder exists and holds no u.data); "
                    "remove it and retry"
                ) from None
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _safe_extract(archive: Path, dest: Path, url: str) -> None:
    """Extract ``archive`` into ``dest``, refusing broken zips and members that would land outside it."""
    try:
        with zipfile.ZipFile(archive) as zf:
            root = dest.resolve()
            for member in zf.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise DataError(f"refusing the zip from {url}: member {member!r} points outside the folder")
            zf.extractall(dest)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"refusing the download from {url}: it is not a valid zip file ({exc})") from exc


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # an integrity check against a published sum, not security
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _has_interactions(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _FILES["interactions"])


def _read_table(
    folder: Path,
    table: str,
    grouplens: Callable[[Path], pd.DataFrame],
    recbole: Callable[[Path], pd.DataFrame],
) -> pd.DataFrame | None:
    """Read one table from the GroupLens file if present, else the RecBole file, else None."""
    for name, reader in zip(_FILES[table], (grouplens, recbole), strict=True):
        path = folder / name
        if path.is_file():
            try:
                return reader(path)
            except DataError:
                raise
            except pd.errors.EmptyDataError:
                message = f"MovieLens {table} file {path} is empty; restore it from the data set's zip"
                raise DataError(message) from None
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"cannot read MovieLens {table} file {path}: not {exc.encoding} text ({exc.reason}); "
                    f"re-save it as {exc.encoding}, or restore it from the data set's zip"
                ) from exc
            except (ValueError, KeyError, IndexError, pd.errors.ParserError) as exc:
                raise DataError(f"cannot read MovieLens {table} file {path}: {exc}") from exc
    return None


def _read_text(path: Path, sep: str, names: list[str] | None, encoding: str = "utf-8") -> pd.DataFrame:
    """Every cell as text, nothing turned into NaN except empty cells; quotes are ordinary characters.

    ``names`` given: the file has no header, and must have exactly that many fields per line (checked);
    ``names`` None: the first line is the header.
    """
    df = pd.read_csv(
        path,
        sep=sep,
        header=None if names is not None else 0,
        dtype=str,
        keep_default_na=False,
        na_values=[""],
        quoting=csv.QUOTE_NONE,
        encoding=encoding,
    )
    if names is None:
        return df
    if df.shape[1] != len(names):
        raise DataError(
            f"{path} has {df.shape[1]} fields per line, expected {len(names)} ({', '.join(names)}); "
            "is it the MovieLens 100K file of that name?"
        )
    return df.set_axis(names, axis=1)


def _interactions_frame(
    users: pd.Series, items: pd.Series, ratings: pd.Series, seconds: pd.Series, origin: str
) -> pd.DataFrame:
    """The contract's interactions frame from text columns; epoch seconds become UTC datetimes.

    An empty field (e.g. of a truncated last line) stays missing, for validation to report with its count;
    text that is not a number, or an epoch that is not in seconds, is a DataError naming the rows.
    """
    # RecBole writes the epoch as a float column ("881250949" or "881250949.0"); round to seconds.
    epoch = _numbers(seconds, f"{origin}, column timestamp").round()
    return pd.DataFrame(
        {
            USER: users.astype("str"),
            ITEM: items.astype("str"),
            RATING: _numbers(ratings, f"{origin}, column rating"),
            TIMESTAMP: to_utc(epoch, "s", f"{origin}, column timestamp", unit_hint=_SECONDS_HINT),
        }
    )


def _numbers(values: pd.Series, origin: str) -> pd.Series:
    """``values`` (text) as float64; empty cells stay missing, other text that is not a number is an error."""
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    bad = numbers.isna() & values.notna()
    if bad.any():
        shown = ", ".join(f"row {i}: {v!r}" for i, v in values[bad].head(5).items())
        count = int(bad.sum())
        raise DataError(f"{origin}: {count} value(s) are not numbers, e.g. {shown}; fix or delete those rows")
    return numbers


def _read_grouplens_data(path: Path) -> pd.DataFrame:
    df = _read_text(path, "\t", ["user", "item", "rating", "ts"])
    return _interactions_frame(df["user"], df["item"], df["rating"], df["ts"], str(path))


def _recbole_header(df: pd.DataFrame) -> pd.DataFrame:
    """Strip the ``:type`` suffix of RecBole headers (``user_id:token`` → ``user_id``) and apply our names."""
    names = [str(col).split(":", 1)[0] for col in df.columns]
    return df.set_axis([_RECBOLE_RENAMES.get(n, n) for n in names], axis=1)


def _read_recbole(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    df = _recbole_header(_read_text(path, "\t", None))
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"RecBole file {path} lacks column(s) {missing}; found {list(df.columns)}")
    return df


def _read_recbole_inter(path: Path) -> pd.DataFrame:
    df = _read_recbole(path, ("user_id", "item_id", "rating", "timestamp"))
    return _interactions_frame(df["user_id"], df["item_id"], df["rating"], df["timestamp"], str(path))


def _missing_to_na(df: pd.DataFrame) -> pd.DataFrame:
    return df.replace(list(_RECBOLE_MISSING), pd.NA)


def _users_frame(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({USER: df["user_id"].astype("str")})
    out["age"] = pd.to_numeric(df["age"], errors="coerce").astype("Int64")
    for col in ("gender", "occupation", "zip_code"):
        out[col] = df[col].astype("str")
    return out


def _read_grouplens_user(path: Path) -> pd.DataFrame:
    df = _read_text(path, "|", ["user_id", "age", "gender", "occupation", "zip_code"], encoding="latin-1")
    return _users_frame(df)


def _read_recbole_user(path: Path) -> pd.DataFrame:
    return _users_frame(_missing_to_na(_read_recbole(path, ("user_id", "age", "gender", "occupation", "zip_code"))))


def _join_genres(labels: list[str]) -> str | None:
    kept = [g for g in labels if g and g != _UNKNOWN_GENRE]
    return CATEGORY_SEPARATOR.join(kept) if kept else None


def _items_frame(ids: pd.Series, titles: pd.Series, years: pd.Series, genres: list[str | None]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            ITEM: ids.astype("str"),
            "title": titles.astype("str"),
            "release_year": pd.to_numeric(years, errors="coerce").astype("Int64"),
            GENRES: pd.Series(genres, dtype="str", index=ids.index),
        }
    )


def _genre_names(folder: Path) -> list[str]:
    """Genre names in flag order from ``u.genre`` (``name|index`` lines), or the standard 19 names."""
    path = folder / "u.genre"
    if not path.is_file():
        return list(STANDARD_GENRES)
    df = _read_text(path, "|", ["name", "index"], encoding="latin-1").dropna(how="all")
    return [str(n) for n in df.sort_values("index", key=lambda s: s.astype(int))["name"]]


def _read_grouplens_item(path: Path) -> pd.DataFrame:
    genre_names = _genre_names(path.parent)
    df = _read_text(path, "|", [f"c{i}" for i in range(5 + len(genre_names))], "latin-1")
    flags = df.iloc[:, 5:].fillna("0").astype(int).to_numpy()
    genres = [_join_genres([g for g, on in zip(genre_names, row, strict=True) if on]) for row in flags]
    # "release date" reads like 01-Jan-1995; the year is its last four characters (empty when unknown).
    years = df["c2"].str.slice(-4)
    return _items_frame(df["c0"], df["c1"], years, genres)


def _read_recbole_item(path: Path) -> pd.DataFrame:
    df = _missing_to_na(_read_recbole(path, ("item_id",)))
    n = len(df)
    titles = df["title"] if "title" in df.columns else pd.Series([None] * n, index=df.index)
    years = df["release_year"] if "release_year" in df.columns else pd.Series([None] * n, index=df.index)
    labels = df[GENRES] if GENRES in df.columns else pd.Series([None] * n, index=df.index)
    genres = [None if pd.isna(v) else _join_genres(str(v).split()) for v in labels]
    return _items_frame(df["item_id"], titles, years, genres)
