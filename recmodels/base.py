"""The one small base class every recforge model implements.

A model is a frozen config dataclass (documented hyperparameters) plus a :class:`Recommender` subclass whose
constructor only stores that config. ``fit`` learns state into trailing-underscore attributes; ``score`` returns
dense scores for a batch of users over the whole catalogue; ``recommend`` ranks them. Users the model never saw
(index ``-1`` or ``>= n_users_``) get the training popularity ranking, so callers never have to special-case them.
Persistence is ``.npz`` with ``allow_pickle=False``: loading a model file never executes code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

import numpy as np
import scipy.sparse as sp

from recmodels.data import Interactions

T = TypeVar("T")

if TYPE_CHECKING:
    import torch

#: Dense scores held per ``recommend`` batch, in values (4M float32 = 16 MB): at 50,000 items a batch of 1,024
#: users held 200 MB of scores several times over (model output, the padded copy, the top-k input) and a
#: 10,000-user top-10 peaked at 1.1 GB; smaller batches cost no speed there.
SCORE_BATCH_VALUES = 4_000_000
#: ``recommend`` cuts a user set that would fit one batch into one batch per thread, of at least this many users.
MIN_SPLIT_BATCH = 64

#: The most intra-op threads ``RunSettings`` accepts: far above any machine's cores, far below what crashed torch.
MAX_THREADS = 1024

ProgressCallback = Callable[[str, float], None]
"""Called as ``progress(stage, fraction_done)`` by iterative models."""


def user_indices(users: object) -> np.ndarray:
    """``users`` as a 1-D int64 array, refusing what is not a list of indices.

    ``np.asarray(users, dtype=np.int64)`` truncated 0.9 to user 0, read booleans as users 0 and 1, wrapped a uint64
    2**63 to a negative index (then served popularity), and a 2-D array or a scalar failed later with an unrelated
    error.
    """
    array = np.asarray(users)
    if array.ndim != 1:
        raise ValueError(f"users must be a 1-D array of user indices, got an array of shape {array.shape}")
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"users must hold integer user indices, got dtype {array.dtype}")
    if array.dtype == np.uint64 and int(array.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"user index {int(array.max())} is beyond int64")
    return array.astype(np.int64, copy=False)


def _is_int(value: object) -> bool:
    """A whole number of an integer type (numpy's included), not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


@dataclass(frozen=True)
class RunSettings:
    """How to run, as opposed to what to learn: never part of a model's config."""

    seed: int = 42
    device: str = "auto"  # "auto" | "cpu" | "cuda"; used by torch models
    # Intra-op threads for torch/BLAS; None keeps the library default. Where a second thread costs more than it
    # brings, models train on one: bpr's steps under 2^22 values and als under 150,000 pairs whatever the setting,
    # bpr and the deep models on CPU when none is named.
    threads: int | None = None
    batch_size: int = 1024  # users scored per batch in ``recommend``
    progress: ProgressCallback | None = None

    def __post_init__(self) -> None:
        # Checked here rather than deep inside a fit: numpy's generators refuse negative or fractional seeds there
        # ("SeedSequence expects int"), True passed as seed 1, and torch crashed the interpreter (SIGSEGV) when
        # asked for 100,000 threads.
        for name, value in (("seed", self.seed), ("threads", self.threads), ("batch_size", self.batch_size)):
            if not (value is None and name == "threads") and not _is_int(value):
                raise ValueError(f"{name} must be a whole number, got {value!r} ({type(value).__name__})")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must lie in [0, 2**63), got {self.seed}")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise ValueError(
                f"threads must lie in [1, {MAX_THREADS}] or be None (the library default), got {self.threads}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")

    def report(self, stage: str, fraction: float) -> None:
        if self.progress is not None:
            self.progress(stage, fraction)


@dataclass(frozen=True)
class ModelConfig:
    """Base for model configs; subclasses are frozen dataclasses with documented fields.

    Every float field must be finite, whatever a subclass checks: NaN passes ``x < 0`` and infinity passes
    ``not x > 0``, and such values (``--param als.alpha=NaN`` reads as a float) gave NaN scores, all-zero
    similarities or unrelated errors deep in a fit. Each subclass's own ``__post_init__`` runs after that check.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is None:
            return  # inherits a checked one

        def __post_init__(self: ModelConfig) -> None:
            _require_finite(self)
            own(self)

        cls.__post_init__ = __post_init__  # type: ignore[attr-defined]

    def __post_init__(self) -> None:
        _require_finite(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _require_finite(config: ModelConfig) -> None:
    for field in dataclasses.fields(config):  # type: ignore[arg-type]
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{field.name} must be a finite number, got {value}")


class Recommender(ABC):
    """Base class: ``fit`` → ``score`` / ``recommend`` / ``predict``; ``save`` / ``load``."""

    name: ClassVar[str]
    family: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]
    #: True for models whose ``predict`` estimates explicit ratings (evaluated with RMSE/MAE too).
    predicts_ratings: ClassVar[bool] = False
    #: Whether ``fit`` checks a few predicted ratings for finiteness (when :attr:`predicts_ratings`): not for models
    #: that build their rating model on the first ``predict`` (a cost the fit should not take on).
    probe_predictions: ClassVar[bool] = True
    #: True for models that need ratings to train (they cannot run on implicit-only data).
    requires_ratings: ClassVar[bool] = False
    #: Rough CPU seconds of one evaluation plus one refit on MovieLens 100K (one core, default config). Only the
    #: order matters: the flow starts the costliest models first so that they do not finish last, alone. The
    #: models' values: `python -m bench.model_costs` (each model's evaluation then refit, one BLAS thread),
    #: 2026-12-06 (the six costliest: means of two runs; docs/BENCHMARKS.md, the flow row).
    training_cost: ClassVar[float] = 1.0
    #: True for models whose scoring of one batch gains nothing from a batch per thread: dense factor products that
    #: already keep torch's (or BLAS's) threads busy, or popularity's copy of one vector. :meth:`recommend` then ranks
    #: a user set that fits one batch as one batch instead of one per thread, which only added the pool's cost for
    #: them (943 users of ML-100K, medians of 30, 2026-12-07: als 3.0 → 3.3 ms,
    #: biased_mf 4.8 → 7.9, pure_svd 2.7 → 4.0–4.8, popularity 1.9 → 2.5), while the models whose scoring runs
    #: partly on one core gained (user_knn 31 → 18 ms, ease 13.6 → 8.7–11.1, gru4rec 45 → 28).
    threaded_scoring: ClassVar[bool] = False

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()

    # ---- training -------------------------------------------------------------------------------------
    def fit(self, data: Interactions, settings: RunSettings | None = None) -> Self:
        """Learn from ``data``; returns ``self``. Keeps the seen-items matrix for exclusion and fallback.

        A fit that raises leaves the model as it was: the fitted state of an earlier fit (or none), never a mix of
        the new catalogue's size with the old factors, which went on recommending items that do not exist.
        """
        settings = settings or RunSettings()
        if len(data) == 0:
            raise ValueError(f"{self.name}: cannot fit on zero interactions")
        if self.requires_ratings and data.rating is None:
            raise ValueError(f"{self.name} needs ratings; this data set has none")
        before = dict(vars(self))
        try:
            self.n_users_ = data.n_users
            self.n_items_ = data.n_items
            # Shares the arrays of the (float32) cached matrix: a copy cost 71 MB at 8.9M events. Never mutated.
            self.seen_: sp.csr_matrix = data.binary.astype(np.float32, copy=False)
            self.popularity_: np.ndarray = data.item_counts.astype(np.float32)
            self._fit(data, settings)
            self._check_finite_scores()
        except BaseException:
            vars(self).clear()
            vars(self).update(before)
            raise
        return self

    def _fit_with(self, data: Interactions, settings: RunSettings | None, **inputs: object) -> Self:
        """:meth:`fit` with extra inputs that ``_fit`` reads as ``self._<name>`` (a subclass's ``fit(...,
        features=...)``): there for the fit only, never learned state, gone after it whatever happens."""
        for name, value in inputs.items():
            setattr(self, f"_{name}", value)
        try:
            return Recommender.fit(self, data, settings)
        finally:
            for name in inputs:
                delattr(self, f"_{name}")

    def _check_finite_scores(self) -> None:
        """Score (and, for rating models, predict) a few users with events: finite values of the right shape.

        Hyperparameters that are each valid can still overflow float32 together (als ``alpha=1e20``, biased_mf
        ``regularization=1e20``): the fit "succeeded" and every score was NaN, found only when ranking.
        """
        probe = np.flatnonzero(np.diff(self.seen_.indptr) > 0)[:8]
        if len(probe) == 0:
            return
        scores = self._score_known(probe)
        if scores.shape != (len(probe), self.n_items_):
            raise ValueError(
                f"{self.name}: scores have shape {scores.shape}, expected {(len(probe), self.n_items_)} for "
                f"{len(probe)} users over {self.n_items_} items"
            )
        values = [("scores", scores)]
        if self.predicts_ratings and self.probe_predictions:
            values.append(("predicted ratings", self.predict(probe, self.seen_.indices[self.seen_.indptr[probe]])))
        for what, array in values:
            if not np.isfinite(array).all():
                raise FloatingPointError(
                    f"{self.name}: the fitted model gives non-finite {what} (users {probe.tolist()}): its "
                    f"hyperparameters overflow float32 on this data ({self.config}); bring the large ones "
                    "(regularization, alpha, initial scales) back towards their defaults"
                )

    @abstractmethod
    def _fit(self, data: Interactions, settings: RunSettings) -> None:
        """Model-specific training; ``fit`` has already set ``n_users_``, ``n_items_``, ``seen_``, ``popularity_``."""

    # ---- scoring --------------------------------------------------------------------------------------
    @abstractmethod
    def _score_known(self, users: np.ndarray) -> np.ndarray:
        """Scores ``(len(users), n_items_)`` float32 for users that are all in ``[0, n_users_)``.

        Must be a new array, not a view of the model's state: ``score`` hands it to the caller as it is, and
        ``recommend`` writes ``-inf`` over seen items in place.
        """

    def score(self, users: np.ndarray) -> np.ndarray:
        """Dense float32 scores for each user over every item; unknown users get popularity scores.

        Unknown: outside ``[0, n_users_)``, or inside it without a training event (an index space wider than the
        events): no model has anything of theirs to go on, and each would answer differently (all zeros, random
        factors, biases), so all answer with popularity, as for an index they never saw.
        """
        self._check_fitted()
        users = user_indices(users)
        known = (users >= 0) & (users < self.n_users_)
        known[known] = self._has_events(users[known])
        if known.all():  # the common case: no copy of what can be hundreds of MB of scores
            return np.ascontiguousarray(self._score_known(users), dtype=np.float32)
        out = np.empty((len(users), self.n_items_), dtype=np.float32)
        if known.any():
            out[known] = self._score_known(users[known])
        if (~known).any():
            out[~known] = self.popularity_
        return out

    def _has_events(self, users: np.ndarray) -> np.ndarray:
        """Whether each user (all in ``[0, n_users_)``) has a training event."""
        return self.seen_.indptr[users + 1] > self.seen_.indptr[users]

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Estimated ratings for (user, item) pairs; only for models with ``predicts_ratings``."""
        raise NotImplementedError(f"{self.name} ranks items but does not predict ratings")

    def recommend(
        self,
        users: np.ndarray,
        k: int,
        exclude_seen: bool = True,
        batch_size: int = 1024,
        threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item indices and scores per user, best first, as two ``(len(users), k)`` arrays.

        ``users``: a 1-D array of user indices (an integer dtype); indices the model does not know get popularity.
        ``k`` above the catalogue's size is cut to it. Ties break by lower item index so that results are
        deterministic. When fewer than ``k`` items remain after excluding seen ones, the tail is padded with item
        ``-1`` and score ``-inf``. Users are scored
        ``batch_size`` at a time, fewer on large catalogues so that a batch's dense scores stay under
        :data:`SCORE_BATCH_VALUES`, and fewer when that leaves a thread idle: a few hundred users are cut into one
        batch per thread (at least :data:`MIN_SPLIT_BATCH` users each), since a batch's seen-item mask and some
        scorers' products run on one core (not for models with :attr:`threaded_scoring`).

        threads: batches ranked at once, each on its own thread running torch on one thread. scipy's sparse
        products, numpy and torch release the GIL, so the steps that use one core (a sparse product, the seen-item
        mask, the final sort) overlap with the others: item_knn's top-10 for 10,000 users at 200,000 × 50,000
        took 1.07–1.29 s on 2 threads against 1.83–2.00 s one batch at a time (ALS's 0.90–1.07 s against
        0.90–1.28 s; one process, 3 alternations, 2026-12-06). The lists do not depend on it; the
        scores may differ in their last bits, as between any two torch thread counts (a product's sums are split by
        thread). ``None``: torch's intra-op thread count of the calling thread (one per core unless set), so a
        caller that gave torch one thread ranks one batch at a time.
        """
        self._check_fitted()
        if k < 0:
            raise ValueError(f"k must be ≥ 0, got {k}")
        users = user_indices(users)
        k = int(min(k, self.n_items_))
        batch_size = max(1, min(batch_size, SCORE_BATCH_VALUES // max(self.n_items_, 1)))
        workers = worker_threads(threads)
        if workers > 1 and not self.threaded_scoring:
            batch_size = min(batch_size, max(MIN_SPLIT_BATCH, -(-len(users) // workers)))
        items_out = np.empty((len(users), k), dtype=np.int64)
        scores_out = np.empty((len(users), k), dtype=np.float32)

        def rank(start: int) -> None:
            batch = users[start : start + batch_size]
            scores = self.score(batch)
            if exclude_seen:
                known_rows = np.flatnonzero((batch >= 0) & (batch < self.n_users_))
                seen = self.seen_[batch[known_rows]].tocoo()
                scores[known_rows[seen.row], seen.col] = -np.inf
            try:
                top_items, top_scores = top_k(scores, k)
            except NaNScoresError as error:
                rows = batch[error.rows]
                raise NaNScoresError(
                    error.rows,
                    f"{self.name} scored NaN for {len(rows)} of {len(batch)} users in a batch (user indices "
                    f"{rows[:5].tolist()}{', …' if len(rows) > 5 else ''}): its fitted state is not finite there; "
                    "refit it, with other hyperparameters if it happens again",
                ) from None
            items_out[start : start + len(batch)] = top_items
            scores_out[start : start + len(batch)] = top_scores

        self._prepare_scoring()
        map_batches(rank, range(0, len(users), batch_size), workers, first_alone=False)
        return items_out, scores_out

    def _prepare_scoring(self) -> None:  # noqa: B027 (optional hook)
        """Build what ``_score_known`` would otherwise build on its first call (item_knn's hub rows), so that
        :meth:`recommend` can score every batch in threads at once."""

    # ---- persistence ----------------------------------------------------------------------------------
    def _state(self) -> dict[str, np.ndarray]:
        """Model-specific learned arrays to persist (override together with ``_set_state``)."""
        return {}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:  # noqa: B027 (optional hook)
        """Restore what ``_state`` returned."""

    def save(self, path: str | Path) -> Path:
        """Write config and learned state to an ``.npz`` file (no pickle)."""
        self._check_fitted()
        path = Path(path)
        seen = self.seen_.tocsr()
        arrays = {
            "__model__": np.array(self.name),
            "__config__": np.array(json.dumps(self.config.to_dict())),
            "__shape__": np.array([self.n_users_, self.n_items_], dtype=np.int64),
            "__seen_indptr__": seen.indptr,
            "__seen_indices__": seen.indices,
            "__popularity__": self.popularity_,
        }
        for key, value in self._state().items():
            arrays[f"state/{key}"] = value
        with path.open("wb") as fh:
            np.savez_compressed(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a model written by :meth:`save`. Refuses files that need pickle to load, and files whose arrays do
        not make one consistent model (truncated, edited, or not written by :meth:`save`)."""
        if not hasattr(cls, "name"):
            raise TypeError(f"load {path} with the class of the model it holds, e.g. ItemKNN.load(path)")
        with broken_file_errors(path, f"{cls.name} model"):
            with np.load(Path(path), allow_pickle=False) as npz:
                if not isinstance(npz, np.lib.npyio.NpzFile):
                    raise ValueError("a single array (.npy), not a model's .npz archive")
                stored_name = str(npz["__model__"])
                if stored_name != cls.name:
                    raise _OtherModelError(f"{path} holds a {stored_name!r} model, not {cls.name!r}")
                config = cls._stored_config(json.loads(str(npz["__config__"])))
                model = cls(config)
                n_users, n_items = (int(v) for v in npz["__shape__"])
                model.n_users_, model.n_items_ = n_users, n_items
                indptr, indices = npz["__seen_indptr__"], npz["__seen_indices__"]
                if len(indices) and not 0 <= indices.min() <= indices.max() < n_items:
                    raise ValueError(f"seen items outside the stored {n_items} items")
                model.seen_ = sp.csr_matrix(
                    (np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(n_users, n_items)
                )
                model.popularity_ = npz["__popularity__"]
                if model.popularity_.shape != (n_items,):
                    raise ValueError(f"{len(model.popularity_)} popularity values for {n_items} items")
                state = {k.removeprefix("state/"): npz[k] for k in npz.files if k.startswith("state/")}
            model._set_state(state)
            model._check_finite_scores()
        return model

    @classmethod
    def _stored_config(cls, fields: dict[str, Any]) -> ModelConfig:
        """The config of a saved model from its stored fields; models whose new fields changed what an absent
        field meant override this to read older files as they were written."""
        return cls.config_class(**fields)

    def refit_config(self) -> ModelConfig:
        """The config to refit this model with on more data (for example every event before ``as_of``, after
        an evaluation fit on the training part): by default the same config. Models that choose something while
        fitting (a deep model's early-stopped epoch count) return a config that fixes that choice, so the refit
        needs no validation slice of its own."""
        self._check_fitted()
        return self.config

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_items_"):
            raise RuntimeError(f"{self.name} is not fitted yet: call fit() first")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


class _OtherModelError(ValueError):
    """A model file written by another model class."""


@contextlib.contextmanager
def broken_file_errors(path: str | Path, what: str) -> Iterator[None]:
    """Turn whatever reading ``path`` raises into one ValueError saying it is not a consistent ``what`` file.

    Each way a file can be broken raises its own kind (a truncated zip BadZipFile, a missing entry KeyError, edited
    shapes an IndexError or a broadcasting error later); a missing file, a permission problem and another model's
    file keep their own, clearer errors.
    """
    try:
        yield
    except (FileNotFoundError, PermissionError, IsADirectoryError, _OtherModelError):
        raise
    except Exception as error:
        raise ValueError(
            f"{path} is not a consistent {what} file ({type(error).__name__}: {error}); it may be truncated, edited "
            "or written by something else than save(): save it again"
        ) from error


def map_batches(
    function: Callable[[int], T], starts: Iterable[int], threads: int | None = None, first_alone: bool = True
) -> list[T]:
    """``[function(start) for start in starts]``, on ``threads`` threads at once (see :meth:`Recommender.recommend`).

    With ``first_alone`` the first start runs on the calling thread before any other, so that lazy caches a scorer
    builds on its first call are built once; the rest (all of them without it: the caller has built its caches)
    go to a pool whose threads run torch on one thread each. A scorer that only a later batch uses (the cold-start
    chain's neighbours, when the first batch holds none of their rows) may build its cache in two threads at once:
    the same result twice, the last one kept. ``None``: torch's intra-op thread count of the calling thread.
    """
    starts = list(starts)
    workers = min(worker_threads(threads), len(starts))
    if workers <= 1:
        return [function(start) for start in starts]
    results = [function(starts[0])] if first_alone else []
    with _one_torch_thread_each(workers) as pool:
        results += [done.result() for done in [pool.submit(function, start) for start in starts[len(results) :]]]
    return results


def worker_threads(threads: int | None) -> int:
    """Threads for work the caller splits itself (``recommend``'s batches, the kNN similarity blocks): ``threads``,
    or torch's intra-op count of the calling thread (one per core unless the caller runs on fewer, as a model task
    on the flow's thread runner does)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be ≥ 1 (or None), got {threads}")
        return threads
    try:
        import torch
    except ImportError:  # numpy-only installs rank one batch at a time
        return 1
    return torch.get_num_threads()


@contextlib.contextmanager
def _one_torch_thread_each(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A thread pool whose threads run torch on one thread each.

    Each pool thread calls ``set_num_threads(1)`` itself: set in the caller beforehand, it does not reach threads
    started afterwards (one read 1 yet ran a 2000 × 2000 product at two-thread speed, 0.38 vs 0.73 s with its own
    call; 2026-12-06). Their calls can change the count the caller reads back (the caller's before it has run
    any parallel torch work), so the caller's count is set again afterwards.
    """
    try:
        import torch
    except ImportError:
        with ThreadPoolExecutor(workers) as pool:
            yield pool
        return
    caller = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            yield pool
    finally:
        torch.set_num_threads(caller)


def csr_state(prefix: str, matrix: sp.csr_matrix | None) -> dict[str, np.ndarray]:
    """A CSR matrix as plain arrays for :meth:`Recommender._state` (nothing when ``matrix`` is None)."""
    if matrix is None:
        return {}
    return {f"{prefix}/data": matrix.data, f"{prefix}/indices": matrix.indices, f"{prefix}/indptr": matrix.indptr}


def csr_from_state(state: dict[str, np.ndarray], prefix: str, shape: tuple[int, int]) -> sp.csr_matrix | None:
    """The matrix :func:`csr_state` stored under ``prefix``, or None when it stored none."""
    if f"{prefix}/data" not in state:
        return None
    return sp.csr_matrix((state[f"{prefix}/data"], state[f"{prefix}/indices"], state[f"{prefix}/indptr"]), shape=shape)


#: Columns per chunk of :func:`topk_set`'s pre-selection (one maximum per chunk).
_TOP_K_CHUNK = 32
#: :func:`topk_set` pre-selects rows of at least this many chunks per value it returns; narrower rows are ranked
#: whole (at 1,682 columns the pre-selection was slower for top-10 and top-20, 5.1 vs 3.2 and 8.5 vs 4.9 ns/score).
_PRESELECT_CHUNKS_PER_VALUE = 12


def damped_mean(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``sums / counts``, 0 where ``counts`` is 0 (a bias of an entity with no rating and no regularisation: none,
    not NaN)."""
    return np.divide(sums, counts, out=np.zeros(len(sums)), where=counts > 0)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-``k`` of a dense matrix, best first; ``-inf`` entries come back as item ``-1``.

    Ties break by lower column everywhere, including at the cut-off: every column scoring above the k-th value is
    kept, then the lowest columns among those equal to it. So a top-10 is always the prefix of the top-20, and the
    result depends only on the scores.

    :func:`topk_set` takes ``k + 1`` candidates per row (torch's multi-threaded ``topk``, over the chunks with the
    largest maxima only on wide rows: at 50,000 columns ``topk`` over whole rows cost 1.9 ns per score). Every
    other entry is at most the extra one, so when the extra is below the k-th value the row is exact; when it
    ties with the k-th (ties at the cut-off, exhausted ``-inf`` rows), the choice among the tied columns may be
    wrong and the row is redone exactly in numpy.
    """
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    if k == 0 or n_rows == 0:
        return np.empty((n_rows, k), dtype=np.int64), np.empty((n_rows, k), dtype=np.float32)
    try:
        import torch
    except ImportError:  # numpy-only installs still rank correctly, just slower
        return _top_k_exact(scores, k)
    if k == n_cols:  # every column is chosen: only the order is left to decide
        return _top_k_exact(scores, k)
    scores = np.ascontiguousarray(scores)
    table = torch.from_numpy(scores)
    values_t, cols_t = topk_set(table, k + 1)
    values, cols = values_t.numpy(), cols_t.numpy()
    # torch's topk ranks NaN above everything, so a row holding one has it among its candidates.
    _refuse_nan(values)
    # Best first; among equal scores the lower column first (lexsort's last key is the primary one).
    order = np.lexsort((cols, -values), axis=1)
    cols = np.take_along_axis(cols, order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    kth, extra = values[:, k - 1], values[:, k]
    redo = np.flatnonzero(extra == kth)
    items = cols[:, :k].astype(np.int64)
    top_scores = values[:, :k].astype(np.float32)
    if len(redo):
        items[redo], top_scores[redo] = _top_k_exact(scores[redo], k)
    items[np.isneginf(top_scores)] = -1
    return items, top_scores


class NaNScoresError(ValueError):
    """Scores to rank hold NaN: it compares false with everything, so no ranking of it would mean anything."""

    def __init__(self, rows: np.ndarray, message: str) -> None:
        super().__init__(message)
        self.rows = rows


def _refuse_nan(values: np.ndarray) -> None:
    """Raise :class:`NaNScoresError` naming the rows of ``values`` that hold NaN."""
    rows = np.flatnonzero(np.isnan(values).any(axis=1))
    if len(rows):
        raise NaNScoresError(rows, f"scores hold NaN in {len(rows)} of {len(values)} rows (first: row {rows[0]})")


def topk_set(table: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` largest entries of each row of a 2-D float tensor, unsorted: values and columns.

    Like ``torch.topk(table, n, sorted=False)`` — ties at the n-th value may be broken any way, and every entry
    not returned is at most the smallest returned — but wide rows (:data:`_PRESELECT_CHUNKS_PER_VALUE` chunks per
    value or more) are pre-selected: one maximum per :data:`_TOP_K_CHUNK` columns, then ``topk`` over the columns
    of the ``n`` chunks with the largest maxima only. The guarantee holds: an entry left out is at most its chunk's
    maximum, which is at most the n-th largest maximum, and the n chunks with those maxima each hold a candidate at
    least that large. More chunks than ``n`` would only add candidates: 4n chunks of 64 columns (the rule until
    2026-12-06) cost 4.0 ns per score for the top-21 of 20,000 columns and for the top-51 of 50,000, against 1.5 and
    1.7 ns now (random and low-rank scores, one thread). ``n`` must not exceed the row width.
    """
    import torch

    n_cols = table.shape[1]
    chunks = -(-n_cols // _TOP_K_CHUNK)
    selected = n
    if chunks < _PRESELECT_CHUNKS_PER_VALUE * selected:
        values, columns = torch.topk(table, n, dim=1, largest=True, sorted=False)
        return values, columns
    whole = n_cols // _TOP_K_CHUNK * _TOP_K_CHUNK
    maxima = table[:, :whole].unflatten(1, (-1, _TOP_K_CHUNK)).amax(dim=2)
    if whole < n_cols:
        maxima = torch.cat([maxima, table[:, whole:].amax(dim=1, keepdim=True)], dim=1)
    top_chunks = torch.topk(maxima, selected, dim=1, largest=True, sorted=False).indices
    columns = (top_chunks[:, :, None] * _TOP_K_CHUNK + torch.arange(_TOP_K_CHUNK)).flatten(1)
    outside = columns >= n_cols  # past the end of the last, shorter chunk
    candidates = torch.gather(table, 1, columns.clamp_max(n_cols - 1))
    if bool(outside.any()):
        candidates = candidates.masked_fill(outside, -torch.inf)
    values, slots = torch.topk(candidates, n, dim=1, largest=True, sorted=False)
    return values, torch.gather(columns, 1, slots)


def _top_k_exact(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k` in numpy alone: exact under any ties, but several full passes over ``scores``.

    Ties break by lower column everywhere, including at the cut-off: every column scoring above the k-th value is
    kept, then the lowest columns among those equal to it. So a top-10 is always the prefix of the top-20, and the
    result depends only on the scores. ``argpartition`` keeps this O(n_items) per row.
    """
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    if k == 0:
        return np.empty((n_rows, 0), dtype=np.int64), np.empty((n_rows, 0), dtype=np.float32)
    _refuse_nan(scores)
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
    above = scores > kth
    tied = scores == kth
    needed = k - above.sum(axis=1, keepdims=True)
    chosen = above | tied
    # Only rows with more ties at the k-th value than free slots need the (costly) running count of ties.
    excess = np.flatnonzero(tied.sum(axis=1) > needed[:, 0])
    if len(excess):
        rows_tied = tied[excess]
        chosen[excess] = above[excess] | (rows_tied & (np.cumsum(rows_tied, axis=1, dtype=np.int32) <= needed[excess]))
    # Row-major nonzero lists each row's k chosen columns in ascending order.
    cols = np.nonzero(chosen)[1].reshape(n_rows, k)
    chosen_scores = np.take_along_axis(scores, cols, axis=1)
    # Stable sort on descending score keeps ascending column order among equal scores.
    order = np.argsort(-chosen_scores, axis=1, kind="stable")
    items = np.take_along_axis(cols, order, axis=1).astype(np.int64)
    top_scores = np.take_along_axis(chosen_scores, order, axis=1).astype(np.float32)
    items[np.isneginf(top_scores)] = -1
    return items, top_scores
