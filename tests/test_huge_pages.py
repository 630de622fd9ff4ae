"""recmodels asks torch's CPU allocator for transparent huge pages before torch's first allocation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# In a fresh interpreter that imports recmodels (and through it torch) first: the variable torch saw, and the page
# faults while five 64 MB float32 tensors are allocated and filled (4 KB pages: ≥ 5 · 16,384; 2 MB pages: a few
# hundred).
_PROBE = """
import os, resource
import recmodels.knn.similarity  # imports torch after recmodels/__init__ has set the variable
import torch
torch.zeros(1000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    t = torch.empty(16 * 1024 * 1024)
    t.fill_(1.0)
    del t
print(os.environ.get("THP_MEM_ALLOC_ENABLE"), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(env: dict[str, str]) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    value, faults = done.stdout.split()[-2:]
    return value, int(faults)


def test_torch_allocations_use_huge_pages_unless_the_user_says_otherwise() -> None:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    value, with_default = _probe(env)
    users_value, users_choice = _probe({**env, "THP_MEM_ALLOC_ENABLE": "0"})
    assert (value, users_value) == ("1", "0")  # set by recmodels; the user's own value wins
    # Only in the kernel's "madvise" mode does the variable decide ("always" gives every large mapping huge pages,
    # "never" none).
    if not sys.platform.startswith("linux") or not _THP.exists() or "[madvise]" not in _THP.read_text():
        pytest.skip("the kernel's transparent huge pages are not in madvise mode: the page faults cannot tell")
    assert users_choice >= 5 * 16_384 * 0.9, users_choice  # 4 KB pages
    assert with_default < users_choice / 10, (with_default, users_choice)
