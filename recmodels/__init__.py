"""Recommendation algorithms: pure numpy/scipy/torch, no Prefect, no pandas in the model interface.

Models see integer user/item indices and sparse CSR matrices (:class:`recmodels.data.Interactions`); mapping
external ids to indices happens once at the edge (``recforge.ids``).
"""

import os

# torch's OpenMP threads spin-wait between parallel regions by default; with threads from several tasks (the flow
# trains models concurrently) on few cores that spinning starves the others (BPR's test took 50 s instead of 7 s,
# docs/benchmarks/als_bpr.md). The policy is read once, when torch is first imported, so it is set here, before
# any model module imports torch. A value the user exported wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# torch's CPU allocator backs tensors of 2 MB and more with transparent huge pages when this is 1 (read once, at its
# first allocation). Without it every large product output is faulted in 4 KB at a time, zeroed by the kernel, on
# every block: user_knn's rating similarities at the 9M-event set (200,000 users, 102 MB per product, four per
# 64-row block) spent 4,121 s in the kernel against 5,715 s of user time, 1.8·10⁹ page faults; 20 such blocks took
# 14.8–15.6 s with 6.0M faults, 7.9–8.4 s with 0.16–0.18M with it (docs/benchmarks/knn.md). A value the user
# exported wins; the kernel's own setting (``/sys/kernel/mm/transparent_hugepage/enabled``) still decides.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from recmodels.base import Recommender, RunSettings
from recmodels.data import Interactions

__all__ = ["Interactions", "Recommender", "RunSettings"]
