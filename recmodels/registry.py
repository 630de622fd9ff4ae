"""The model registry: names used on the command line and in the flow, mapped to model classes."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Hyperparameter:
    """One field of a model's config: what ``recforge models --params`` shows and ``model_params`` may set."""

    name: str
    type: str
    default: Any
    doc: str


def hyperparameters(name: str) -> list[Hyperparameter]:
    """The hyperparameters of model ``name``, in field order, with the text its config's docstring gives each."""
    config_class = get_model_class(name).config_class
    docs: dict[str, str] = {}
    for cls in config_class.__mro__:  # a subclass's text first; shared fields are documented on the base
        for field, text in _field_docs(cls.__doc__ or "").items():
            docs.setdefault(field, text)
    hints = typing.get_type_hints(config_class)
    return [
        Hyperparameter(f.name, _type_name(hints[f.name]), _default(f), docs.get(f.name, ""))
        for f in dataclasses.fields(config_class)
    ]


# "    name: text" or "    name_a, name_b: text" at the docstring's field indent; deeper lines continue the text.
_FIELD_LINE = re.compile(r"^ {4}([a-z_][a-z0-9_]*(?:, [a-z_][a-z0-9_]*)*): (.+)$")


def _field_docs(docstring: str) -> dict[str, str]:
    docs: dict[str, str] = {}
    names: list[str] = []
    for line in docstring.splitlines():
        match = _FIELD_LINE.match(line)
        if match:
            names = match.group(1).split(", ")
            for field in names:
                docs[field] = match.group(2).strip()
        elif names and line.startswith(" " * 8) and line.strip():
            for field in names:
                docs[field] += " " + line.strip()
        else:
            names = []
    return docs


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None
