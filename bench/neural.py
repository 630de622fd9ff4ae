"""The deep models (neumf, caser, gru4rec) on MovieLens 100K under the standard protocol, with training
curves.

    python -m bench.neural [--data-dir ../shared/data/ml-100k] [--models neumf,caser,gru4rec] [--repeats 1]

Each model is fitted with its default config on the training part of the per-user temporal holdout and ranked
for every test user (NDCG@10 and the other top-N metrics). Beside the metrics it prints each fit's epochs, the
epoch whose weights were kept, seconds per epoch, the validation-NDCG@10 curve (the early-stopping slice cut
from the end of each user's training history, never the test part), and fit wall time as a multiple of the
popularity and item_knn fits measured in the same run, plus the absolute wall time against the 90 s budget.
With ``--repeats n`` every round fits the baselines and each model again (interleaved, so machine load hits
all of them alike); times are medians and metrics must repeat exactly (same seed, CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench import DEFAULT_DATA_DIR
from recforge.data.movielens import load_movielens_100k
from recforge.evaluation import evaluate_topn
from recforge.split import TemporalSplit, temporal_holdout
from recmodels.base import Recommender, RunSettings
from recmodels.neural.training import NeuralRecommender, default_threads
from recmodels.registry import get_model_class
from recmodels.torch_utils import resolve_device

NEURAL = ("neumf", "caser", "gru4rec")
BASELINES = ("popularity", "item_knn")
BUDGET_SECONDS = 90.0
_METRICS = ("ndcg", "precision", "recall", "mrr", "hit_rate", "coverage")


@dataclass
class Run:
    """One model's metrics (first round), fit times (every round) and, for neural models, the last training
    log."""

    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    fit_seconds: list[float] = field(default_factory=list)
    epochs: int = 0
    best_epoch: int = 0
    seconds_per_epoch: float = 0.0
    refit_seconds: float = 0.0
    curve: list[float] = field(default_factory=list)

    @property
    def fit_median(self) -> float:
        return statistics.median(self.fit_seconds)


def fit_and_score(name: str, split: TemporalSplit, settings: RunSettings, run: Run) -> None:
    """Evaluate ``name`` once; the first call stores metrics, later ones must reproduce them exactly."""
    cls = get_model_class(name)
    fitted: list[Recommender] = []

    def factory() -> Recommender:
        fitted.append(cls())
        return fitted[-1]

    result = evaluate_topn(factory, split, k=10, settings=settings)
    metrics = {key: result[key] for key in _METRICS}
    if not run.metrics:
        run.metrics = metrics
    elif metrics != run.metrics:
        raise RuntimeError(f"{name}: metrics changed between rounds (non-determinism): {run.metrics} vs {metrics}")
    run.fit_seconds.append(result["fit_seconds"])
    model = fitted[-1]
    if isinstance(model, NeuralRecommender):
        log = model.training_log_
        run.epochs, run.best_epoch, run.curve = log.epochs, log.best_epoch, list(log.validation_ndcg)
        run.seconds_per_epoch = statistics.median(log.seconds_per_epoch)
        run.refit_seconds = log.refit_seconds


def report(runs: dict[str, Run], neural: Sequence[str], repeats: int, settings: RunSettings) -> str:
    """Markdown: metrics and time table, then one validation curve per neural model."""
    pop, knn = runs["popularity"].fit_median, runs["item_knn"].fit_median
    head = [
        "model",
        "NDCG@10",
        "P@10",
        "R@10",
        "MRR@10",
        "HR@10",
        "coverage",
        "epochs (best)",
        "s/epoch",
        "refit s",
        "fit s",
        "fit ÷ popularity",
        "fit ÷ item_knn",
        f"≤ {BUDGET_SECONDS:.0f} s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in (*BASELINES, *neural):
        run = runs[name]
        m = run.metrics
        is_neural = name in neural
        cells = [
            name,
            *(f"{m[key]:.4f}" for key in _METRICS),
            f"{run.epochs} ({run.best_epoch})" if is_neural else "–",
            f"{run.seconds_per_epoch:.2f}" if is_neural else "–",
            f"{run.refit_seconds:.1f}" if is_neural else "–",
            f"{run.fit_median:.2f}" if run.fit_median >= 1 else f"{run.fit_median * 1e3:.1f} ms",
            f"{run.fit_median / pop:.0f}×",
            f"{run.fit_median / knn:.1f}×",
            ("yes" if run.fit_median <= BUDGET_SECONDS else "NO") if is_neural else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    device = resolve_device(settings.device)
    out = [
        "## Deep models — MovieLens 100K, standard protocol (temporal holdout 20%), top-10",
        "",
        *lines,
        "",
        f"Fit times are medians of {repeats} round(s) (baselines and models interleaved); device {device}, "
        f"{default_threads(settings, device)} intra-op thread(s), torch {torch.__version__}. "
        "Epochs count the early-stopped run; 'refit s' is the extra training on all events (NeuMF).",
        "",
        "Validation NDCG@10 per epoch (early-stopping slice: newest 10% of each user's training events):",
        "",
    ]
    for name in neural:
        curve = ", ".join(f"{v:.4f}" for v in runs[name].curve)
        out.append(f"- {name}: {curve}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.neural", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder with u.data")
    parser.add_argument("--models", default=",".join(NEURAL), help=f"comma-separated, from {','.join(NEURAL)}")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of fits (default 1)")
    parser.add_argument("--seed", type=int, default=42, help="RunSettings seed")
    parser.add_argument("--device", default="auto", help="RunSettings device: auto, cpu, cuda")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: 1 on CPU)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    neural = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(neural) - set(NEURAL))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(NEURAL)}")

    started = time.perf_counter()
    split = temporal_holdout(load_movielens_100k(args.data_dir).interactions, test_fraction=0.2)
    settings = RunSettings(seed=args.seed, device=args.device, threads=args.threads)
    runs = {name: Run(name) for name in (*BASELINES, *neural)}
    for round_ in range(args.repeats):
        for name in (*BASELINES, *neural):
            print(f"[bench.neural] round {round_ + 1}: {name} …", file=sys.stderr, flush=True)
            fit_and_score(name, split, settings, runs[name])
    print(report(runs, neural, args.repeats, settings))
    print(f"[bench.neural] done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
