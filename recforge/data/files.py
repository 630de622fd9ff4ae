"""Interactions (and optional user/item tables) from CSV, TSV, Parquet or RecBole atomic files.

RecBole's atomic files (``.inter``, ``.user``, ``.item``: tab-separated, unquoted, a header of typed names such as
``user_id:token  item_id:token  rating:float  timestamp:float``) are read like any TSV whose names lose their
``:type``; a ``genre`` or ``class`` column of type ``token_seq`` (space-separated labels) in an items file becomes
the contract's ``genres``.

Also home of the column normalisation every tabular source shares (``sql.py`` uses it too): mapping source
column names to the contract's, reading ids as exact text, ratings as float64 and timestamps as UTC.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import difflib
import gzip
import lzma
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.data.contract import (
    CATEGORY_SEPARATOR,
    GENRES,
    INTERNAL_COLUMNS,
    ITEM,
    RATING,
    TIMESTAMP,
    USER,
    DataError,
    Dataset,
)

#: Contract columns a ``columns`` mapping may rename.
MAPPABLE_COLUMNS: tuple[str, ...] = (USER, ITEM, RATING, TIMESTAMP)
#: Units accepted for numeric (epoch) timestamps, as understood by ``pandas.to_datetime``.
TIMESTAMP_UNITS: tuple[str, ...] = ("D", "h", "m", "s", "ms", "us", "ns")
_PARQUET_SUFFIXES = {".parquet", ".pq"}
# RecBole atomic files: their extensions (tab-separated, no quoting in them) and the types their header names carry.
_ATOMIC_SUFFIXES = {".inter", ".user", ".item"}
_TEXT_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"} | dict.fromkeys(_ATOMIC_SUFFIXES, "\t")
_ATOMIC_NAME = re.compile(r"^(?P<name>.+):(?P<type>token|token_seq|float|float_seq)$")
# token_seq columns of an atomic items file that hold category labels (RecBole's MovieLens files), in preference.
_ATOMIC_GENRE_FIELDS = ("genre", "class")
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".zip", ".xz", ".zst"}
# pandas' default missing-value markers (documented for read_csv). Applied to every column but the ids, where
# only an empty cell means missing: "NA" or "null" may well be a real user or item code.
_TEXT_NA_VALUES = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
    "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
]  # fmt: skip
# Epoch values that land after this year were almost surely given in a finer unit than declared.
_LATEST_PLAUSIBLE_YEAR = 2200
_SHOW = 5  # offending values quoted in an error message
_NO_GENRES = "(no genres listed)"
# Separators recognised in a header that was read as one column (the file uses another separator).
_LIKELY_SEPARATORS = (";", "\t", "|", ",")


class SourceUnavailableError(DataError, OSError):
    """A source that could not be reached (network download, database connection).

    It is a :class:`DataError` for messages and also an ``OSError``, so I/O retry policies (the ingest task
    retries OSErrors) retry it, while contract violations, which are plain DataErrors, fail at once.
    """


def load_files(
    interactions: Path,
    users: Path | None = None,
    items: Path | None = None,
    columns: dict[str, str] | None = None,
    sep: str | None = None,
    timestamp_unit: str = "s",
    name: str | None = None,
    max_input_bytes: int | None = None,
    names: Sequence[str] | None = None,
    user_names: Sequence[str] | None = None,
    item_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> Dataset:
    """Load a dataset from delimited text or Parquet files.

    Args:
        interactions: events file with user id, item id, timestamp and optionally rating columns.
        users: optional user attribute file (a user id column plus attributes).
        items: optional item attribute file (an item id column plus attributes, e.g. ``genres``).
        columns: contract name → source column name, e.g. ``{"user_id": "customer", "item_id": "sku",
            "timestamp": "ts"}``; the id mappings apply to all three files. Unmapped names are expected as is.
        sep: field separator for text files; by default ``,`` for ``.csv`` and tab for ``.tsv``/``.tab``.
            ``.parquet``/``.pq`` files are read as Parquet whatever ``sep`` says, so the files may be mixed.
        timestamp_unit: unit of numeric (epoch) timestamps: one of :data:`TIMESTAMP_UNITS`. Text timestamps
            are parsed as ISO 8601; those without an offset are taken as UTC.
        name: dataset name; defaults to the interactions file's stem.
        max_input_bytes: memory guard: refuse, before reading anything, input files whose sizes on disk add
            up to more than this many bytes (None: no limit). A compressed file counts at its compressed size.
        names: the interactions text file has no header line: its columns' names in file order (contract
            names or names that ``columns`` maps).
        user_names, item_names: the same for a users or items text file without a header line (its id column
            named ``user_id`` / ``item_id`` or as ``columns`` maps it; the attributes named as you like).
        encoding: text encoding of the text files (a Python codec name: "utf-8", "latin-1", "cp1252", …); a
            UTF-8 byte-order mark is skipped.

    Raises:
        DataError: unreadable file, unknown format, repeated column names, missing column (the message lists
            the columns found and how to map them), unparseable ratings/timestamps, or input over
            ``max_input_bytes``.
    """
    mapping = check_column_mapping(columns)
    interactions = Path(interactions)
    check_input_size({"interactions": interactions, "users": users, "items": items}, max_input_bytes)
    id_sources = [mapping.get(USER, USER), mapping.get(ITEM, ITEM)]
    raw = read_table(
        interactions,
        sep=sep,
        text_columns=id_sources,
        names=None if names is None else parse_names(names),
        encoding=encoding,
    )
    frame = standardize_interactions(raw, mapping, str(interactions), timestamp_unit)
    tables: dict[str, pd.DataFrame | None] = {"users": None, "items": None}
    for table, path, id_column, given in (("users", users, USER, user_names), ("items", items, ITEM, item_names)):
        if path is not None:
            setting = _NAMES_SETTING[id_column]
            raw = read_table(
                Path(path),
                sep=sep,
                text_columns=[mapping.get(id_column, id_column)],
                names=None if given is None else parse_names(given, setting),
                encoding=encoding,
                names_setting=setting,
            )
            if table == "items":
                raw = atomic_genres(raw)
            tables[table] = standardize_entities(raw, id_column, mapping, str(path))
    paths = {"interactions": interactions, "users": users, "items": items}
    return Dataset(
        name=name or file_stem(interactions),
        interactions=frame,
        users=tables["users"],
        items=tables["items"],
        source="; ".join(f"{table}={path}" for table, path in paths.items() if path is not None),
        rating_range=None,
        metadata={"timestamp_unit": timestamp_unit, **{t: str(p) for t, p in paths.items() if p is not None}},
    )


def require_file(path: Path, what: str = "file") -> None:
    """Raise a DataError unless ``path`` is a file; ``what`` names it ("interactions file")."""
    if not Path(path).is_file():
        raise DataError(f"{what} {path} does not exist (or is not a file)")


def check_input_size(paths: Mapping[str, Path | None], max_input_bytes: int | None) -> None:
    """Raise a DataError when the existing files of ``paths`` (table -> file) exceed ``max_input_bytes``.

    Checked before any file is read, so an input too large for the machine fails in milliseconds instead of
    exhausting memory (pandas needs a multiple of a CSV's size). Missing files are left to the reader.
    """
    if max_input_bytes is None:
        return
    if isinstance(max_input_bytes, bool) or not isinstance(max_input_bytes, int) or max_input_bytes <= 0:
        raise DataError(f"max_input_bytes must be a positive number of bytes, got {max_input_bytes!r}")
    present = {table: Path(path) for table, path in paths.items() if path is not None}
    sizes = {table: path.stat().st_size for table, path in present.items() if path.is_file()}
    total = sum(sizes.values())
    if total > max_input_bytes:
        listed = ", ".join(f"{table} {paths[table]} is {_size_text(size)}" for table, size in sizes.items())
        raise DataError(
            f"input over the memory budget: {listed}; {_size_text(total)} in all exceeds max_input_bytes="
            f"{max_input_bytes:,} ({_size_text(max_input_bytes)}). Raise max_input_bytes if the machine has "
            "the memory (pandas needs several times the file size), or load less: filter the events by date "
            "or split the file"
        )


def _size_text(n_bytes: int) -> str:
    """``1,234,567 bytes (1.2 MiB)``."""
    value, unit = float(n_bytes), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{n_bytes:,} bytes" + ("" if unit == "bytes" else f" ({value:.1f} {unit})")


def check_column_mapping(columns: Mapping[str, str] | None) -> dict[str, str]:
    """Validate a contract-name → source-name mapping; unknown contract names are an error."""
    mapping = dict(columns or {})
    unknown = sorted(set(mapping) - set(MAPPABLE_COLUMNS))
    if unknown:
        raise DataError(
            f"columns mapping has unknown key(s) {unknown}: keys are the contract's column names "
            f"{list(MAPPABLE_COLUMNS)} and values your columns, e.g. user_id=customer"
        )
    bad = {k: v for k, v in mapping.items() if not isinstance(v, str) or not v}
    if bad:
        raise DataError(f"columns mapping values must be non-empty column names; got {bad}")
    return mapping


def parse_names(value: str | Iterable[str], setting: str = "names") -> tuple[str, ...]:
    """Column names of a headerless file from ``"a,b,c"`` or a list; empty or repeated names are a DataError.

    ``setting`` is the option's name in messages ("names", "user_names", "item_names").
    """
    parts = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(part).strip() for part in parts)
    if not names or any(not name for name in names):
        example = _NAMES_EXAMPLE.get(setting, _NAMES_EXAMPLE["names"])
        raise DataError(f"{setting} must be non-empty column names in file order, e.g. {example}; got {value!r}")
    require_unique_columns(names, setting)
    return names


def check_encoding(encoding: str) -> str:
    """``encoding`` if Python knows the codec, else a DataError listing common ones."""
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise DataError(
            f"unknown text encoding {encoding!r} (--encoding): give a Python codec name such as utf-8, latin-1 "
            "or cp1252"
        ) from None
    return encoding


def read_table(
    path: Path,
    sep: str | None = None,
    text_columns: Iterable[str] = (),
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    names_setting: str = "names",
) -> pd.DataFrame:
    """Read a CSV/TSV/Parquet file; ``text_columns`` (ids) are read as text with only empty cells missing.

    ``names``: a text file without a header line, its columns' names in file order (one per field).
    ``encoding``: the text file's encoding (a UTF-8 byte-order mark is skipped either way).
    ``names_setting``: the setting that gives ``names`` for this file, suggested when it seems to lack a header.
    """
    path = Path(path)
    # utf-8-sig: a byte-order mark from spreadsheet exports would otherwise stick to the first column name.
    codec = "utf-8-sig" if codecs.lookup(check_encoding(encoding)).name == "utf-8" else encoding
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    require_file(path)
    separator = sep
    try:
        if suffix in _PARQUET_SUFFIXES:
            if names is not None:
                raise DataError(
                    f"{path} is Parquet, whose columns have names: names (--names) is for text files without a "
                    "header line; map Parquet columns with columns (--columns) instead"
                )
            return pd.read_parquet(path)
        separator = sep if sep is not None else _TEXT_SEPARATORS.get(suffix)
        if separator is None:
            raise DataError(
                f"cannot tell the format of {path} from its extension {suffix or '(none)'}: use .csv, .tsv, "
                ".tab, .parquet, .pq or RecBole's .inter/.user/.item, or give the separator (sep / --sep)"
            )
        # A separator of several characters ("::" in MovieLens 1M) is a regular expression to pandas, which only
        # its python engine reads (it would fall back to it with a warning).
        engine = "python" if len(separator) > 1 else "c"
        # RecBole's atomic files quote nothing: a title such as 'The "Quoted" Film' is a value as it stands.
        quoting = csv.QUOTE_NONE if suffix in _ATOMIC_SUFFIXES else csv.QUOTE_MINIMAL
        # "user_id, item_id" (hand-written or report exports): the space after a comma is not part of the name or
        # id, else " item_id" is missing and " 10" is another item than "10". Whitespace separators keep theirs.
        spaces = not separator.isspace()
        # pandas renames a repeated name to "name.1": read the header line as data to see the names as given.
        written = pd.read_csv(
            path,
            sep=separator,
            header=None,
            nrows=1,
            dtype=str,
            encoding=codec,
            engine=engine,
            quoting=quoting,
            skipinitialspace=spaces,
        )
        field_types: dict[str, str] = {}
        if names is None:
            header = pd.read_csv(
                path, sep=separator, nrows=0, encoding=codec, engine=engine, quoting=quoting, skipinitialspace=spaces
            ).columns
            first = [str(value) for value in written.iloc[0].tolist()]
            if spaces:  # "user_id ,item_id": the space before a comma is no more part of a name than one after it
                first = [value.rstrip() for value in first]
                header = pd.Index([str(name).rstrip() for name in header])
            if len(set(first)) < len(first) and any(_looks_like_a_value(value) for value in first):
                # "1::F::1::10::48067" (a user aged 1): repeated values in a data line, not repeated names.
                _headerless(str(path), "header line", first, names_setting)
            require_unique_columns(first, str(path))
            typed = [_ATOMIC_NAME.match(name) for name in first]
            if first and all(typed):
                # A RecBole atomic header ("user_id:token"): the names without their types.
                field_types = {match["name"]: match["type"] for match in typed if match}
                header = pd.Index(list(field_types))
                require_unique_columns(header, str(path))
                if separator != ",":  # RecBole's own layout (tabs) quotes nothing; a CSV keeps CSV quoting
                    quoting = csv.QUOTE_NONE
        else:
            header = pd.Index(list(names))
            if written.shape[1] != len(header):
                first = ", ".join(repr(v) for v in written.iloc[0].tolist())
                raise DataError(
                    f"{path}: its first line has {written.shape[1]} field(s) ({first}) but {names_setting} gives "
                    f"{len(header)} ({','.join(header)}); give one name per field, in file order, or check the "
                    f"separator (sep={separator!r})"
                )
        text = set(text_columns)
        frame = pd.read_csv(
            path,
            sep=separator,
            engine=engine,
            encoding=codec,
            header=None if names is not None else 0,
            names=list(header),
            dtype={c: str for c in header if c in text or field_types.get(c, "").startswith("token")},
            keep_default_na=False,
            na_values={c: [""] if c in text else _TEXT_NA_VALUES for c in header},
            quoting=quoting,
            skipinitialspace=spaces,
        )
        if not isinstance(frame.index, pd.RangeIndex):
            # pandas takes a first data line with more fields than names as "the first fields are an index" and
            # shifts every column by one: "10,Action, Comedy" under "item_id,genres" became item "Action".
            raise DataError(
                f"{path}: line 2, the first after the header, has more fields than the {len(header)} column(s) "
                f"named ({', '.join(header)}); quote values that contain the separator {separator!r} "
                '("Action, Comedy"), or give the file\'s separator (sep / --sep)'
            )
        if spaces:  # "7 ,i1" and "7,i2" are one user, as " 7" and "7" are (skipinitialspace); "M ," is "M"
            for column in frame.columns:
                if pd.api.types.is_string_dtype(frame[column]):  # text only (object columns of all strings too)
                    frame[column] = frame[column].str.rstrip()
        for column, kind in field_types.items():
            if kind == "token" and column not in text:
                frame[column] = _token_values(frame[column])
        frame.attrs["field_types"] = field_types
        return frame
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(_undecodable_message(path, encoding, exc)) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"cannot read {path}: the file is empty") from exc
    except (OSError, ValueError, ImportError, pd.errors.ParserError) as exc:
        if suffix in _PARQUET_SUFFIXES:
            raise DataError(f"cannot read {path} as Parquet: {exc}") from exc
        hint = ""
        if isinstance(exc, pd.errors.ParserError) and "Expected" in str(exc):  # "Expected 3 fields in line 9, saw 4"
            hint = f"; quote values that contain the separator {separator!r}, or give the file's separator (--sep)"
        raise DataError(f"cannot read {path} as delimited text (sep={separator!r}): {str(exc).strip()}{hint}") from exc


def _undecodable_message(path: Path, encoding: str, exc: UnicodeDecodeError) -> str:
    """Name the first line of ``path`` that ``encoding`` cannot decode, and the way out."""
    label = "UTF-8" if codecs.lookup(encoding).name == "utf-8" else encoding
    found = _first_undecodable_line(path, encoding)
    if found is None:
        what = f"it is not {label} text ({exc})"
    else:
        what = f"line {found[0]} ({found[1][:60]!r}) is not {label} text"
    return (
        f"cannot read {path}: {what}. Give the file's encoding with --encoding (encoding= in Python), e.g. latin-1 "
        "(MovieLens 1M's movies.dat) or cp1252 (Windows exports), or re-save it as UTF-8"
    )


def _first_undecodable_line(path: Path, encoding: str) -> tuple[int, bytes] | None:
    """(1-based line number, raw bytes) of the first line ``encoding`` cannot decode, or None if not found.

    Only for encodings where a newline byte is always a line break (UTF-8 and the single-byte codecs) and for
    plain, gzip, bzip2 and xz files; anything else returns None and the message goes without a line.
    """
    if codecs.lookup(encoding).name.startswith(("utf-16", "utf-32")):
        return None
    openers = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
    opener = openers.get(path.suffix.lower(), open if path.suffix.lower() not in _COMPRESSION_SUFFIXES else None)
    if opener is None:
        return None
    decoder = codecs.getincrementaldecoder(encoding)()
    with opener(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError:
                return number, line.rstrip(b"\r\n")
    return None


def require_unique_columns(names: Iterable[object], origin: str) -> None:
    """Raise a DataError naming the column names that occur more than once in ``names`` (header or query)."""
    seen = [str(name) for name in names]
    repeated = sorted({name for name in seen if seen.count(name) > 1})
    if repeated:
        raise DataError(
            f"{origin} has repeated column name(s) {repeated} (columns: {seen}): which one holds the data is "
            "ambiguous; rename or drop the extra column(s), or give each selected column its own alias in SQL"
        )


def standardize_interactions(
    df: pd.DataFrame, columns: Mapping[str, str], origin: str, timestamp_unit: str = "s"
) -> pd.DataFrame:
    """Rename mapped columns to the contract's and convert ids, rating and timestamp to contract dtypes.

    ``origin`` names the file or table in error messages. Contract columns come first; extra columns are kept.
    """
    mapping = check_column_mapping(columns)
    require_unique_columns(df.columns, origin)
    has_rating = mapping.get(RATING, RATING) in df.columns
    if RATING in mapping and not has_rating:
        _missing_column(df, RATING, mapping, origin)  # asked for explicitly, so absence is an error
    required = [USER, ITEM, TIMESTAMP, *([RATING] if has_rating else [])]
    out = _rename(df, required, mapping, origin)
    # A source's own "repeat_count" was read as the cleaning stage's event weight (activity features 1,000 times
    # too high); "rating_missing" as its flag. Kept, as every extra column is, under another name.
    internal = {name: f"source_{name}" for name in INTERNAL_COLUMNS if name in out.columns}
    clash = [new for new in internal.values() if new in out.columns]
    if clash:
        raise DataError(f"{origin}: rename or drop the column(s) {list(internal)} (recforge's own bookkeeping)")
    out = out.rename(columns=internal)
    out[USER] = ids_to_text(out[USER], f"{origin}, column {mapping.get(USER, USER)!r}")
    out[ITEM] = ids_to_text(out[ITEM], f"{origin}, column {mapping.get(ITEM, ITEM)!r}")
    if has_rating:
        out[RATING] = _ratings(out[RATING], f"{origin}, column {mapping.get(RATING, RATING)!r}")
    out[TIMESTAMP] = to_utc(out[TIMESTAMP], timestamp_unit, f"{origin}, column {mapping.get(TIMESTAMP, TIMESTAMP)!r}")
    return out[required + [c for c in out.columns if c not in required]].reset_index(drop=True)


def standardize_entities(df: pd.DataFrame, id_column: str, columns: Mapping[str, str], origin: str) -> pd.DataFrame:
    """A users (``id_column="user_id"``) or items table: rename the id column and read ids as text."""
    mapping = dict(check_column_mapping(columns))
    require_unique_columns(df.columns, origin)
    if mapping.get(id_column, id_column) not in df.columns and id_column in df.columns:
        # --columns user_id=customer names the events file's column; a users file that calls it user_id is read
        # as it is (the mapping applies to every file, and the advice it gave broke the events file instead).
        mapping.pop(id_column)
    out = _rename(df, [id_column], mapping, origin, names_setting=_NAMES_SETTING[id_column])
    out[id_column] = ids_to_text(out[id_column], f"{origin}, column {mapping.get(id_column, id_column)!r}")
    if GENRES in out.columns:
        # A Parquet list column (["Action", "Comedy"]) came out as the text "['Action' 'Comedy']": one nonsense
        # label per combination. Lists become the labels joined by the separator, as the text formats write them.
        out[GENRES] = out[GENRES].map(_joined_labels, na_action="ignore")
        genres = out[GENRES].astype("str")
        # MovieLens' newer releases (ml-latest, 20M, 25M, 32M) write "(no genres listed)" for an item without
        # genres: a missing value, not a label that would become a "share_no_genres_listed" feature.
        out[GENRES] = genres.mask(genres.str.strip().str.lower() == _NO_GENRES)
    return out[[id_column] + [c for c in out.columns if c != id_column]].reset_index(drop=True)


def _joined_labels(value: object) -> object:
    """A list of category labels as one ``CATEGORY_SEPARATOR``-joined text (None when it holds none)."""
    if not isinstance(value, (list, tuple, np.ndarray)):
        return value
    labels = [str(label).strip() for label in value if label is not None and str(label).strip()]
    return CATEGORY_SEPARATOR.join(labels) if labels else None


def _token_values(values: pd.Series) -> pd.Series:
    """An atomic file's ``token`` column (read as text): integers when every value is written as one, else text.

    So an age stays a number (bucketed, imputable) while a code such as zip ``01234`` keeps its leading zero.
    """
    present = values.dropna()
    if present.empty or not present.str.fullmatch(r"-?(0|[1-9][0-9]{0,17})").all():
        return values
    return pd.to_numeric(values).astype("Int64" if values.isna().any() else "int64")


def atomic_genres(items: pd.DataFrame) -> pd.DataFrame:
    """An items table read from a RecBole atomic file, its category labels as the contract's ``genres``.

    The first ``token_seq`` column among ``genres``, ``genre`` and ``class`` holds space-separated labels
    (``Animation Children's Comedy``); it becomes ``genres`` with ``|`` between the labels, an empty cell
    missing. A table from any other file, or without such a column, is returned as it is.
    """
    types = items.attrs.get("field_types", {})
    source = next((name for name in (GENRES, *_ATOMIC_GENRE_FIELDS) if types.get(name) == "token_seq"), None)
    if source is None or (source != GENRES and GENRES in items.columns):
        return items
    labels = items[source].astype("str").str.split().str.join(CATEGORY_SEPARATOR)
    return items.drop(columns=[source]).assign(**{GENRES: labels.mask(labels.str.len() == 0)})


def ids_to_text(values: pd.Series, where: str = "ids") -> pd.Series:
    """Identifiers as exact text (``str`` dtype); missing stays missing, integral floats lose their ``.0``.

    Integers convert digit for digit (2**62 + 1 survives); floats mostly occur when a reader widened an integer
    column with gaps, so ``7.0`` means id ``7`` — value by value, so that one ``1.5`` elsewhere in the column does
    not turn every id into ``7.0`` text. Bytes must be UTF-8 text: decoding others "with replacement" merged
    distinct binary keys into one id. ``where`` (file or table and column) names the ids in the DataError raised for
    ids that are not UTF-8 text or that hold NUL, which PostgreSQL cannot store (SQLite would: the same data must
    publish the same on both).
    """
    if pd.api.types.is_float_dtype(values.dtype):
        integral = (values == values.round()) & (values.abs() < 2**63)
        text = values.astype("str")
        if integral.any():
            text = text.mask(integral, values.where(integral).astype("Int64").astype("str"))
        text = text.mask(values.isna())
        return text.astype("str")
    if values.dtype == object:
        try:  # pandas' text is UTF-8 (pyarrow): it refuses what does not encode
            text = values.map(_id_text, na_action="ignore").astype("str")
        except UnicodeEncodeError:
            bad = pd.Series(
                [isinstance(v, (str, bytes)) and _not_utf8(_id_text(v)) for v in values], index=values.index
            )
            raise DataError(
                f"{where}: {int(bad.sum())} id(s) are not UTF-8 text ({_examples(values, bad)}): bytes that do not "
                "decode as UTF-8, or lone surrogates; recforge keeps ids as text: convert the column to text first "
                "(hex, for example, in the query or the file)"
            ) from None
    else:
        text = values.astype("str")
    has_nul = text.str.contains("\x00", regex=False).fillna(False).astype(bool)
    if has_nul.any():
        raise DataError(
            f"{where}: {int(has_nul.sum())} id(s) contain the NUL character ({_examples(text, has_nul)}), which "
            "PostgreSQL cannot store; remove or replace it in the source"
        )
    return text


def to_utc(values: pd.Series, unit: str, origin: str, unit_hint: str | None = None) -> pd.Series:
    """Timestamps as tz-aware UTC datetimes.

    Datetime values: naive ones are taken as UTC, aware ones converted. Numbers (or numeric text): epoch in
    ``unit``. Other text: ISO 8601, naive → UTC. ``origin`` names the file/table and column for errors;
    ``unit_hint`` replaces the advice given for epochs that look like another unit (default: set
    timestamp_unit).
    """
    if unit not in TIMESTAMP_UNITS:
        raise DataError(f"timestamp unit {unit!r} is not one of {list(TIMESTAMP_UNITS)} (for {origin})")
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.dt.tz_localize("UTC")
    if pd.api.types.is_bool_dtype(values.dtype):
        raise DataError(f"{origin} holds true/false values, not timestamps")
    if pd.api.types.is_numeric_dtype(values.dtype):
        return _from_epoch(values, unit, origin, unit_hint)
    numbers = pd.to_numeric(values, errors="coerce")
    present = values.notna()
    if present.any() and numbers[present].notna().all():
        return _from_epoch(numbers, unit, origin, unit_hint)
    if values.dtype == object and values[present].map(lambda v: hasattr(v, "year")).all():
        # datetime/date objects, as database drivers return them
        return pd.to_datetime(values, utc=True)
    numeric = numbers.notna() & present
    if numeric.any():
        # Epoch numbers with some text among them: the text rows are the odd ones out (an ISO parse would
        # report every number instead).
        bad = present & ~numeric
        raise DataError(
            f"{origin}: {int(bad.sum())} of {int(present.sum())} timestamp(s) are not epoch numbers like the "
            f"others, e.g. {_examples(values, bad)}; write every timestamp as an epoch number (unit {unit!r})"
        )
    parsed = pd.to_datetime(values.astype("str"), utc=True, format="ISO8601", errors="coerce")
    bad = parsed.isna() & present
    if bad.any():
        raise DataError(
            f"{origin}: {int(bad.sum())} timestamp(s) are neither epoch numbers nor ISO 8601 datetimes, e.g. "
            f"{_examples(values, bad)}; write them like 2024-01-31T13:45:00Z or as epoch numbers"
        )
    return parsed


def _from_epoch(numbers: pd.Series, unit: str, origin: str, unit_hint: str | None = None) -> pd.Series:
    default = f"are the timestamps in another unit than {unit!r}? set timestamp_unit (--timestamp-unit)"
    hint = unit_hint or default
    try:
        out = pd.to_datetime(numbers, unit=unit, utc=True)
    except (OverflowError, ValueError) as exc:
        raise DataError(f"{origin}: epoch timestamps out of range ({exc}); {hint}") from exc
    late = out.dt.year > _LATEST_PLAUSIBLE_YEAR
    if late.any():
        raise DataError(
            f"{origin}: {int(late.sum())} epoch timestamp(s) fall after {_LATEST_PLAUSIBLE_YEAR}, e.g. "
            f"{_examples(numbers, late)}; {hint}"
        )
    return out


def _ratings(values: pd.Series, origin: str) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna()
    if bad.any():
        raise DataError(
            f"{origin}: {int(bad.sum())} rating(s) are not numbers, e.g. {_examples(values, bad)}; "
            "fix them, or map rating to another column"
        )
    # Models hold ratings as float32: above its largest value (~3.4e38) a rating becomes infinite there, and
    # every model failed on it, naming positions after cleaning instead of the file.
    magnitude = np.abs(numbers.to_numpy(dtype="float64", na_value=np.nan))
    infinite = pd.Series(magnitude > np.finfo(np.float32).max, index=numbers.index)
    if infinite.any():
        raise DataError(
            f"{origin}: {int(infinite.sum())} rating(s) are infinite or too large for a rating (beyond ±3.4e38), "
            f"e.g. {_examples(values, infinite)}; fix them in the source, or leave them empty (a missing rating is "
            "kept as an event)"
        )
    return numbers.astype("float64")


def _rename(
    df: pd.DataFrame, names: list[str], mapping: Mapping[str, str], origin: str, names_setting: str = "names"
) -> pd.DataFrame:
    """Copy of ``df`` with the source columns of ``names`` renamed to the contract names.

    ``names_setting``: the setting that names a headerless file's columns, suggested when one seems to lack a
    header line.
    """
    renames: dict[str, str] = {}
    for target in names:
        source = mapping.get(target, target)
        if source not in df.columns:
            _missing_column(df, target, mapping, origin, names_setting)
        if source != target:
            if target in df.columns:
                raise DataError(
                    f"{origin} has both {source!r} (mapped to {target}) and a column named {target!r}; "
                    f"rename or drop one of them"
                )
            renames[source] = target
    return df.rename(columns=renames)


def _missing_column(
    df: pd.DataFrame, target: str, mapping: Mapping[str, str], origin: str, names_setting: str = "names"
) -> None:
    source = mapping.get(target, target)
    found = [str(c) for c in df.columns]
    # Never suggest a column that already plays another contract role (item_id is not "close" to user_id).
    others = {mapping.get(name, name) for name in MAPPABLE_COLUMNS if name != target}
    close = difflib.get_close_matches(source, [c for c in found if c not in others], n=1, cutoff=0.5)
    guess = close[0] if close else "<your column>"
    what = f"column {source!r} (mapped to {target})" if source != target else f"column {target!r}"
    # One column whose name holds another separator: the file was split on the wrong character.
    other = [s for s in _LIKELY_SEPARATORS if len(found) == 1 and s in found[0]]
    if other:
        raise DataError(
            f"{origin} has no {what}: its header was read as the single column {found[0]!r}, so the file is "
            f"probably separated by {other[0]!r}, not by the separator used; set sep={other[0]!r} (--sep)"
        )
    if found and any(_looks_like_a_value(name) for name in found):
        # No header line: pandas took the first row (an event, a user, an item) for the column names. A real
        # header rarely has a number or a date among its names.
        _headerless(origin, what, found, names_setting)
    raise DataError(
        f"{origin} has no {what}; columns found: {found}. Map yours with --columns {target}={guess} "
        f"(columns={{{target!r}: {guess!r}}} in Python)"
    )


def _headerless(origin: str, what: str, first_line: list[str], names_setting: str) -> None:
    """Raise the DataError for a text file whose first line is data: which setting names its columns, and how."""
    suggestion = _suggested_names(names_setting, len(first_line))
    flag = "--" + names_setting.replace("_", "-")
    yours = "" if names_setting == "names" else "; the attributes' names are yours to choose"
    raise DataError(
        f"{origin} has no {what}: its first line looks like data ({', '.join(map(repr, first_line))}), not a "
        f"header. Name its columns in file order with {flag} {suggestion} ({names_setting}=[...] in "
        f"Python{yours}), or add a header line to the file"
    )


def _looks_like_a_value(name: str) -> bool:
    """Whether a column name read from a file's first line is a number or an ISO date (an event, not a name)."""
    text = name.strip()
    try:
        float(text)
        return True
    except ValueError:
        pass
    return bool(_ISO_DATE.match(text))


#: What ``--names`` to suggest for a headerless file with this many fields (MovieLens-style layouts).
_NAMES_BY_FIELDS = {3: "user_id,item_id,timestamp", 4: "user_id,item_id,rating,timestamp"}
#: The setting that names a headerless users / items file's columns, by the file's id column.
_NAMES_SETTING = {USER: "user_names", ITEM: "item_names"}
#: Layouts known for headerless side files: MovieLens 1M's users.dat and movies.dat.
_SIDE_NAMES_BY_FIELDS = {
    ("user_names", 5): "user_id,gender,age,occupation,zip_code",
    ("item_names", 3): "item_id,title,genres",
}
_NAMES_EXAMPLE = {
    "names": "user_id,item_id,rating,timestamp",
    "user_names": "user_id,gender,age",
    "item_names": "item_id,title,genres",
}


def _suggested_names(setting: str, fields: int) -> str:
    """Names to suggest for a headerless file with ``fields`` columns, given by ``setting``."""
    if setting == "names":
        return _NAMES_BY_FIELDS.get(fields, "user_id,item_id,timestamp,… (one name per field)")
    known = _SIDE_NAMES_BY_FIELDS.get((setting, fields))
    if known is not None:
        return known
    id_column = setting.replace("_names", "_id")
    return f"{id_column},… (one name per field, the id's column named {id_column})"


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([ T].*)?$")


def _id_text(value: object) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, bytes):
        # Undecodable bytes become lone surrogates, which the conversion to text then refuses (a replacement
        # character instead merged distinct binary keys into one id).
        return value.decode("utf-8", errors="surrogateescape")
    return str(value)


def _not_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _examples(values: pd.Series, mask: pd.Series) -> str:
    rows = values[mask].head(_SHOW)
    return ", ".join(f"row {i}: {v!r}" for i, v in rows.items())


def file_stem(path: Path) -> str:
    """The data set name of an events file: its name without compression/format suffixes (events.csv.gz → events)."""
    name = path.name
    for suffix in reversed(path.suffixes):
        if suffix.lower() in _COMPRESSION_SUFFIXES | _PARQUET_SUFFIXES | set(_TEXT_SEPARATORS):
            name = name[: -len(suffix)]
        else:
            break
    return name or path.name
