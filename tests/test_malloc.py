"""glibc malloc tuning for training processes (recforge.malloc), checked by counting page faults."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import recforge.malloc as malloc
from recforge.malloc import tune_malloc, user_malloc_settings

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
    reason="the tuning applies to glibc only",
)

# A training step in miniature: five 1 MiB arrays alive at once, then freed together, twelve times; prints the
# minor page faults of each step after the first two (which grow the heap).
_STEPS = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    if sys.argv[1] == "tuned":
        from recforge.malloc import tune_malloc
        assert tune_malloc()
    faults = []
    for _ in range(12):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        arrays = [np.ones(1 << 17) for _ in range(5)]
        del arrays
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(*faults[2:])
    """
)


def _faults_per_step(mode: str) -> list[int]:
    env = {k: v for k, v in os.environ.items() if k not in user_malloc_settings()}
    done = subprocess.run(
        [sys.executable, "-c", _STEPS, mode], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    return [int(n) for n in done.stdout.split()]


@glibc_only
def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    # glibc's defaults trim the ~4 MiB freed at the top of the heap every step, and the next step faults the same
    # pages in again (992 per step on the machine this was written on); tuned, the blocks are simply reused.
    assert min(_faults_per_step("default")) > 500
    assert max(_faults_per_step("tuned")) < 50


def test_the_users_own_malloc_variables_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(malloc, "_applied", False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    assert user_malloc_settings() == ["MALLOC_TRIM_THRESHOLD_"]
    assert tune_malloc() is False
    assert user_malloc_settings({"PATH": "/bin", "MALLOC_ARENA_MAX_": "2"}) == ["MALLOC_ARENA_MAX_"]
