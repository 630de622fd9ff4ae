"""Deep recommendation models in torch: NeuMF (order-free), Caser and GRU4Rec (sequence models).

All three share :mod:`recmodels.neural.training` (config fields, one training loop with early stopping on a
temporal validation slice, batched full-catalogue scoring, weights saved as numpy arrays) and
:mod:`recmodels.neural.sequences` (time-ordered per-user histories and padded batches).
"""

from recmodels.neural.caser import Caser, CaserConfig
from recmodels.neural.gru4rec import GRU4Rec, GRU4RecConfig
from recmodels.neural.neumf import NeuMF, NeuMFConfig
from recmodels.neural.sequences import SequenceData
from recmodels.neural.training import NeuralConfig, NeuralRecommender, TrainingLog

__all__ = [
    "Caser",
    "CaserConfig",
    "GRU4Rec",
    "GRU4RecConfig",
    "NeuMF",
    "NeuMFConfig",
    "NeuralConfig",
    "NeuralRecommender",
    "SequenceData",
    "TrainingLog",
]
