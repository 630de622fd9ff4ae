"""Evaluate a model under the project's standard protocol (docs/BENCHMARKS.md).

Glue between contract frames (pandas, string ids), the id index and the model interface: fit a fresh model on
the training part of a split, rank or predict for the test part, and score the result with
:mod:`recforge.metrics`. Timings are wall-clock seconds of ``fit`` and of scoring, for relative comparisons.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recforge.data.contract import ITEM, RATING, USER, DataError
from recforge.ids import IdIndex
from recforge.metrics import mae, rmse, topn_metrics
from recforge.split import TemporalSplit, random_rating_split
from recmodels.base import Recommender, RunSettings

__all__ = ["IdIndex", "evaluate_ratings", "evaluate_topn", "relevance_matrix"]

ModelFactory = Callable[[], Recommender]


def _has_complete_ratings(df: pd.DataFrame) -> bool:
    return RATING in df.columns and bool(df[RATING].notna().all())


def relevance_matrix(index: IdIndex, test: pd.DataFrame) -> tuple[np.ndarray, sp.csr_matrix]:
    """Evaluated users (sorted indices) and their binary test-item CSR, one row per user in that order.

    Test rows whose user or item is not in ``index`` are ignored: they cannot be ranked.
    """
    user = index.user_codes(test[USER])
    item = index.item_codes(test[ITEM])
    keep = (user >= 0) & (item >= 0)
    users, row = np.unique(user[keep], return_inverse=True)
    relevant = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (row, item[keep])), shape=(len(users), index.n_items)
    )
    relevant.sum_duplicates()
    relevant.data[:] = 1.0  # repeated test events of one item count once (binary relevance)
    return users, relevant


def evaluate_topn(
    model_factory: ModelFactory,
    split: TemporalSplit,
    k: int = 10,
    settings: RunSettings | None = None,
) -> dict[str, float]:
    """Fit ``model_factory()`` on ``split.train``, rank the top ``k`` unseen items for every test user, score.

    The model gets ratings when the training frame has a complete ``rating`` column (it may ignore them).
    Returns the :func:`~recforge.metrics.topn_metrics` keys plus ``fit_seconds``, ``score_seconds`` and the
    split's ``users_without_train`` / ``users_without_test`` / ``dropped_unseen_items`` counts.
    """
    settings = settings or RunSettings()
    if len(split.test) == 0:
        raise DataError("evaluate_topn: the split's test set is empty; no user has an evaluable held-out event")
    index = IdIndex.from_frame(split.train)
    train = index.interactions(split.train, ratings=_has_complete_ratings(split.train))
    users, relevant = relevance_matrix(index, split.test)

    model = model_factory()
    start = time.perf_counter()
    model.fit(train, settings)
    fit_seconds = time.perf_counter() - start

    start = time.perf_counter()
    items, _ = model.recommend(users, k, exclude_seen=True, batch_size=settings.batch_size)
    score_seconds = time.perf_counter() - start
    if items.shape[1] < k:  # the catalogue is smaller than k: pad as "no recommendation"
        items = np.pad(items, ((0, 0), (0, k - items.shape[1])), constant_values=-1)

    out = topn_metrics(items, relevant, k=k, n_items=index.n_items)
    out.update(
        fit_seconds=fit_seconds,
        score_seconds=score_seconds,
        users_without_train=float(split.users_without_train),
        users_without_test=float(split.users_without_test),
        dropped_unseen_items=float(split.dropped_unseen_items),
    )
    return out


def evaluate_ratings(
    model_factory: ModelFactory,
    interactions: pd.DataFrame,
    seed: int = 42,
    settings: RunSettings | None = None,
) -> dict[str, float]:
    """Rating protocol: random 80/20 row split (:func:`~recforge.split.random_rating_split`), RMSE and MAE.

    Test pairs whose user or item is absent from train are still scored: they reach the model as index ``-1``
    and the model's own fallback answers (counted in ``unknown_pairs``). Returns ``rmse``, ``mae``,
    ``fit_seconds``, ``predict_seconds``, ``test_rows`` and ``unknown_pairs``.
    """
    settings = settings or RunSettings()
    model = model_factory()
    if not type(model).predicts_ratings:
        raise ValueError(f"{model.name} does not predict ratings; evaluate it with evaluate_topn instead")
    if not _has_complete_ratings(interactions):
        raise DataError(
            "evaluate_ratings: the interactions table needs a 'rating' column with no missing values; "
            "rating metrics do not apply to implicit-feedback data"
        )
    train_df, test_df = random_rating_split(interactions, 0.2, seed)
    if len(test_df) == 0:
        raise DataError("evaluate_ratings: the random split left no test rows; the data set is too small")
    index = IdIndex.from_frame(train_df)
    train = index.interactions(train_df, ratings=True)

    start = time.perf_counter()
    model.fit(train, settings)
    fit_seconds = time.perf_counter() - start

    users = index.user_codes(test_df[USER])
    items = index.item_codes(test_df[ITEM])
    start = time.perf_counter()
    pred = np.asarray(model.predict(users, items), dtype=np.float64)
    predict_seconds = time.perf_counter() - start
    truth = test_df[RATING].to_numpy(dtype=np.float64)
    return {
        "rmse": rmse(pred, truth),
        "mae": mae(pred, truth),
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        "test_rows": float(len(test_df)),
        "unknown_pairs": float(((users < 0) | (items < 0)).sum()),
    }
