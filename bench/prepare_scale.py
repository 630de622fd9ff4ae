"""The preparation stage at scale: seconds and peak memory of ``recforge.pipeline.prepare`` on synthetic data.

    python -m bench.prepare_scale [--users 200000] [--items 20000] [--events 9000000] [--repeats 2]

The data set of :func:`recforge.data.synthetic.generate_synthetic` (the one ``bench.runners --synthetic`` uses)
is generated once and written to a temporary pickle; each repeat then runs ``prepare`` (as_of at the last event,
no validation drops) in a fresh process, so every timing starts from the same cold interpreter and the peak is
that process's own (``ru_maxrss``: the data set as loaded plus what preparation adds). To compare two versions of
the code, run this from a worktree of each, one after the other.
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def measure(data_path: Path) -> dict[str, Any]:
    """Run ``prepare`` on the pickled data set in this process: seconds, peak MiB and the row counts."""
    from recforge.pipeline import prepare
    from recforge.validation import ValidationReport

    with data_path.open("rb") as fh:
        dataset = pickle.load(fh)  # written by main() in this run, never a file from elsewhere
    as_of = dataset.interactions["timestamp"].max().to_pydatetime()
    report = ValidationReport(outcomes=[], failing_rows={}, rows_to_drop={"interactions": {}})
    start = time.perf_counter()
    data = prepare(dataset, report, as_of)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mib": peak_mib, "rows": data.row_counts}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=9_000_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child's side
    args = parser.parse_args(argv)
    if args.measure is not None:
        print(json.dumps(measure(args.measure)))
        return 0
    from recforge.data.synthetic import generate_synthetic

    with tempfile.TemporaryDirectory(prefix="recforge-prepare-") as folder:
        data_path = Path(folder) / "dataset.pickle"
        start = time.perf_counter()
        dataset = generate_synthetic(n_users=args.users, n_items=args.items, n_events=args.events)
        with data_path.open("wb") as fh:
            pickle.dump(dataset, fh, protocol=5)
        del dataset
        print(
            f"synthetic {args.users:,} users x {args.items:,} items x {args.events:,} events: generated in "
            f"{time.perf_counter() - start:.1f} s (not timed below)"
        )
        print("| repeat | prepare s | peak MiB | train rows | test rows |")
        print("|---|---|---|---|---|")
        for repeat in range(1, args.repeats + 1):
            child = subprocess.run(
                [sys.executable, "-m", "bench.prepare_scale", "--measure", str(data_path)],
                check=True,
                capture_output=True,
                text=True,
            )
            result = json.loads(child.stdout.strip().splitlines()[-1])
            rows = result["rows"]
            print(
                f"| {repeat} | {result['seconds']:.1f} | {result['peak_mib']:.0f} | {rows['train']:,} | "
                f"{rows['test']:,} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
