"""Hand the prepared data to model tasks that run in other processes by reference, written once.

The thread runner shares the flow's memory, so its tasks get the :class:`~recforge.pipeline.PreparedData` object
itself. The process and Dask runners serialise every task's parameters once per submission and keep each copy
until the task has run: with the data as a parameter, twelve models meant 24 serialised copies of the data in
the flow process (the 9M-event set ran out of memory that way). For those runners the flow writes the data to
one file and gives each task a :class:`DataRef` (path, size, SHA-256); each worker process reads the file once,
checks its hash and keeps the data for its later tasks.

The file is a pickle, the same serialisation the runners would have applied to the data, read only after its
bytes match the SHA-256 that came through the task's parameters: a file changed on disk is refused, never
unpickled. For a Dask cluster spread over several machines, ``output_dir`` must be on a file system every
worker sees (the same holds for Prefect's result storage). When a flow run's model tasks are done, the flow has
its Dask workers drop the data (:func:`release`) and stops its process pool, so no worker holds it while the
flow publishes.
"""

from __future__ import annotations

import gc
import hashlib
import os
import pickle
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from recforge.malloc import trim_heap

T = TypeVar("T")


class HandoffError(RuntimeError):
    """The data file behind a :class:`DataRef` is missing or not the one the flow wrote."""


@dataclass(frozen=True)
class DataRef:
    """Where a flow left an object for its tasks, and the SHA-256 of the file's bytes."""

    path: str
    sha256: str
    nbytes: int


def write(obj: object, folder: Path) -> DataRef:
    """Write ``obj`` to a new private file in ``folder`` (created if missing); the caller removes it with
    :func:`remove` when its tasks are done."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="prepared-", suffix=".pickle", dir=folder)  # mode 0600
    digest = hashlib.sha256()
    nbytes = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            # Protocol 5 writes large numpy buffers without an extra in-memory copy of the whole pickle.
            pickler = pickle.Pickler(_HashingWriter(fh, digest), protocol=5)
            pickler.dump(obj)
            nbytes = fh.tell()
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return DataRef(path=str(Path(name).resolve()), sha256=digest.hexdigest(), nbytes=nbytes)


def remove(value: object) -> None:
    """Delete the file behind ``value`` when it is a :class:`DataRef` (nothing happens otherwise, or when the
    file is already gone), so callers need not know which runner got a reference."""
    if isinstance(value, DataRef):
        Path(value.path).unlink(missing_ok=True)


def read(ref: DataRef) -> object:
    """The object behind ``ref``, read once per process and kept for later tasks with the same reference."""
    with _lock:
        cached = _cache.get(ref.sha256)
        if cached is not None:
            return cached
        obj = _read_checked(ref)
        # One entry: a worker serves one flow run's data at a time; the previous run's data is released.
        _cache.clear()
        _cache[ref.sha256] = obj
        return obj


def release() -> int:
    """Drop the data this process read for a flow run's tasks and return the freed heap to the kernel; returns
    how many objects were dropped (0 or 1).

    The flow calls it on every Dask worker once its model tasks are done (``flows.runners.release_workers``): a
    worker otherwise keeps the run's data — gigabytes at millions of events — while the flow publishes, and a
    long-lived worker until the next run's first task.
    """
    with _lock:
        dropped = len(_cache)
        _cache.clear()
    gc.collect()
    trim_heap()
    return dropped


def resolve(value: T | DataRef) -> T:
    """``value`` itself, or the object behind it when it is a :class:`DataRef`."""
    if isinstance(value, DataRef):
        return read(value)  # type: ignore[return-value]
    return value


_lock = threading.Lock()
_cache: dict[str, object] = {}


def _read_checked(ref: DataRef) -> object:
    path = Path(ref.path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise HandoffError(
            f"the prepared data file {path} is not on this machine ({os.uname().nodename}): tasks on a Dask "
            "cluster of several machines need the run's output_dir (--output-dir) on a file system every worker "
            "mounts at the same path; or the flow that wrote it has already finished"
        ) from None
    found = hashlib.sha256(blob).hexdigest()
    if found != ref.sha256 or len(blob) != ref.nbytes:
        raise HandoffError(
            f"the prepared data file {path} changed after the flow wrote it (SHA-256 {found[:12]}…, "
            f"{len(blob):,} bytes; expected {ref.sha256[:12]}…, {ref.nbytes:,} bytes): it is not loaded. "
            "Rerun the flow; if it happens again, something else writes into the output folder"
        )
    return pickle.loads(blob)


class _HashingWriter:
    """A file wrapper that feeds every written chunk to a hash as well."""

    def __init__(self, fh: object, digest: hashlib._Hash) -> None:
        self._fh = fh
        self._digest = digest

    def write(self, chunk: bytes | memoryview) -> int:
        self._digest.update(chunk)
        return self._fh.write(chunk)  # type: ignore[attr-defined]
