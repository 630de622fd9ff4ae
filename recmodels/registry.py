"""The model registry: names used on the command line and in the flow, mapped to model classes."""

from __future__ import annotations

from recmodels.base import Recommender
from recmodels.baselines.ease import EASE
from recmodels.baselines.popularity import Popularity
from recmodels.knn.item import ItemKNN
from recmodels.knn.user import UserKNN
from recmodels.mf.als import ALS
from recmodels.mf.biased_mf import BiasedMF
from recmodels.mf.bpr import BPR
from recmodels.mf.nmf import NMF
from recmodels.mf.pure_svd import PureSVD
from recmodels.neural import Caser, GRU4Rec, NeuMF

_MODELS: dict[str, type[Recommender]] = {
    cls.name: cls
    for cls in (Popularity, ItemKNN, UserKNN, PureSVD, BiasedMF, NMF, EASE, ALS, BPR, NeuMF, Caser, GRU4Rec)
}

#: Models trained when the user does not choose: every registered model, so each family is measured side by side
#: every night (`--models` / `--families` narrow it).
DEFAULT_MODELS: tuple[str, ...] = tuple(_MODELS)


def model_names() -> list[str]:
    """Registered model names, in registration order."""
    return list(_MODELS)


def get_model_class(name: str) -> type[Recommender]:
    """The class registered under ``name``; a clear error lists the valid names otherwise."""
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from: {', '.join(_MODELS)}") from None


def families() -> dict[str, list[str]]:
    """Model names grouped by family."""
    out: dict[str, list[str]] = {}
    for name, cls in _MODELS.items():
        out.setdefault(cls.family, []).append(name)
    return out
