"""Content-addressed caching of the ingest, validate and prepare tasks.

A rerun of the ``recommend`` flow (say, after a training task failed) finds the loaded data set, its validation
report and the prepared data in Prefect's result storage (``$PREFECT_HOME/storage`` by default) instead of
computing them again. The cache key of a task run is a SHA-256 over:

- the stage name and a *code fingerprint*: the source of every ``recforge`` module, the expectation suites
  and the Python, pandas and numpy versions, so changed code never reads results written by older code;
- each input's *content*: files named by the source are hashed byte for byte (a MovieLens folder: every file
  in it), data frames through :func:`pandas.util.hash_pandas_object` with their column names and dtypes,
  arrays by dtype, shape and bytes, dataclasses field by field, plain values as text.

An input whose content cannot be fingerprinted (a SQL source, which can change at any moment, a missing file,
an object of unknown type) makes the key ``None``: Prefect then runs the task and caches nothing. Set
``PREFECT_TASKS_REFRESH_CACHE=true`` to recompute everything once; delete ``$PREFECT_HOME/storage`` to reclaim
the space. Keys (and so the stored files) are named ``recforge-<stage>-<sha256>``: :func:`purge_cached_results`
deletes them after an erasure (``recforge forget``), since they hold the (pseudonymised) events of every user.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.logging import get_logger
from prefect.settings import get_current_settings

from recforge.data.sources import SourceSpec

_REPO_ROOT = Path(__file__).resolve().parents[1]
# Code whose behaviour decides what the cached stages return.
_CODE_GLOBS = (("recforge", "**/*.py"), ("expectations", "*.json"))

log = get_logger(__name__)


class Unfingerprintable(Exception):
    """An input whose content cannot be hashed reliably; the task then runs without caching."""


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 of the pipeline's source files, expectation suites and the Python/pandas/numpy versions.

    Computed once per process: code does not change under a running interpreter.
    """
    digest = hashlib.sha256()
    digest.update(f"python {sys.version}|pandas {pd.__version__}|numpy {np.__version__}".encode())
    for folder, pattern in _CODE_GLOBS:
        for path in sorted((_REPO_ROOT / folder).glob(pattern)):
            digest.update(str(path.relative_to(_REPO_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def file_fingerprint(path: Path) -> str:
    """SHA-256 of a file's bytes (reading is far cheaper than parsing it again)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def source_fingerprint(source: Mapping[str, Any]) -> str:
    """The content of a source as the ingest task would read it.

    Files are hashed by content, so touching a file without changing it keeps the cache and editing it in place
    (same name, same size) does not. Raises :class:`Unfingerprintable` for SQL sources and missing files.
    """
    spec = SourceSpec.from_mapping(source)
    parts: list[str] = [repr(dataclasses.astuple(spec))]
    if spec.kind == "sql":
        raise Unfingerprintable("a SQL source can change between runs without any visible sign")
    if spec.kind == "movielens-100k" and spec.data_dir is not None:
        if not spec.data_dir.is_dir():
            raise Unfingerprintable(f"MovieLens folder {spec.data_dir} does not exist")
        # Every file in the folder: which ones the loader reads depends on what is there (GroupLens or RecBole).
        parts += [f"{p.name}:{file_fingerprint(p)}" for p in sorted(spec.data_dir.iterdir()) if p.is_file()]
    for name in ("interactions", "users", "items"):
        path = getattr(spec, name)
        if spec.kind in ("csv", "parquet") and path is not None:
            if not path.is_file():
                raise Unfingerprintable(f"{name} file {path} does not exist")
            parts.append(f"{name}:{file_fingerprint(path)}")
    # Synthetic data and the verified MovieLens download are fully determined by the settings (and the code).
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def folder_fingerprint(path: Path | str | None) -> str:
    """A folder an output is written to, by its absolute path (not its content, which the task writes).

    A relative path such as ``var/gx`` names a different folder in every checkout or working directory; keyed
    by the text, a run in one checkout was handed the report of another, pointing into a folder of that checkout.
    """
    return fingerprint(None if path is None else Path(path).resolve())


def frame_fingerprint(frame: pd.DataFrame | pd.Series) -> str:
    """SHA-256 of a frame's column names, dtypes, index and values (row order matters)."""
    digest = hashlib.sha256()
    if isinstance(frame, pd.Series):
        digest.update(f"series {frame.name!r} {frame.dtype}".encode())
    else:
        digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    try:
        hashed = pd.util.hash_pandas_object(frame, index=True)
    except TypeError as exc:  # unhashable cells, e.g. lists in an object column
        raise Unfingerprintable(f"frame values cannot be hashed: {exc}") from None
    digest.update(hashed.to_numpy().tobytes())
    return digest.hexdigest()


def fingerprint(value: Any) -> str:
    """A stable content hash of a task input; raises :class:`Unfingerprintable` for types it cannot read."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    """Add ``value``'s type and content to ``digest``, recursing through containers and dataclasses."""
    if value is None or isinstance(value, bool | int | float | str):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, pd.DataFrame | pd.Series):
        digest.update(f"frame:{frame_fingerprint(value)};".encode())
    elif isinstance(value, np.ndarray):
        if value.dtype == object:
            raise Unfingerprintable("object arrays have no stable byte representation")
        digest.update(f"array:{value.dtype}:{value.shape};".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, np.generic):
        digest.update(f"{value.dtype}:{value.item()!r};".encode())
    elif isinstance(value, datetime | date):
        digest.update(f"{type(value).__name__}:{value.isoformat()};".encode())
    elif isinstance(value, timedelta):
        digest.update(f"timedelta:{value.total_seconds()!r};".encode())
    elif isinstance(value, Path):
        digest.update(f"path:{value};".encode())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        digest.update(f"{type(value).__module__}.{type(value).__qualname__}(".encode())
        for f in dataclasses.fields(value):
            digest.update(f"{f.name}=".encode())
            _feed(digest, getattr(value, f.name))
        digest.update(b");")
    elif isinstance(value, Mapping):
        digest.update(b"{")
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
        digest.update(b"};")
    elif isinstance(value, list | tuple):
        digest.update(f"{type(value).__name__}[".encode())
        for item in value:
            _feed(digest, item)
        digest.update(b"];")
    else:
        raise Unfingerprintable(f"no content fingerprint for {type(value).__qualname__}")


#: The cached stages; each one's result holds every user's (pseudonymised) events or rows drawn from them.
CACHED_STAGES = ("ingest", "validate", "prepare")


def cache_key_prefix(stage: str) -> str:
    """The start of every cache key (and stored result file name) of ``stage``."""
    return f"recforge-{stage}-"


@dataclass(frozen=True)
class PurgedResults:
    """What :func:`purge_cached_results` did: the folder it looked in, files deleted, and what it could not reach."""

    folder: Path
    deleted: int
    unreachable: str | None = None


def purge_cached_results(stages: tuple[str, ...] = CACHED_STAGES) -> PurgedResults:
    """Delete recforge's cached results of ``stages`` from Prefect's local result storage on this machine.

    The next run computes them again. Results kept in a storage block (``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``)
    or under another Prefect home are out of reach: ``unreachable`` says so.
    """
    settings = get_current_settings().results
    folder = Path(settings.local_storage_path).expanduser()
    deleted = 0
    if folder.is_dir():
        for stage in stages:
            for path in folder.glob(f"{cache_key_prefix(stage)}*"):
                path.unlink(missing_ok=True)
                deleted += 1
    unreachable = None
    if settings.default_storage_block:
        unreachable = (
            f"results are stored in block {settings.default_storage_block!r}: delete its recforge-* entries there"
        )
    return PurgedResults(folder, deleted, unreachable)


@dataclass
class ContentHash(CachePolicy):
    """Cache key from the content of a task's inputs plus the code fingerprint (see the module docstring).

    ``stage`` keeps the keys of different tasks apart; ``special`` maps an input name to its own fingerprint
    function (e.g. the ingest ``source`` mapping, whose content lives in the files it names). ``bypass`` looks at
    the inputs and returns why this call must not use the cache (its result depends on more than the inputs), or
    None.
    """

    stage: str = ""
    special: dict[str, Callable[[Any], str]] = field(default_factory=dict)
    bypass: Callable[[dict[str, Any]], str | None] | None = None

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        parts = {"stage": self.stage, "code": code_fingerprint()}
        if self.bypass is not None and (why := self.bypass(inputs)) is not None:
            log.info("%s: not cached (%s)", self.stage, why)
            return None
        try:
            for name in sorted(inputs):
                hasher = self.special.get(name, fingerprint)
                parts[f"input:{name}"] = hasher(inputs[name])
        except (Unfingerprintable, OSError) as exc:
            log.info("%s: not cached (%s)", self.stage, exc)
            return None
        return cache_key_prefix(self.stage) + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cached(
    stage: str, bypass: Callable[[dict[str, Any]], str | None] | None = None, **special: Callable[[Any], str]
) -> dict[str, Any]:
    """``@task`` keyword arguments that cache ``stage`` by content and persist its result (see :class:`ContentHash`
    for ``bypass`` and ``special``).

    The result goes to Prefect's default result storage, a folder under the Prefect home
    (``PREFECT_RESULTS_LOCAL_STORAGE_PATH``), where later runs in any process on this machine find it.
    """
    return {"cache_policy": ContentHash(stage=stage, special=dict(special), bypass=bypass), "persist_result": True}
