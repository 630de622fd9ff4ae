"""CPU seconds of each model's two training tasks in the flow, alone: its evaluation, then its publishing refit.

    python -m bench.model_costs [--data-dir ../shared/data/ml-100k] [--models caser,gru4rec] [--repeats 2]

MovieLens 100K is loaded, validated and prepared as ``recforge run --dataset movielens-100k`` does (``as_of``
now), then, one model after another in this process with one BLAS thread (the flow's share on 2 cores with two
tasks in flight), ``recforge.pipeline.evaluate`` and ``fit_and_recommend`` (top 50, the refit config and warm
start the evaluation hands over) run as the flow's two tasks would. Prints each model's CPU seconds per task and
their sum, the median over ``--repeats`` rounds: the figures behind the models' ``training_cost`` hints, and
the CPU the flow's training stage has to fit onto the cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench import DEFAULT_DATA_DIR


def measure(data_dir: Path, models: Sequence[str], repeats: int) -> dict[str, list[tuple[float, float]]]:
    """``{model: [(evaluation CPU s, refit CPU s) per round]}``."""
    from recforge.data.sources import SourceSpec, load_dataset
    from recforge.malloc import tune_malloc
    from recforge.pipeline import evaluate, fit_and_recommend, prepare
    from recforge.validation import validate_dataset
    from recmodels.blas import blas_threads

    tune_malloc()  # as every model task does
    dataset = load_dataset(SourceSpec.from_mapping({"kind": "movielens-100k", "data_dir": str(data_dir)}))
    data = prepare(dataset, validate_dataset(dataset), datetime.now(UTC))  # every event, as without --as-of
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    with blas_threads(1):
        for round_ in range(repeats):
            for name in models:
                print(f"[bench] round {round_ + 1}: {name} …", file=sys.stderr, flush=True)
                start = time.process_time()
                evaluation = evaluate(name, data, k=10, seed=42)
                if not evaluation.ok:
                    raise RuntimeError(f"{name} failed to evaluate: {evaluation.error}")
                middle = time.process_time()
                fit_and_recommend(
                    name, data, top_n=50, seed=42, config=evaluation.refit_config, weights=evaluation.weights
                )
                seconds[name].append((middle - start, time.process_time() - middle))
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    from recmodels.registry import model_names

    parser = argparse.ArgumentParser(prog="python -m bench.model_costs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder with u.data")
    parser.add_argument("--models", default=",".join(model_names()), help="comma-separated (default: all)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the models (default 1)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(models) - set(model_names()))
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(model_names())}")
    seconds = measure(args.data_dir, models, args.repeats)
    rows = []
    for name, rounds in seconds.items():
        evaluation = statistics.median(e for e, _ in rounds)
        refit = statistics.median(r for _, r in rounds)
        rows.append((evaluation + refit, name, evaluation, refit))
    print(f"## CPU seconds per model, ML-100K, one BLAS thread, medians of {args.repeats} round(s)\n")
    print("| model | evaluation | refit | total |")
    print("|---|---|---|---|")
    for total, name, evaluation, refit in sorted(rows, reverse=True):
        print(f"| {name} | {evaluation:.1f} | {refit:.1f} | {total:.1f} |")
    print(f"\nAll models: {sum(row[0] for row in rows):.1f} s of CPU.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
