"""glibc malloc settings for a training process: freed blocks up to 32 MiB are kept for reuse.

By default glibc adapts two thresholds as a process runs: blocks above the *mmap threshold* (128 KiB at first,
raised up to 32 MiB as large blocks are freed) are mapped from the kernel and unmapped when freed, and free
memory at the top of the heap is handed back as soon as it exceeds the *trim threshold* (twice the mmap
threshold). Training allocates and frees many temporaries of a few megabytes every step, several alive at
once: freeing them together leaves more than the trim threshold free, the heap is trimmed, and the next step
faults the same pages in again, zeroed by the kernel each time (a step of five 1 MiB arrays: 992 page faults per
step with the defaults, none with these settings; ``tests/test_malloc.py``).

:func:`tune_malloc` fixes the mmap threshold at glibc's maximum (32 MiB) and lets up to 256 MiB stay free in
the heap: blocks up to 32 MiB are reused instead of faulted in again, larger ones are still mapped and returned
at once, and a process keeps at most 256 MiB of freed memory for later. The measured effect on fits is in
``docs/operations.md`` ("Memory allocator").

A user's own ``MALLOC_*`` environment variables win: then nothing is changed. Elsewhere than glibc (musl,
macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: glibc's largest allowed mmap threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
#: Free memory at the top of the heap kept for reuse before glibc returns it to the kernel.
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024

_applied = False


def user_malloc_settings(environ: Mapping[str, str] | None = None) -> list[str]:
    """The glibc ``MALLOC_*_`` tuning variables set in ``environ`` (default: this process's environment)."""
    environ = os.environ if environ is None else environ
    return sorted(name for name in environ if name.startswith("MALLOC_") and name.endswith("_"))


def tune_malloc() -> bool:
    """Apply this module's settings to this process once; True if they are (or already were) in effect.

    Idempotent and cheap: called when the CLI starts and at the start of every model task, so that the worker
    processes of the process and Dask runners get it too.
    """
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None or user_malloc_settings():
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    _applied = applied and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return _applied


def trim_heap() -> bool:
    """Hand the free memory at the top of glibc's heaps back to the kernel (``malloc_trim(0)``); True if glibc did.

    For a process that has just dropped large objects and will stay alive (a worker after a flow run's model
    tasks): the trim threshold above otherwise keeps up to 256 MiB free per heap for reuse. No-op off glibc.
    """
    libc = _glibc()
    if libc is None:
        return False
    malloc_trim = libc.malloc_trim
    malloc_trim.argtypes = (ctypes.c_size_t,)
    malloc_trim.restype = ctypes.c_int
    return malloc_trim(0) == 1


def _glibc() -> ctypes.CDLL | None:
    """This process's glibc, or None elsewhere (musl's ``mallopt`` accepts calls and does nothing)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
    except (OSError, AttributeError):
        return None
    return libc
