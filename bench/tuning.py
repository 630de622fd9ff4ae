"""Choose model defaults on a validation slice cut from the training data — never on the test part.

The standard split (per-user temporal holdout, 20%) gives train/test. The same rule applied again to *train*
gives fit/validation; a grid of configs is fitted on "fit" and scored on "validation". The winning config then
becomes the model's default, and only the final benchmark (``bench.ml100k``) touches the test part.

    python -m bench.tuning --model item_knn --grid '{"neighbors": [20, 50, 100], "shrinkage": [0, 10]}'
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from bench import DEFAULT_DATA_DIR
from recforge.data.movielens import load_movielens_100k
from recforge.evaluation import evaluate_ratings, evaluate_topn
from recforge.split import TemporalSplit, random_rating_split, temporal_holdout
from recmodels.base import RunSettings
from recmodels.registry import get_model_class


def validation_split(interactions: pd.DataFrame, test_fraction: float = 0.2) -> TemporalSplit:
    """Fit/validation split: the standard temporal holdout applied to the training part of the standard split."""
    train = temporal_holdout(interactions, test_fraction).train
    return temporal_holdout(train, test_fraction)


def rating_validation_rows(interactions: pd.DataFrame, seed: int = 42) -> pd.DataFrame:
    """The training rows of the standard random 80/20 rating split; tune rating models on these only."""
    train, _ = random_rating_split(interactions, 0.2, seed)
    return train.reset_index(drop=True)


def grid_search(
    model: str,
    grid: dict[str, list[Any]],
    interactions: pd.DataFrame,
    metric: str = "ndcg",
    k: int = 10,
    seed: int = 42,
) -> pd.DataFrame:
    """Score every config of ``grid`` on the validation slice; one row per config, best first.

    ``metric`` "rmse"/"mae" tunes rating prediction on the training rows of the random rating split (split again
    80/20 with a different seed), anything else tunes top-N on :func:`validation_split`.
    """
    cls = get_model_class(model)
    keys = list(grid)
    rows = []
    split = validation_split(interactions) if metric not in ("rmse", "mae") else None
    rating_rows = rating_validation_rows(interactions, seed) if split is None else None
    for values in itertools.product(*(grid[k_] for k_ in keys)):
        params = dict(zip(keys, values, strict=True))
        config = dataclasses.replace(cls.config_class(), **params)
        start = time.perf_counter()
        if split is not None:
            result = evaluate_topn(lambda c=config: cls(c), split, k=k, settings=RunSettings(seed=seed))
        else:
            result = evaluate_ratings(
                lambda c=config: cls(c), rating_rows, seed=seed + 1, settings=RunSettings(seed=seed)
            )
        rows.append({**params, metric: result[metric], "seconds": round(time.perf_counter() - start, 2)})
    table = pd.DataFrame(rows)
    return table.sort_values(metric, ascending=metric in ("rmse", "mae")).reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--grid", required=True, help='JSON object: {"param": [values, ...], ...}')
    parser.add_argument("--metric", default="ndcg")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--seed", type=int, default=42, help="model seed (RunSettings.seed; default 42)")
    args = parser.parse_args()
    interactions = load_movielens_100k(args.data_dir).interactions
    table = grid_search(args.model, json.loads(args.grid), interactions, metric=args.metric, seed=args.seed)
    print(f"validation-slice {args.metric} for {args.model}, seed {args.seed} (test part never used):")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
