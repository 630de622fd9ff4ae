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

from recmodels.base import Recommender, RunSettings
from recmodels.data import Interactions

__all__ = ["Interactions", "Recommender", "RunSettings"]
