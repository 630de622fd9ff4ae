"""Warm-started vs fresh publishing fits of the deep models, as the flow does them, one level down.

The flow evaluates a model on the training part of the standard split, then refits it on every event to
publish. This bench repeats that on data it can score: the evaluation fit runs on the training part of the
training part; the "publishing" fit runs on the training part, either from scratch for the early-stopped
epoch count (``refit_config``) or from the evaluated network (``NeuralConfig.warm_start_epochs``), and both are
scored on the held-out part of the level above. ``--level validation`` (default) cuts everything from the
training part of the standard split, so choosing ``warm_start_epochs`` on it never touches the test part;
``--level test`` scores on the standard test part (report only).

    python -m bench.warm_start [--models gru4rec,neumf,caser] [--seeds 42,1,2] [--epochs 2,3,4]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench import DEFAULT_DATA_DIR
from recforge.data.movielens import load_movielens_100k
from recforge.evaluation import IdIndex, relevance_matrix
from recforge.metrics import topn_metrics
from recforge.pipeline import EvaluatedWeights
from recforge.split import temporal_holdout
from recmodels.base import RunSettings
from recmodels.neural.training import NeuralRecommender
from recmodels.registry import get_model_class


def _fit(
    name: str, frame: pd.DataFrame, settings: RunSettings, config: object = None, start: EvaluatedWeights | None = None
) -> tuple[NeuralRecommender, IdIndex, float]:
    cls = get_model_class(name)
    index = IdIndex.from_frame(frame)
    data = index.interactions(frame, ratings=False)
    model = cls() if config is None else cls(config)
    assert isinstance(model, NeuralRecommender)
    began = time.perf_counter()
    model.fit(data, settings, warm_start=None if start is None else start.matched_to(index))
    return model, index, time.perf_counter() - began


def _ndcg(model: NeuralRecommender, index: IdIndex, test: pd.DataFrame) -> float:
    users, relevant = relevance_matrix(index, test)
    items, _ = model.recommend(users, 10, exclude_seen=True)
    return float(topn_metrics(items, relevant, k=10, n_items=index.n_items)["ndcg"])


def run(name: str, interactions: pd.DataFrame, seed: int, epochs: Sequence[int]) -> list[dict[str, object]]:
    """One model and seed: the fresh refit and a warm refit per epoch count, each with NDCG@10 and seconds."""
    publish = temporal_holdout(interactions, test_fraction=0.2)  # "all events" → train, scored on test
    evaluate = temporal_holdout(publish.train, test_fraction=0.2)  # the flow's evaluation split of those
    settings = RunSettings(seed=seed)
    evaluated, evaluated_index, seconds = _fit(name, evaluate.train, settings)
    refit = evaluated.refit_config()
    weights = EvaluatedWeights(evaluated.warm_state(), evaluated_index.users, evaluated_index.items)
    rows: list[dict[str, object]] = []
    fresh, index, seconds = _fit(name, publish.train, settings, refit)
    base = {"model": name, "seed": seed, "best_epoch": evaluated.training_log_.best_epoch}
    rows.append(
        base
        | {
            "refit": "fresh",
            "epochs": fresh.training_log_.epochs,
            "ndcg": _ndcg(fresh, index, publish.test),
            "seconds": seconds,
        }
    )
    for count in epochs:
        config = dataclasses.replace(refit, warm_start_epochs=count)
        warm, index, seconds = _fit(name, publish.train, settings, config, weights)
        ndcg = _ndcg(warm, index, publish.test)
        rows.append(base | {"refit": "warm", "epochs": warm.training_log_.epochs, "ndcg": ndcg, "seconds": seconds})
    return rows


def markdown(frame: pd.DataFrame) -> str:
    """A pipe table of ``frame``, floats to 4 decimals."""
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--models", default="gru4rec,neumf,caser")
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--epochs", default="2,3,4", help="warm-start epoch counts to try")
    parser.add_argument("--level", choices=("validation", "test"), default="validation")
    args = parser.parse_args(argv)
    interactions = load_movielens_100k(args.data_dir).interactions
    if args.level == "validation":
        interactions = temporal_holdout(interactions, test_fraction=0.2).train  # the test part stays unseen
    rows = []
    for name in args.models.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            rows += run(name, interactions, seed, [int(e) for e in args.epochs.split(",")])
            print(pd.DataFrame(rows[-1 - len(args.epochs.split(",")) :]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    table["variant"] = [
        ("fresh" if r == "fresh" else f"warm {e}") for r, e in zip(table["refit"], table["epochs"], strict=True)
    ]
    keys = pd.MultiIndex.from_frame(table[["model", "seed"]])
    fresh = table[table["refit"].eq("fresh")].set_index(["model", "seed"])
    table["ndcg vs fresh"] = table["ndcg"].to_numpy() - fresh["ndcg"].reindex(keys).to_numpy()
    table["time vs fresh"] = table["seconds"].to_numpy() / fresh["seconds"].reindex(keys).to_numpy()
    print(f"\n## Warm-started vs fresh publishing fits, MovieLens 100K, {args.level} level\n")
    print(markdown(table.drop(columns=["refit"])))
    print("\nMeans over the seeds (NDCG@10 difference, time ratio):\n")
    means = table.groupby(["model", "variant"], sort=False)[["ndcg", "ndcg vs fresh", "time vs fresh"]].mean()
    print(markdown(means.reset_index()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
