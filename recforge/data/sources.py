"""Which source to ingest, as one frozen value, and the dispatch from it to the loaders."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recforge.data.contract import DataError, Dataset
from recforge.data.files import (
    TIMESTAMP_UNITS,
    check_column_mapping,
    check_encoding,
    file_stem,
    load_files,
    parse_names,
    require_file,
)
from recforge.data.movielens import OFFICIAL_URL, load_movielens_100k, require_folder
from recforge.data.sql import load_sql, mask_url
from recforge.data.synthetic import generate_synthetic

#: Source kinds :func:`load_dataset` understands.
KINDS: tuple[str, ...] = ("synthetic", "movielens-100k", "csv", "parquet", "sql")
_PATH_FIELDS = ("data_dir", "interactions", "users", "items")
_INT_FIELDS = ("synthetic_users", "synthetic_items", "synthetic_events", "seed", "max_input_bytes")
_SEP_ALIASES = {"\\t": "\t", "tab": "\t", "TAB": "\t"}
# URL schemes of a file to download (MovieLens' zip), never of a database SQLAlchemy connects to.
_DOWNLOAD_SCHEMES = ("http://", "https://", "ftp://", "file://")


@dataclass(frozen=True)
class SourceSpec:
    """Where the interactions come from. Only the fields of the chosen ``kind`` are used.

    Attributes:
        kind: one of :data:`KINDS`.
        data_dir: movielens-100k: folder with GroupLens/RecBole files; None downloads to the cache.
        interactions: csv/parquet: the events file (the extension picks the format per file, so csv and
            parquet kinds behave the same and files may be mixed).
        users: csv/parquet: optional user attributes file.
        items: csv/parquet: optional item attributes file.
        columns: csv/parquet/sql: contract column name → source column name, e.g. {"user_id": "customer"}.
        sep: csv: field separator when the extension does not tell it.
        names: csv: the interactions file has no header line; these are its columns' names in file order
            (e.g. ``["user_id", "item_id", "rating", "timestamp"]`` for MovieLens' ``u.data``/``ratings.dat``).
        user_names: csv: the users file has no header line; its columns' names in file order, the id column
            named ``user_id`` (or as ``columns`` maps it), e.g. ``user_id,gender,age,occupation,zip_code``.
        item_names: csv: the same for the items file, e.g. ``item_id,title,genres`` (MovieLens 1M's
            ``movies.dat``).
        encoding: csv: text encoding of the files (a Python codec name, e.g. "latin-1"); default UTF-8.
        timestamp_unit: csv/parquet/sql: unit of numeric epoch timestamps ("s", "ms", ...).
        max_input_bytes: csv/parquet: refuse input files larger than this in all (bytes on disk), before
            reading them; None: no limit. A memory guard for machines that share their RAM.
        source_url: sql: the SQLAlchemy database URL; movielens-100k: the zip to download instead of the
            official one (None = official).
        table: sql: interactions table name (exactly one of table/query).
        query: sql: SQL text returning the interactions, run as is.
        users_table: sql: optional users table name.
        items_table: sql: optional items table name.
        schema: sql: schema of the named tables.
        synthetic_users: synthetic: number of users.
        synthetic_items: synthetic: number of items.
        synthetic_events: synthetic: number of events.
        seed: synthetic: random seed.
        rating_range: the valid rating scale, e.g. (1, 5); ratings outside it fail validation. Overrides the
            scale a source declares itself (MovieLens and synthetic declare 1–5); None keeps the source's.
    """

    kind: str = "synthetic"
    data_dir: Path | None = None
    interactions: Path | None = None
    users: Path | None = None
    items: Path | None = None
    columns: dict[str, str] = field(default_factory=dict)
    sep: str | None = None
    names: tuple[str, ...] | None = None
    user_names: tuple[str, ...] | None = None
    item_names: tuple[str, ...] | None = None
    encoding: str = "utf-8"
    timestamp_unit: str = "s"
    max_input_bytes: int | None = None
    source_url: str | None = None
    table: str | None = None
    query: str | None = None
    users_table: str | None = None
    items_table: str | None = None
    schema: str | None = None
    synthetic_users: int = 1500
    synthetic_items: int = 800
    synthetic_events: int = 60_000
    seed: int = 42
    rating_range: tuple[float, float] | None = None

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> SourceSpec:
        """Build a spec from a config mapping (e.g. parsed YAML or CLI options).

        Unknown keys and unknown kinds are rejected. Paths may be strings; ``columns`` may be a mapping, a
        ``"user_id=customer,item_id=sku"`` string or a list of ``"key=value"`` strings; None values are
        treated as absent.
        """
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise DataError(f"unknown source setting(s) {unknown}; valid settings: {valid}")
        values: dict[str, Any] = {k: v for k, v in d.items() if v is not None}
        kind = values.setdefault("kind", infer_kind(values))
        if kind not in KINDS:
            raise DataError(f"unknown source kind {kind!r}; valid kinds: {list(KINDS)}")
        for name in _PATH_FIELDS:
            if name in values:
                values[name] = Path(values[name]).expanduser()
        for name in _INT_FIELDS:
            if name in values:
                values[name] = _as_int(name, values[name])
        if "columns" in values:
            values["columns"] = check_column_mapping(_parse_columns(values["columns"]))
        if "sep" in values:
            # A tab is hard to type on a command line or in YAML: accept the escape and the word.
            values["sep"] = _SEP_ALIASES.get(values["sep"], values["sep"])
        if "rating_range" in values:
            values["rating_range"] = _parse_rating_range(values["rating_range"])
        for setting in ("names", "user_names", "item_names"):
            if setting in values:
                values[setting] = parse_names(values[setting], setting)
        if "encoding" in values:
            values["encoding"] = check_encoding(values["encoding"])
        if values.get("max_input_bytes", 1) <= 0:
            budget = values["max_input_bytes"]
            raise DataError(f"source setting max_input_bytes must be a positive byte count, got {budget}")
        unit = values.get("timestamp_unit", cls.timestamp_unit)
        if unit not in TIMESTAMP_UNITS:
            raise DataError(f"timestamp_unit {unit!r} is not one of {list(TIMESTAMP_UNITS)}")
        return cls(**values)

    @property
    def dataset_name(self) -> str:
        """The name the loaded :class:`Dataset` carries (run records and champions are kept per name); known before
        any data is read, so a run that fails while loading is recorded under it too."""
        if self.kind in ("csv", "parquet") and self.interactions is not None:
            return file_stem(self.interactions)
        if self.kind == "sql":
            return self.table if self.table is not None else "sql-query"
        return self.kind

    def describe(self) -> str:
        """One line for logs: the kind and its settings, with any database password masked."""
        if self.kind == "synthetic":
            return (
                f"synthetic(users={self.synthetic_users}, items={self.synthetic_items}, "
                f"events={self.synthetic_events}, seed={self.seed})"
            )
        if self.kind == "movielens-100k":
            where = str(self.data_dir) if self.data_dir else f"download {mask_url(self.source_url or OFFICIAL_URL)}"
            return f"movielens-100k({where})"
        parts: list[str] = []
        if self.kind == "sql":
            parts.append(f"url={mask_url(self.source_url or '')}")
            if self.table:
                parts.append(f"table={_qualified(self.table, self.schema)}")
            if self.query:
                text = " ".join(self.query.split())
                parts.append(f"query={text[:60] + '…' if len(text) > 60 else text!r}")
            parts += [f"{t}={_qualified(v, self.schema)}" for t, v in self._tables() if v]
        else:
            parts += [f"{n}={getattr(self, n)}" for n in ("interactions", "users", "items") if getattr(self, n)]
            if self.sep is not None:
                parts.append(f"sep={self.sep!r}")
            for setting in ("names", "user_names", "item_names"):
                if getattr(self, setting) is not None:
                    parts.append(f"{setting}=" + ",".join(getattr(self, setting)))
            if self.encoding != "utf-8":
                parts.append(f"encoding={self.encoding}")
            if self.max_input_bytes is not None:
                parts.append(f"max_input_bytes={self.max_input_bytes}")
        if self.columns:
            parts.append("columns=" + ",".join(f"{k}={v}" for k, v in self.columns.items()))
        if self.timestamp_unit != "s":
            parts.append(f"timestamp_unit={self.timestamp_unit}")
        if self.rating_range is not None:
            parts.append(f"rating_range={self.rating_range[0]:g}-{self.rating_range[1]:g}")
        return f"{self.kind}({', '.join(parts)})"

    def _tables(self) -> list[tuple[str, str | None]]:
        return [("users_table", self.users_table), ("items_table", self.items_table)]


def _parse_rating_range(value: Any) -> tuple[float, float]:
    """``(1, 5)``, ``[1, 5]`` or ``"1,5"`` → ``(1.0, 5.0)``; anything else is a DataError saying the format."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        low, high = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise DataError(f"rating_range must be two numbers 'min,max' such as '1,5', got {value!r}") from None
    if not low < high:
        raise DataError(f"rating_range must have min < max, got {low} and {high}")
    return (low, high)


def load_dataset(spec: SourceSpec) -> Dataset:
    """Load the dataset ``spec`` describes, with ``spec.rating_range`` (if set) as its rating scale."""
    dataset = _load(spec)
    if dataset.name != spec.dataset_name:  # the run was recorded under spec.dataset_name before loading
        raise AssertionError(f"{spec.kind} source loaded data set {dataset.name!r}, expected {spec.dataset_name!r}")
    if spec.rating_range is not None:
        dataset = dataclasses.replace(dataset, rating_range=spec.rating_range)
    return dataset


def check_complete(spec: SourceSpec) -> None:
    """Raise a DataError naming the setting a kind needs but ``spec`` lacks (cheap: reads no data)."""
    if spec.kind in ("csv", "parquet") and spec.interactions is None:
        raise DataError(f"source kind {spec.kind!r} needs interactions (the events file path, --interactions)")
    if spec.kind == "sql":
        if not spec.source_url:
            raise DataError("source kind 'sql' needs source_url (a SQLAlchemy URL such as sqlite:///events.db)")
        if (spec.table is None) == (spec.query is None):
            raise DataError("source kind 'sql' needs exactly one of table (--table) or query (--query)")


def infer_kind(settings: Mapping[str, Any]) -> str:
    """The kind that source settings without one describe: sql with a source_url (a database's), csv or parquet
    (by the file's extension) with interactions, movielens-100k with a data_dir or a download URL, else synthetic.
    Without it, a data_dir or an interactions file given without a kind (a deployment's parameters, a TOML file)
    was ignored, and the run trained on and published synthetic data."""
    url = settings.get("source_url")
    if url is not None:
        # source_url is also MovieLens' download (a mirror of the zip): read as a database URL it failed to
        # connect to "https". A table or query always means SQL.
        # Any other scheme is a database's, even one whose path ends in .zip (sqlite:///events.zip).
        download = str(url).lower().startswith(_DOWNLOAD_SCHEMES)
        sql = settings.get("table") is not None or settings.get("query") is not None
        return "movielens-100k" if download and not sql else "sql"
    if settings.get("interactions") is not None:
        return "parquet" if str(settings["interactions"]).lower().endswith((".parquet", ".pq")) else "csv"
    if settings.get("data_dir") is not None:
        return "movielens-100k"
    return "synthetic"


def check_paths(spec: SourceSpec) -> None:
    """Raise a DataError naming the first folder or file of ``spec`` that is not there (cheap: reads no data).

    For callers that would otherwise run many times into the same missing path, such as a backfill's dates.
    """
    if spec.kind == "movielens-100k" and spec.data_dir is not None:
        require_folder(spec.data_dir)
    if spec.kind in ("csv", "parquet"):
        for setting in ("interactions", "users", "items"):
            path = getattr(spec, setting)
            if path is not None:
                require_file(path, f"{setting} file")


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_url(url: str) -> str:
    """``url`` with each ``${NAME}`` replaced by that environment variable.

    So a password can live in the worker's environment (or a Prefect secret exported there) instead of the
    flow's parameters, which the Prefect server stores and shows: ``postgresql://app:${EVENTS_DB_PASSWORD}@db/x``.
    """

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise DataError(f"source_url refers to ${{{name}}}, but environment variable {name} is not set")
        return os.environ[name]

    return _ENV_REFERENCE.sub(value, url)


def _load(spec: SourceSpec) -> Dataset:
    """Dispatch on ``spec.kind``; missing settings for its kind are a DataError naming them."""
    check_complete(spec)
    if spec.kind == "synthetic":
        try:
            return generate_synthetic(
                n_users=spec.synthetic_users,
                n_items=spec.synthetic_items,
                n_events=spec.synthetic_events,
                seed=spec.seed,
            )
        except ValueError as exc:
            raise DataError(
                f"synthetic source: {exc} (adjust synthetic_users, synthetic_items, synthetic_events)"
            ) from exc
    if spec.kind == "movielens-100k":
        return load_movielens_100k(data_dir=spec.data_dir, url=expand_url(spec.source_url or OFFICIAL_URL))
    if spec.kind in ("csv", "parquet"):
        if spec.interactions is None:
            raise DataError(f"source kind {spec.kind!r} needs interactions (the events file path)")
        return load_files(
            spec.interactions,
            users=spec.users,
            items=spec.items,
            columns=spec.columns,
            sep=spec.sep,
            names=spec.names,
            user_names=spec.user_names,
            item_names=spec.item_names,
            encoding=spec.encoding,
            timestamp_unit=spec.timestamp_unit,
            max_input_bytes=spec.max_input_bytes,
        )
    if spec.kind == "sql":
        if not spec.source_url:
            raise DataError("source kind 'sql' needs source_url (a SQLAlchemy URL such as sqlite:///events.db)")
        return load_sql(
            expand_url(spec.source_url),
            table=spec.table,
            query=spec.query,
            columns=spec.columns,
            users_table=spec.users_table,
            items_table=spec.items_table,
            schema=spec.schema,
            timestamp_unit=spec.timestamp_unit,
        )
    raise DataError(f"unknown source kind {spec.kind!r}; valid kinds: {list(KINDS)}")


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(f"source setting {name} must be an integer; got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise DataError(f"source setting {name} must be an integer; got {value!r}") from None


def _parse_columns(value: Any) -> dict[str, str]:
    """``{"user_id": "customer"}``, ``"user_id=customer,item_id=sku"`` or ``["user_id=customer", ...]``."""
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise DataError(f"columns must be a mapping or 'name=column' pairs; got {value!r}")
    out: dict[str, str] = {}
    for item in items:
        key, eq, column = str(item).partition("=")
        if not eq or not key.strip() or not column.strip():
            raise DataError(f"columns entry {item!r} is not of the form user_id=<your column>")
        out[key.strip()] = column.strip()
    return out


def _qualified(name: str, schema: str | None) -> str:
    return f"{schema}.{name}" if schema else name
