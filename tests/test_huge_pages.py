"""recmodels asks torch's CPU allocator for transparent huge pages before torch's first allocation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# Faults while five 64 MB float32 tensors are allocated and filled, in a fresh interpreter that imports recmodels
# (and through it torch) first: with 4 KB pages that is ≥ 5 · 16,384 faults, with 2 MB pages a few hundred.
_PROBE = """
import resource, sys
import recmodels.knn.similarity  # imports torch after recmodels/__init__ has set the variable
import torch
torch.zeros(1000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    t = torch.empty(16 * 1024 * 1024)
    t.fill_(1.0)
    del t
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env: dict[str, str]) -> int:
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def test_torch_allocations_use_huge_pages_unless_the_user_says_otherwise() -> None:
    if not sys.platform.startswith("linux") or not _THP.exists() or "[never]" in _THP.read_text():
        pytest.skip("transparent huge pages are not available on this kernel")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    with_default = _faults(env)
    users_choice = _faults({**env, "THP_MEM_ALLOC_ENABLE": "0"})
    assert users_choice >= 5 * 16_384 * 0.9, users_choice  # the user's 0 wins: 4 KB pages
    assert with_default < users_choice / 10, (with_default, users_choice)
