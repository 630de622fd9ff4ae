"""The declared cold-start fallback chain, which records for every recommended item the strategy that chose it.

Per user, by the number ``n`` of distinct items in their training history (repeats of an item count once, as
the models see them; users outside the index count as ``n = 0``):

1. ``n > few_interactions`` and a collaborative model was given: ``"model"`` (its ranking);
2. ``1 ≤ n ≤ few_interactions`` (or any ``n ≥ 1`` without a model): ``"item_neighbours"``, the item–item kNN
   scores of what the user touched, blended with the user's segment popularity (``neighbour_popularity_weight``);
   a cell is labelled ``item_neighbours`` when the neighbours scored its item above 0, else by the segment;
3. ``n = 0``: ``"segment_popularity:<col>=<value>…"`` for the most specific supported segment of the user's
   attributes (:mod:`recmodels.coldstart.attribute_popularity`), else ``"popularity"``.

A list that the first strategy cannot fill (neighbour scores of 0, exhausted rankings) is completed from step 3,
cell by cell, so labels are per cell. With ``hybrid_alpha`` set and item features given, steps 1–2 rank by the
blend of their scores with the content scores (:func:`~recmodels.coldstart.content.blend_scores`), and cells
holding an item without training events are labelled ``"content"``. Without content, such items are never
recommended by steps 1–2: a collaborative model's score for an item it never saw is noise.

Scores from different strategies are not comparable; only the order within a row is meaningful.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from recmodels.base import (
    SCORE_BATCH_VALUES,
    Recommender,
    RunSettings,
    broken_file_errors,
    map_batches,
    top_k,
    user_indices,
)
from recmodels.coldstart.attribute_popularity import SegmentPopularity, SegmentPopularityConfig, UserAttributes
from recmodels.coldstart.content import ContentConfig, ContentScorer, ItemFeatures, blend_scores, min_max_rows
from recmodels.data import Interactions
from recmodels.knn.item import ItemKNN, ItemKNNConfig

MODEL_LABEL = "model"
NEIGHBOURS_LABEL = "item_neighbours"
CONTENT_LABEL = "content"


@dataclass(frozen=True)
class ColdStartConfig:
    """The chain's declared policy and its components' hyperparameters.

    few_interactions: users with 1..this many distinct training items get item neighbours instead of the model.
    neighbour_popularity_weight: item neighbours rank by ``(1 − w) · neighbours + w · segment popularity`` (each
        min-max normalised per user), with ``w`` this weight. With one to four events to go on, neighbours alone
        rank far below popularity on ML-100K (NDCG@10 0.36 against 0.52 with one event); the blend keeps what the
        neighbours know and lets the segment's taste settle the rest (docs/benchmarks/coldstart.md).
    hybrid_alpha: weight of the collaborative side in the content blend; ``None`` turns the blend off (and with it
        every way for a new item to be recommended to a user with history).
    new_item_quantile: in the blend, the quantile of a user's collaborative scores that a new item is assumed to
        have (see :func:`~recmodels.coldstart.content.blend_scores`).
    segments, neighbours, content: configs of the segment popularity, item–item kNN and content components.
    """

    few_interactions: int = 4
    neighbour_popularity_weight: float = 0.7
    hybrid_alpha: float | None = None
    new_item_quantile: float = 0.9
    segments: SegmentPopularityConfig = field(default_factory=SegmentPopularityConfig)
    neighbours: ItemKNNConfig = field(default_factory=ItemKNNConfig)
    content: ContentConfig = field(default_factory=ContentConfig)

    def __post_init__(self) -> None:
        if self.few_interactions < 0:
            raise ValueError(f"few_interactions must be ≥ 0, got {self.few_interactions}")
        if not 0.0 <= self.neighbour_popularity_weight <= 1.0:
            raise ValueError(f"neighbour_popularity_weight must lie in [0, 1], got {self.neighbour_popularity_weight}")
        if self.hybrid_alpha is not None and not 0.0 <= self.hybrid_alpha <= 1.0:
            raise ValueError(f"hybrid_alpha must lie in [0, 1] or be None, got {self.hybrid_alpha}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ColdStartConfig:
        nested = {"segments": SegmentPopularityConfig, "neighbours": ItemKNNConfig, "content": ContentConfig}
        return cls(**{k: nested[k](**v) if k in nested else v for k, v in values.items()})


class ColdStartChain:
    """Model → item neighbours → segment popularity → popularity, with an optional content hybrid for new items."""

    def __init__(self, config: ColdStartConfig | None = None) -> None:
        self.config = config if config is not None else ColdStartConfig()

    def fit(
        self,
        data: Interactions,
        settings: RunSettings | None = None,
        *,
        model: Recommender | None = None,
        user_attributes: UserAttributes | None = None,
        item_features: ItemFeatures | None = None,
        neighbours: ItemKNN | Callable[[], ItemKNN] | None = None,
    ) -> Self:
        """Fit the components on ``data``; ``model`` is an already fitted collaborative model on the same indices.

        user_attributes: rows aligned with ``data``'s users (None: the segment step is global popularity).
        item_features: rows aligned with ``data``'s items; needed for ``hybrid_alpha``.
        neighbours: an item–item kNN already fitted on ``data`` to use for the few-events step (so several chains
            over the same data share one fit), or a function that returns one; by default one is fitted here, or
            the model is reused if it is one. Neither the function nor a fit runs when no user of ``data`` would
            reach the step (every user has more than ``few_interactions`` items and there is a model: MovieLens,
            the synthetic set); ``neighbours_`` is then None. Users outside ``data`` start at the segment step.
        """
        settings = settings or RunSettings()
        if model is not None and (model.n_users_, model.n_items_) != (data.n_users, data.n_items):
            raise ValueError("the collaborative model was fitted on a different index space than the chain's data")
        if self.config.hybrid_alpha is not None and item_features is None:
            raise ValueError("hybrid_alpha needs item_features")
        self.model_ = model
        self.segments_ = SegmentPopularity(self.config.segments).fit(data, settings, attributes=user_attributes)
        self.neighbours_: ItemKNN | None = None
        reached = bool((self.strategy(np.arange(self.n_users_)) == NEIGHBOURS_LABEL).any())
        if not isinstance(neighbours, ItemKNN) and not reached:
            pass  # at scale an item–item kNN fit costs as much as a model: none for a step no one reaches
        elif neighbours is not None:
            if not isinstance(neighbours, ItemKNN):
                neighbours = neighbours()
            if (neighbours.n_users_, neighbours.n_items_) != (data.n_users, data.n_items):
                raise ValueError("the neighbours model was fitted on a different index space than the chain's data")
            self.neighbours_ = neighbours
        # Reuse the collaborative model when it already is an item–item kNN: same similarities, no second fit.
        elif isinstance(model, ItemKNN) and model.config == self.config.neighbours:
            self.neighbours_ = model
        else:
            self.neighbours_ = ItemKNN(self.config.neighbours).fit(data, settings)
        self.content_: ContentScorer | None = None
        if item_features is not None:
            self.content_ = ContentScorer(self.config.content).fit(data, settings, features=item_features)
        return self

    @property
    def n_users_(self) -> int:
        return self.segments_.n_users_

    @property
    def n_items_(self) -> int:
        return self.segments_.n_items_

    def strategy(self, users: np.ndarray) -> np.ndarray:
        """The first strategy each user's row uses: ``model``, ``item_neighbours``, or ``cold`` (no history)."""
        users = user_indices(users)
        known = (users >= 0) & (users < self.n_users_)
        events = np.zeros(len(users), dtype=np.int64)
        events[known] = np.diff(self.segments_.seen_.indptr)[users[known]]
        warm = (events > self.config.few_interactions) & (self.model_ is not None)
        return np.where(warm, MODEL_LABEL, np.where(events > 0, NEIGHBOURS_LABEL, "cold"))

    def recommend_with_strategy(
        self,
        users: np.ndarray,
        k: int,
        attributes: UserAttributes | None = None,
        exclude_seen: bool = True,
        batch_size: int = 1024,
        threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``k`` items, scores and the strategy label of each cell, three ``(len(users), k)`` arrays.

        attributes: rows aligned with ``users``, for users outside the index (new users); None uses the attributes
            given at fit for indexed users and treats the others as having none. Padding cells (item ``-1``, when
            the catalogue runs out) are labelled ``""``.
        threads: batches ranked at once, as in :meth:`Recommender.recommend` (``None``: torch's thread count of the
            calling thread); the lists and labels do not depend on it.
        """
        if k < 0:
            raise ValueError(f"k must be ≥ 0, got {k}")
        users = user_indices(users)
        k = int(min(k, self.n_items_))
        if attributes is not None and len(attributes) != len(users):
            raise ValueError(f"attributes have {len(attributes)} rows for {len(users)} users")
        # As in Recommender.recommend: a batch's dense (users × items) arrays stay under SCORE_BATCH_VALUES, so
        # that large catalogues do not map and fault in hundreds of MB per batch.
        batch_size = max(1, min(batch_size, SCORE_BATCH_VALUES // max(self.n_items_, 1)))
        # Rows are ranked in batches of one strategy where possible: each scorer then runs on whole batches (a few
        # item-neighbour rows in every batch made the neighbours model read all its dense hub rows per batch).
        order = np.argsort(self.strategy(users), kind="stable")

        def rank(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            rows = order[start : start + batch_size]
            batch_attributes = None if attributes is None else attributes.take(rows)
            return self._recommend_batch(users[rows], k, batch_attributes, exclude_seen)

        parts = map_batches(rank, range(0, max(len(users), 1), batch_size), threads)
        results = []
        for arrays in zip(*parts, strict=True):
            grouped = np.concatenate(arrays)
            result = np.empty_like(grouped)
            result[order] = grouped  # back to the callers' row order
            results.append(result)
        items, scores, labels = results
        return items, scores, labels

    def _recommend_batch(
        self, users: np.ndarray, k: int, attributes: UserAttributes | None, exclude_seen: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        known = (users >= 0) & (users < self.n_users_)
        segments = np.full(len(users), -1, dtype=np.int64)
        segments[known] = self.segments_.user_segment_[users[known]]
        if attributes is not None:
            from_attributes = self.segments_.segments(attributes)
            segments = np.where(known & (segments >= 0), segments, from_attributes)
        fallback_labels = self.segments_.labels(segments)
        seen = sp.csr_matrix((len(users), self.n_items_), dtype=np.float32)
        if known.any() and exclude_seen:
            # The known users' rows, unknown users' rows left empty. Row indexing reads only those rows; a
            # (batch × users) selection product also converted the whole seen matrix's indices on every batch.
            picked = self.segments_.seen_[users[known]]
            lengths = np.zeros(len(users), dtype=np.int64)
            lengths[known] = np.diff(picked.indptr)
            indptr = np.concatenate([[0], np.cumsum(lengths)])
            seen = sp.csr_matrix((picked.data, picked.indices, indptr), shape=(len(users), self.n_items_))
        strategy = self.strategy(users)
        shape = (len(users), self.n_items_)
        # The batch's scores and where the row's strategy itself had a say; the arrays of the first scorer when it
        # ranks the whole batch (recommend_with_strategy groups rows by strategy), saving two full copies.
        primary: np.ndarray | None = None
        evidence: np.ndarray | None = None
        new_items = self.segments_.popularity_ == 0
        any_new = bool(new_items.any())
        for label, scorer in ((MODEL_LABEL, self.model_), (NEIGHBOURS_LABEL, self.neighbours_)):
            rows = np.flatnonzero(strategy == label)
            if len(rows) == 0 or scorer is None:
                continue
            scores = scorer.score(users[rows])
            usable = np.isfinite(scores)
            if label == NEIGHBOURS_LABEL:
                usable &= scores > 0  # neighbour scores of 0 mean "no evidence": left to the fallback
            if any_new:
                usable &= ~new_items
            scores = np.where(usable, scores, -np.inf)
            whole_batch = primary is None and len(rows) == len(users)
            if whole_batch:
                evidence = usable
            else:
                if primary is None or evidence is None:
                    primary = np.full(shape, -np.inf, dtype=np.float32)
                    evidence = np.zeros(shape, dtype=bool)
                evidence[rows] = usable
            weight = self.config.neighbour_popularity_weight
            if label == NEIGHBOURS_LABEL and weight > 0:
                prior = min_max_rows(self.segments_.segment_scores(segments[rows]))  # seen items included
                scores = np.where(new_items, -np.inf, (1 - weight) * min_max_rows(scores) + weight * prior)
                usable = ~new_items[None, :] & np.ones_like(usable)
            if self.config.hybrid_alpha is not None and self.content_ is not None:
                content = self.content_.score(users[rows])
                scores = blend_scores(
                    scores, content, new_items, self.config.hybrid_alpha, self.config.new_item_quantile
                )
                scores[~(usable | (new_items & (content > 0)))] = -np.inf
            if whole_batch:
                primary = scores.astype(np.float32, copy=False)  # as the assignment below would store them
            else:
                assert primary is not None
                primary[rows] = scores
        if primary is None or evidence is None:  # no strategy scored: every row goes to the fallback
            primary = np.full(shape, -np.inf, dtype=np.float32)
            evidence = np.zeros(shape, dtype=bool)
        if exclude_seen:
            coo = seen.tocoo()
            primary[coo.row, coo.col] = -np.inf
        items, scores = top_k(primary, k)
        # Rows the first strategy filled keep its k picks. The others (the cold ones, exhausted rankings) keep
        # their n_r picks, then the first k − n_r picks of the segment popularity among the items left: only
        # those rows are scored by it (a model's ranking fills every row it scores on a catalogue of thousands).
        n_first = (items >= 0).sum(axis=1)
        short = np.flatnonzero(n_first < k)
        from_first = np.ones(items.shape, dtype=bool)
        if len(short):
            fallback = self.segments_.segment_scores(segments[short])
            if exclude_seen:
                short_seen = seen[short].tocoo()
                fallback[short_seen.row, short_seen.col] = -np.inf
            first_items = items[short]
            taken = first_items >= 0
            fallback[np.nonzero(taken)[0], first_items[taken]] = -np.inf
            second_items, second_scores = top_k(fallback, k)
            cols = np.arange(k)[None, :]
            from_first[short] = cols < n_first[short, None]
            second_col = np.clip(cols - n_first[short, None], 0, k - 1)
            items[short] = np.where(from_first[short], first_items, np.take_along_axis(second_items, second_col, 1))
            scores[short] = np.where(
                from_first[short], scores[short], np.take_along_axis(second_scores, second_col, axis=1)
            )
        had_say = np.take_along_axis(evidence, np.maximum(items, 0), axis=1)
        labels = np.where(from_first & had_say, strategy[:, None], fallback_labels[:, None]).astype(object)
        if self.config.hybrid_alpha is not None:
            labels[from_first & new_items[np.maximum(items, 0)]] = CONTENT_LABEL
        labels[items < 0] = ""
        return items, scores.astype(np.float32), labels.astype(str)

    def recommend(
        self, users: np.ndarray, k: int, attributes: UserAttributes | None = None, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`recommend_with_strategy` without the labels (the shape every model's ``recommend`` has)."""
        items, scores, _ = self.recommend_with_strategy(users, k, attributes, exclude_seen)
        return items, scores

    # ---- persistence ------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """One ``.npz`` (no pickle): the config plus each component's own ``.npz`` bytes."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {"__chain__": np.array(json.dumps(self.config.to_dict()))}
        components = {
            "segments": self.segments_,
            "neighbours": self.neighbours_,
            "model": self.model_,
            "content": self.content_,
        }
        with tempfile.TemporaryDirectory() as tmp:
            for key, component in components.items():
                if component is None or (key == "neighbours" and component is self.model_):
                    continue  # a missing neighbours component is the model's, unless __no_neighbours__ says none
                arrays[f"component/{key}"] = np.frombuffer(
                    component.save(Path(tmp) / f"{key}.npz").read_bytes(), dtype=np.uint8
                )
        if self.neighbours_ is None:
            arrays["__no_neighbours__"] = np.array(True)
        with path.open("wb") as fh:
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ColdStartChain:
        """Read a chain written by :meth:`save`; the collaborative model's class is found in the registry."""
        from recmodels.registry import get_model_class  # lazily: the registry imports every model family

        with broken_file_errors(path, "cold-start chain"):
            with np.load(Path(path), allow_pickle=False) as npz, tempfile.TemporaryDirectory() as tmp:
                if not isinstance(npz, np.lib.npyio.NpzFile) or "__chain__" not in npz.files:
                    raise ValueError("no __chain__ entry: not a file written by ColdStartChain.save")
                chain = cls(ColdStartConfig.from_dict(json.loads(str(npz["__chain__"]))))
                loaded: dict[str, Any] = {}
                for key in ("segments", "neighbours", "model", "content"):
                    if f"component/{key}" not in npz.files:
                        continue
                    file = Path(tmp) / f"{key}.npz"
                    file.write_bytes(npz[f"component/{key}"].tobytes())
                    with np.load(file, allow_pickle=False) as inner:
                        name = str(inner["__model__"])
                    known = {c.name: c for c in (SegmentPopularity, ItemKNN, ContentScorer)}
                    loaded[key] = (known.get(name) or get_model_class(name)).load(file)
                no_neighbours = "__no_neighbours__" in npz.files
            shapes = {(m.n_users_, m.n_items_) for m in loaded.values()}
            if len(shapes) > 1:  # recommend then failed on broadcasting shapes (3, 50) and (65,)
                raise ValueError(f"its components cover different index spaces (users, items): {sorted(shapes)}")
        chain.model_ = loaded.get("model")
        chain.segments_ = loaded["segments"]
        chain.neighbours_ = None if no_neighbours else loaded.get("neighbours", chain.model_)
        chain.content_ = loaded.get("content")
        return chain
