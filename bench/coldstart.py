"""Cold-start strategies on MovieLens 100K: new users, users with 1–4 events, new items. Prints markdown.

    python -m bench.coldstart [--data-dir ../shared/data/ml-100k] [--seeds 0 1 2]

Every protocol holds out a seeded 20% and reports NDCG@10 (recforge.metrics) as the mean over the seeds, with the
per-seed values beside it:

1. New users: the held-out users' events are removed from training; each held-out user is ranked from their
   attributes alone (age in quartiles, gender, occupation; zip code is too fine to form segments) and all their
   events are relevant. Global popularity against the chain's segment popularity (default and variants).
2. Users with 1–4 events: the same held-out users, with their first ``r`` events by time revealed and added to
   training; the rest of their events are relevant (revealed items excluded from the ranking). Popularity,
   segment popularity and the chain (item neighbours, completed from segment popularity).
3. New items: a seeded 20% of the catalogue loses every training event. (a) Among new items only: for each user
   who interacted with one, rank the new items by content score against random scores (mean of 10 draws);
   relevant = that user's new items. (b) Overall: the standard per-user temporal holdout with the new items'
   events removed from the training part; item_knn alone (new items excluded) against the chain's hybrid
   blend with content at several ``hybrid_alpha``; every test event is relevant, new items included.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bench import DEFAULT_DATA_DIR
from recforge.data.contract import ITEM, TIMESTAMP, USER, Dataset
from recforge.data.movielens import load_movielens_100k
from recforge.ids import IdIndex, sorted_ids
from recforge.metrics import topn_metrics
from recforge.split import temporal_holdout
from recmodels.base import top_k
from recmodels.baselines.popularity import Popularity
from recmodels.coldstart import (
    ColdStartChain,
    ColdStartConfig,
    ContentConfig,
    ContentScorer,
    SegmentPopularity,
    SegmentPopularityConfig,
    encode_item_features,
    encode_user_attributes,
)
from recmodels.knn.item import ItemKNN

K = 10
HOLDOUT = 0.2
USER_VARIANTS: dict[str, SegmentPopularityConfig | None] = {
    "global popularity": None,
    "chain: segments (defaults: support 20, order 2, smoothing 10)": SegmentPopularityConfig(),
    "segments, single attributes (order 1)": SegmentPopularityConfig(max_order=1),
    "segments, up to 3 attributes": SegmentPopularityConfig(max_order=3),
    "segments, support 50": SegmentPopularityConfig(min_support=50),
    "segments, no smoothing": SegmentPopularityConfig(smoothing=0.0),
}
HYBRIDS: tuple[tuple[float | None, float], ...] = (
    (None, 0.0),
    (0.9, 0.0),
    (0.7, 0.0),
    (0.5, 0.0),
    (0.9, 0.9),
    (0.7, 0.9),
    (0.5, 0.9),
    (0.9, 0.99),
    (0.7, 0.99),
)


def relevance(index: IdIndex, users: pd.Index, events: pd.DataFrame) -> tuple[np.ndarray, sp.csr_matrix]:
    """Rows of ``users`` (positions) with at least one indexed relevant item, and their binary relevance CSR."""
    row = pd.Index(users).get_indexer(events[USER])
    item = index.item_codes(events[ITEM])
    keep = (row >= 0) & (item >= 0)
    matrix = sp.csr_matrix((np.ones(int(keep.sum())), (row[keep], item[keep])), shape=(len(users), index.n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    rows = np.flatnonzero(np.diff(matrix.indptr) > 0)
    return rows, sp.csr_matrix(matrix[rows])


def ndcg(items: np.ndarray, relevant: sp.csr_matrix) -> float:
    return topn_metrics(items, relevant, k=K, n_items=relevant.shape[1])["ndcg"]


def held_users(interactions: pd.DataFrame, seed: int) -> pd.Index:
    ids = sorted_ids(interactions[USER])
    rng = np.random.default_rng(seed)
    return pd.Index(ids[np.sort(rng.permutation(len(ids))[: round(HOLDOUT * len(ids))])])


def new_users(data: Dataset, seed: int) -> dict[str, float]:
    """Protocol 1: NDCG@10 per variant for users never seen in training."""
    events, users_frame = data.interactions, data.users
    held = held_users(events, seed)
    train_events = events[~events[USER].isin(held)]
    index = IdIndex.from_frame(train_events)
    train = index.interactions(train_events, ratings=False)
    fit_attributes = encode_user_attributes(users_frame, index.users)
    query = encode_user_attributes(users_frame, held, like=fit_attributes)
    rows, relevant = relevance(index, held, events[events[USER].isin(held)])
    out = {}
    for label, config in USER_VARIANTS.items():
        if config is None:
            items, _ = Popularity().fit(train).recommend(np.full(len(rows), -1), K)
        elif config == SegmentPopularityConfig():
            chain = ColdStartChain(ColdStartConfig(segments=config)).fit(train, user_attributes=fit_attributes)
            items, _, _ = chain.recommend_with_strategy(np.full(len(rows), -1), K, attributes=query.take(rows))
        else:
            model = SegmentPopularity(config).fit(train, attributes=fit_attributes)
            items, _ = top_k(model.score_attributes(query.take(rows)), K)
        out[label] = ndcg(items, relevant)
    return out


def few_events(data: Dataset, seed: int, reveal: int) -> dict[str, float]:
    """Protocol 2: NDCG@10 for held-out users of whom only their first ``reveal`` events are known."""
    events, users_frame = data.interactions, data.users
    held = held_users(events, seed)
    mine = events[events[USER].isin(held)].sort_values([USER, TIMESTAMP, ITEM], kind="stable")
    first = mine.groupby(USER, sort=False).cumcount() < reveal
    train_events = pd.concat([events[~events[USER].isin(held)], mine[first]])
    index = IdIndex.from_frame(train_events)
    train = index.interactions(train_events, ratings=False)
    attributes = encode_user_attributes(users_frame, index.users)
    rows, relevant = relevance(index, held, mine[~first])
    codes = index.user_codes(held[rows])
    chain = ColdStartChain().fit(train, user_attributes=attributes)
    items, _, labels = chain.recommend_with_strategy(codes, K)
    share = float(np.mean(labels == "item_neighbours"))
    alone = ColdStartChain(ColdStartConfig(neighbour_popularity_weight=0.0)).fit(train, user_attributes=attributes)
    return {
        "popularity": ndcg(Popularity().fit(train).recommend(codes, K)[0], relevant),
        "segment popularity": ndcg(chain.segments_.recommend(codes, K)[0], relevant),
        "item neighbours alone (neighbour_popularity_weight=0)": ndcg(alone.recommend(codes, K)[0], relevant),
        "chain: item neighbours blended with segments (weight 0.7)": ndcg(items, relevant),
        "share of cells from item neighbours": share,
    }


def new_items(data: Dataset, seed: int) -> dict[str, float]:
    """Protocol 3: new items ranked among themselves (content vs random) and overall (hybrid vs item_knn)."""
    events = data.interactions
    all_items = sorted_ids(pd.concat([events[ITEM], data.items[ITEM]]))
    rng = np.random.default_rng(seed)
    held = pd.Index(all_items[np.sort(rng.permutation(len(all_items))[: round(HOLDOUT * len(all_items))])])
    features = None
    out: dict[str, float] = {}
    # (a) among new items only: train on every event of the other items.
    train_events = events[~events[ITEM].isin(held)]
    index = IdIndex(users=sorted_ids(train_events[USER]), items=all_items)
    train = index.interactions(train_events, ratings=False)
    features = encode_item_features(data.items, index.items)
    rows, relevant = relevance(index, index.users, events[events[ITEM].isin(held)])
    blocked = ~np.isin(np.arange(index.n_items), index.item_codes(held))
    for label, config in {
        "content (all features)": ContentConfig(),
        "content (genres only)": ContentConfig(categorical_weight=0, numeric_weight=0, text_weight=0),
        "content (titles only)": ContentConfig(categorical_weight=0, numeric_weight=0, multi_hot_weight=0),
    }.items():
        scores = ContentScorer(config).fit(train, features=features).score(rows)
        scores[:, blocked] = -np.inf
        out[f"new items only: {label}"] = ndcg(top_k(scores, K)[0], relevant)
    draws = []
    for draw in range(10):
        scores = np.random.default_rng([seed, draw]).random((len(rows), index.n_items)).astype(np.float32)
        scores[:, blocked] = -np.inf
        draws.append(ndcg(top_k(scores, K)[0], relevant))
    out["new items only: random"] = float(np.mean(draws))
    # (b) overall: temporal holdout, new items' events dropped from the training part only.
    split = temporal_holdout(events, test_fraction=HOLDOUT)
    train_events = split.train[~split.train[ITEM].isin(held)]
    index = IdIndex(users=sorted_ids(train_events[USER]), items=all_items)
    train = index.interactions(train_events, ratings=False)
    users = index.users
    rows, relevant = relevance(index, users, split.test)
    codes = index.user_codes(users[rows])
    knn = ItemKNN().fit(train)
    for alpha, quantile in HYBRIDS:
        chain = ColdStartChain(ColdStartConfig(hybrid_alpha=alpha, new_item_quantile=quantile))
        chain.fit(train, model=knn, item_features=features if alpha is not None else None)
        items, _, labels = chain.recommend_with_strategy(codes, K)
        name = "item_knn alone" if alpha is None else f"hybrid alpha={alpha}, new_item_quantile={quantile}"
        out[f"overall: {name}"] = ndcg(items, relevant)
        out[f"overall: {name} — share of new items in the lists"] = float(np.mean(labels == "content"))
    return out


def table(title: str, runs: list[dict[str, float]], seeds: Sequence[int]) -> str:
    lines = [f"### {title}", "", "| strategy | mean | " + " | ".join(f"seed {s}" for s in seeds) + " |"]
    lines.append("|---|---|" + "---|" * len(seeds))
    for key in runs[0]:
        values = [run[key] for run in runs]
        lines.append(f"| {key} | {np.mean(values):.4f} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.coldstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data = load_movielens_100k(args.data_dir)

    def run(title: str, fn: Callable[[int], dict[str, float]]) -> None:
        print(f"[bench] {title} …", file=sys.stderr, flush=True)
        print(table(title, [fn(seed) for seed in args.seeds], args.seeds))

    print(f"## Cold start on MovieLens 100K — NDCG@{K}, 20% held out, seeds {' '.join(map(str, args.seeds))}\n")
    run("New users (attributes only)", lambda seed: new_users(data, seed))
    for reveal in (1, 2, 3, 4):
        run(f"Users with {reveal} revealed event(s)", lambda seed, r=reveal: few_events(data, seed, r))
    run("New items", lambda seed: new_items(data, seed))
    print(f"[bench] done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
