"""Benchmarks and tuning scripts run against the shared data sets (not part of the installed package)."""

from pathlib import Path

#: MovieLens 100K in the shared data folder beside the repository (``../shared/data/ml-100k``).
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"
