"""Which process owns a ``runs`` row, and whether that process still exists.

A run killed with SIGKILL (or by the kernel's out-of-memory killer) cannot close its own ``runs`` row, which
would then say ``running`` for ever. Each row therefore records its host and a *process token*; the next run
started on the same host closes the rows whose process is gone (``Store.close_abandoned_runs``).

On Linux the token is ``pid:boot_id:start_ticks`` (the process's start time in clock ticks since boot, from
``/proc/<pid>/stat``), so a recycled pid or a reboot is not mistaken for the original process. Elsewhere it
is the pid alone, checked with ``kill(pid, 0)``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

_PROC = Path("/proc")


def host_name() -> str:
    """This machine's host name (what the ``runs.host`` column records)."""
    return socket.gethostname()[:255]


def _boot_id() -> str | None:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> str | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name in field 2 may hold spaces and parentheses, so count after its ')'.
    return stat[stat.rindex(")") + 2 :].split()[19]


def process_token(pid: int | None = None) -> str:
    """The token of process ``pid`` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    boot, ticks = _boot_id(), _start_ticks(pid)
    return f"{pid}:{boot}:{ticks}" if boot and ticks else str(pid)


def process_alive(token: str) -> bool | None:
    """Whether the process of ``token`` still runs on this host; ``None`` when that cannot be told."""
    pid_text, _, rest = token.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return None
    if rest:
        boot, _, ticks = rest.partition(":")
        current_boot = _boot_id()
        if current_boot is None:
            return None
        if boot != current_boot:
            return False  # the machine rebooted since
        current_ticks = _start_ticks(pid)
        if current_ticks is not None:
            return current_ticks == ticks  # False: the pid now belongs to another process
        # No readable /proc/<pid>: gone, unless /proc hides other users' processes (mount option hidepid), in
        # which case the process may exist but cannot be identified: then leave its run alone.
        return None if _signal_alive(pid) is not False else False
    return _signal_alive(pid)


def _signal_alive(pid: int) -> bool | None:
    """``kill(pid, 0)``: does a process with this pid exist (whoever it is)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return None
    return True
