"""Content-based scoring over item attributes (``content``), so that items nobody has touched yet can be ranked.

Each item is a sparse feature vector: one-hot categorical values, multi-hot flags (genres), one-hot quantile
buckets of numeric columns, and title tokens. Every feature is weighted by TF-IDF over the catalogue (a genre
shared by half the catalogue says less than a rare one; a token repeated in a title counts ``1 + log tf``), each
kind of feature is scaled by its config weight, and rows are L2-normalised. A user's profile is the normalised
sum of the vectors of the items in their history; an item's score is the cosine between profile and item.
Attributes of all items, new ones included, are known when the model is fitted: only interactions are withheld.

:func:`blend_scores` is the hybrid: a collaborative model's scores and the content scores, each min-max
normalised per user, mixed as ``alpha · collaborative + (1 − alpha) · content``. A new item (no training events)
has no collaborative score (what a model says about an item it never saw is noise), so it is assumed to sit at a
quantile of the user's collaborative scores, ``new_item_quantile``: the knob that trades accuracy on known items
for exposure of new ones (docs/benchmarks/coldstart.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from recmodels.base import ModelConfig, Recommender, RunSettings, csr_from_state, csr_state
from recmodels.data import Interactions

#: Feature kinds, in the order of :class:`ItemFeatures`' ``kinds`` codes.
KINDS: tuple[str, ...] = ("categorical", "multi_hot", "numeric", "text")
_TOKEN = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased runs of letters and digits: ``"Schindler's List"`` → ``["schindler", "s", "list"]``."""
    return _TOKEN.findall(text.lower())


def tfidf(counts: sp.csr_matrix, sublinear: bool = True) -> sp.csr_matrix:
    """TF-IDF of an items × terms count matrix, rows L2-normalised (float64 CSR).

    tf = ``1 + log(count)`` (``sublinear``) or the raw count; idf = ``log((1 + n) / (1 + df)) + 1`` with ``n``
    rows and ``df`` rows containing the term (the smoothed idf: a term in every row keeps weight 1, not 0).
    """
    counts = sp.csr_matrix(counts, dtype=np.float64)
    counts.eliminate_zeros()
    n_rows = counts.shape[0]
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    idf = np.log((1.0 + n_rows) / (1.0 + df)) + 1.0
    weights = counts.copy()
    if sublinear:
        weights.data = 1.0 + np.log(weights.data)
    weights.data *= idf[weights.indices]
    return _normalise_rows(weights)


def _normalise_rows(matrix: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ matrix)


@dataclass(frozen=True, eq=False)
class ItemFeatures:
    """Raw item features aligned to item indices: counts (items × features CSR), each feature's kind and name."""

    matrix: sp.csr_matrix
    kinds: np.ndarray  # int8 index into KINDS per feature column
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not (self.matrix.shape[1] == len(self.kinds) == len(self.names)):
            raise ValueError("ItemFeatures: matrix columns, kinds and names differ in number")


def encode_item_features(
    frame: Any,
    ids: Sequence[object],
    id_column: str = "item_id",
    kinds: Mapping[str, str] | None = None,
    separator: str = "|",
    n_buckets: int = 5,
) -> ItemFeatures:
    """Features of the items ``ids`` (in that order) from the pandas ``frame`` of item attributes.

    kinds: column → ``"categorical"`` | ``"multi_hot"`` (``separator``-joined labels, or a boolean / 0-1 flag
        column) | ``"numeric"`` (quantile buckets, one-hot) | ``"text"`` (tokens, counted); columns left out are
        guessed: booleans and 0/1 columns are flags, other numbers numeric, text containing ``separator`` multi-hot,
        text averaging two or more tokens with mostly distinct values text, the rest categorical.
    Items missing from ``frame`` get an empty row (they can only be scored 0).
    """
    import pandas as pd  # only at this edge: models see the sparse matrix

    table = frame.drop_duplicates(id_column).set_index(id_column)
    rows = table.reindex(pd.Index(ids))
    chosen = {c: (kinds or {}).get(c) or _guess_kind(table[c], separator) for c in table.columns}
    blocks, kind_codes, names = [], [], []
    for column, kind in chosen.items():
        if kind not in KINDS:
            raise ValueError(f"column {column!r}: kind must be one of {KINDS}, got {kind!r}")
        values = rows[column]
        if kind == "numeric":
            bools = pd.api.types.is_bool_dtype(table[column]) or set(table[column].dropna().unique()) <= {0, 1}
            numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
            if bools:  # a flag column: one feature, on where the value is 1
                labels = [["1"] if v == 1 else [] for v in numbers]
            else:
                known = table[column].to_numpy(dtype=np.float64, na_value=np.nan)
                quantiles = np.linspace(0, 1, n_buckets + 1)[1:-1]
                edges = np.unique(np.nanquantile(known, quantiles)) if np.isfinite(known).any() else np.empty(0)
                labels = [[] if np.isnan(v) else [f"b{np.searchsorted(edges, v, side='right')}"] for v in numbers]
        elif kind == "text":
            labels = [[] if pd.isna(v) else tokenize(str(v)) for v in values]
        elif kind == "multi_hot":
            labels = [[] if pd.isna(v) else [p for p in str(v).split(separator) if p] for v in values]
        else:
            labels = [[] if pd.isna(v) else [str(v)] for v in values]
        vocabulary = sorted({label for row in labels for label in row})
        lookup = {label: i for i, label in enumerate(vocabulary)}
        row_idx = np.repeat(np.arange(len(labels)), [len(r) for r in labels])
        col_idx = np.array([lookup[label] for r in labels for label in r], dtype=np.int64)
        block = sp.csr_matrix((np.ones(len(col_idx)), (row_idx, col_idx)), shape=(len(labels), len(vocabulary)))
        block.sum_duplicates()  # repeated title tokens add up to term counts
        blocks.append(block)
        kind_codes += [KINDS.index(kind)] * len(vocabulary)
        names += [f"{column}={label}" for label in vocabulary]
    matrix = sp.hstack(blocks, format="csr") if blocks else sp.csr_matrix((len(ids), 0))
    return ItemFeatures(sp.csr_matrix(matrix), np.array(kind_codes, dtype=np.int8), tuple(names))


def _guess_kind(values: Any, separator: str) -> str:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "numeric"
    text = values.dropna().astype(str)
    if len(text) and text.str.contains(separator, regex=False).any():
        return "multi_hot"
    tokens = text.map(lambda v: len(tokenize(v)))
    if len(text) and tokens.mean() >= 2 and text.nunique() > 0.5 * len(text):
        return "text"
    return "categorical"


@dataclass(frozen=True)
class ContentConfig(ModelConfig):
    """Hyperparameters of :class:`ContentScorer`: the weight of each kind of feature in the item vector.

    categorical_weight, multi_hot_weight, numeric_weight, text_weight: each kind's block of TF-IDF weights is
        L2-normalised per item, then multiplied by the square root of its weight, so that a weight is the share
        the kind has in the cosine between two items that match fully on every kind.
    sublinear_tf: count a feature repeated ``c`` times (title tokens) as ``1 + log c`` rather than ``c``.
    """

    categorical_weight: float = 1.0
    multi_hot_weight: float = 1.0
    numeric_weight: float = 0.5
    text_weight: float = 0.5
    sublinear_tf: bool = True

    def weight(self, kind: str) -> float:
        return float(getattr(self, f"{kind}_weight"))


class ContentScorer(Recommender):
    """Cosine between a user's profile (sum of their items' feature vectors) and each item's feature vector."""

    name = "content"
    family = "content"
    config_class = ContentConfig
    config: ContentConfig

    def fit(
        self, data: Interactions, settings: RunSettings | None = None, *, features: ItemFeatures | None = None
    ) -> Self:
        """Learn item vectors from ``features`` (rows aligned with ``data``'s items) and profiles from ``data``."""
        if features is None or features.matrix.shape[0] != data.n_items:
            rows = None if features is None else features.matrix.shape[0]
            raise ValueError(f"content needs item features with one row per item ({data.n_items}); got {rows}")
        return self._fit_with(data, settings, features=features)

    def _fit(self, data: Interactions, settings: RunSettings) -> None:
        """Item vectors from :meth:`fit`'s features; the profiles come from the base class's seen items."""
        features = self._features
        blocks = []
        for code, kind in enumerate(KINDS):
            columns = np.flatnonzero(features.kinds == code)
            if len(columns) and self.config.weight(kind) > 0:
                block = tfidf(features.matrix[:, columns], self.config.sublinear_tf)
                blocks.append(block * np.sqrt(self.config.weight(kind)))
        matrix = sp.hstack(blocks, format="csr") if blocks else sp.csr_matrix((data.n_items, 0))
        self.item_vectors_ = _normalise_rows(sp.csr_matrix(matrix)).astype(np.float32)

    def profiles(self, history: sp.csr_matrix) -> sp.csr_matrix:
        """L2-normalised profiles of users with the given users × items history (rows of zeros stay zero)."""
        return _normalise_rows(sp.csr_matrix(history, dtype=np.float32) @ self.item_vectors_)

    def score_history(self, history: sp.csr_matrix) -> np.ndarray:
        """Dense cosine scores ``(rows, n_items)`` for arbitrary histories (e.g. users unknown to the model)."""
        return np.asarray((self.profiles(history) @ self.item_vectors_.T).toarray(), dtype=np.float32)

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return self.score_history(self.seen_[users])

    def _state(self) -> dict[str, np.ndarray]:
        return csr_state("item_vectors", self.item_vectors_)

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        width = int(state["item_vectors/indices"].max()) + 1 if len(state["item_vectors/indices"]) else 0
        self.item_vectors_ = csr_from_state(state, "item_vectors", (self.n_items_, width))


def blend_scores(
    collaborative: np.ndarray, content: np.ndarray, new_items: np.ndarray, alpha: float, new_item_quantile: float = 0.9
) -> np.ndarray:
    """The hybrid score ``alpha · collaborative + (1 − alpha) · content``, both min-max normalised per row.

    A new item has no collaborative score; it is given the row's ``new_item_quantile`` quantile of the normalised
    collaborative scores of the other items (0: as if the collaborative side ranked it last, so only content far
    better than any warm item's lifts it; 0.9: as if it were a top-10% item, so new items with matching content
    appear). Entries at ``-inf`` (seen items) stay ``-inf``; a row whose finite values are all equal normalises to 0.
    """
    if not 0.0 <= alpha <= 1.0 or not 0.0 <= new_item_quantile <= 1.0:
        raise ValueError(f"alpha and new_item_quantile must lie in [0, 1], got {alpha}, {new_item_quantile}")
    new_items = np.asarray(new_items, dtype=bool)[None, :]
    warm = np.where(new_items, np.nan, collaborative)
    warm_norm = min_max_rows(warm)
    finite = np.isfinite(warm)
    prior = np.zeros((len(warm), 1))
    has_warm = finite.any(axis=1)
    if has_warm.any() and new_item_quantile > 0:
        # Quantile over each row's finite warm scores: sort with the others pushed to the end, index by count.
        ordered = np.sort(np.where(finite, warm_norm, np.inf), axis=1)
        at = np.floor(new_item_quantile * (finite.sum(axis=1) - 1)).astype(np.int64)
        prior[has_warm, 0] = ordered[has_warm, at[has_warm]]
    blended = alpha * np.where(new_items, prior, warm_norm) + (1.0 - alpha) * min_max_rows(content)
    blocked = (np.isneginf(collaborative) & ~new_items) | np.isneginf(content)
    return np.where(blocked, -np.inf, blended).astype(np.float32)


def min_max_rows(scores: np.ndarray) -> np.ndarray:
    """Each row mapped to [0, 1] over its finite values; non-finite entries (and NaN) become 0."""
    finite = np.isfinite(scores)
    low = np.min(np.where(finite, scores, np.inf), axis=1, keepdims=True)
    high = np.max(np.where(finite, scores, -np.inf), axis=1, keepdims=True)
    span = np.where(high > low, high - low, 1.0)
    return np.where(finite, (scores - np.where(np.isfinite(low), low, 0.0)) / span, 0.0)
