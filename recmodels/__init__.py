"""Recommendation algorithms: pure numpy/scipy/torch, no Prefect, no pandas in the model interface.

Models see integer user/item indices and sparse CSR matrices (:class:`recmodels.data.Interactions`); mapping
external ids to indices happens once at the edge (``recforge.ids``).
"""

from recmodels.base import Recommender, RunSettings
from recmodels.data import Interactions

__all__ = ["Interactions", "Recommender", "RunSettings"]
