"""Publishing throughput: rows per second of ``Store.publish`` on SQLite and PostgreSQL (docs/benchmarks/publish.md).

    python -m bench.publish [--users 200000] [--per-user 50] [--databases sqlite,postgresql] [--pg-url URL]

Publishes one model's top-``per-user`` lists for ``users`` users (200,000 x 50 = 10M rows by default) three times
per database: ``first`` into empty tables, then ``next date`` (another ``as_of``) on top of it, the nightly steady
state where the table and its indexes already hold a date, then ``republish`` of that date (a rerun or backfill
with ``--force``: its 10M rows are replaced). A rate is rows / wall time of the whole
``publish`` call: validating the frame, deleting the rows it replaces, writing, committing. Each publish is
checked (row count, one user's list read back).

Databases: a SQLite file in a temporary folder, and a throwaway PostgreSQL cluster (``tests/pg.py``, PostgreSQL's
default settings, so commits are durable) unless ``--pg-url`` names an existing database (its recforge tables
get the rows; the password is never printed). Prints a markdown table and the machine's load average, since
other jobs on a shared machine change the numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.store import ChampionDecision, Store, mask_url

AS_OF_FIRST = datetime(2024, 1, 1, tzinfo=UTC)
AS_OF_NEXT = datetime(2024, 1, 2, tzinfo=UTC)
MODEL = "bench_model"
N_ITEMS = 20_000


@dataclass(frozen=True)
class Result:
    """One timed publish: wall seconds, and CPU seconds of this process and of the PostgreSQL server."""

    database: str
    scenario: str
    rows: int
    seconds: float
    client_cpu: float
    # The throwaway cluster's processes: all together, and the busiest one (the backend running the COPY,
    # which bounds the rate however many cores are free). None for SQLite (it runs in this process) or --pg-url.
    server_cpu: float | None = None
    server_busiest_cpu: float | None = None

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(postmaster_pid: int) -> dict[int, float]:
    """CPU seconds used so far by each process of a PostgreSQL server: the postmaster and its children (the
    backends, WAL writer, checkpointer...)."""
    usage = {postmaster_pid: _process_cpu(postmaster_pid)}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == postmaster_pid:
                usage[int(stat.parent.name)] = _process_cpu(int(stat.parent.name))
        except (OSError, ValueError, IndexError):  # the process exited meanwhile
            continue
    return usage


def _cpu_delta(before: dict[int, float], after: dict[int, float]) -> tuple[float, float]:
    """(total, busiest process) CPU seconds between two ``server_cpu`` readings."""
    deltas = [used - before.get(pid, 0.0) for pid, used in after.items()]
    return sum(deltas), max(deltas)


def make_recommendations(users: int, per_user: int, seed: int = 0) -> pd.DataFrame:
    """A recommendations frame as the pipeline writes it: per user, ranks 1..per_user, best first."""
    rng = np.random.default_rng(seed)
    n = users * per_user
    user_ids = pd.Series(np.arange(1, users + 1).astype(str), dtype="str")
    return pd.DataFrame(
        {
            "model": pd.Series([MODEL], dtype="str").repeat(n).reset_index(drop=True),
            "user_id": user_ids.repeat(per_user).reset_index(drop=True),
            "rank": np.tile(np.arange(1, per_user + 1, dtype=np.int64), users),
            "item_id": pd.Series(rng.integers(1, N_ITEMS + 1, n).astype(str), dtype="str"),
            "score": np.sort(rng.random((users, per_user)), axis=1)[:, ::-1].ravel(),
        }
    )


@contextmanager
def database_url(kind: str, pg_url: str | None) -> Iterator[tuple[str, str, int | None]]:
    """(url, description, postmaster pid or None) of an empty database of ``kind``; removed afterwards when
    this made it."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="recforge-bench-") as folder:
            yield f"sqlite:///{Path(folder) / 'bench.db'}", f"SQLite {sqlite3.sqlite_version} file, WAL", None
        return
    if pg_url is not None:
        yield pg_url, f"PostgreSQL at {mask_url(pg_url)}", None
        return
    from tests.pg import PostgresCluster  # the same throwaway cluster the tests use

    with PostgresCluster(settings={}) as cluster:
        name = cluster.create_database("recforge_bench")
        pid = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
        description = f"PostgreSQL {cluster.bin_dir.parent.name}, throwaway cluster, default settings"
        yield cluster.url(name), description, pid


def bench_database(kind: str, frame: pd.DataFrame, pg_url: str | None) -> tuple[str, list[Result]]:
    """Time the two publishes on one database; returns its description and the results."""
    results = []
    with database_url(kind, pg_url) as (url, description, postmaster):
        store = Store(url)
        try:
            store.create_schema()
            run_id = store.start_run(
                dataset="bench", source="bench.publish", as_of=AS_OF_FIRST, parameters={}, flow_run_id=None
            )
            champion = ChampionDecision(MODEL, "ndcg", 0.0, "benchmark")
            scenarios = (("first", AS_OF_FIRST), ("next date", AS_OF_NEXT), ("republish", AS_OF_NEXT))
            for scenario, as_of in scenarios:
                server_before = None if postmaster is None else server_cpu(postmaster)
                cpu_before, started = time.process_time(), time.perf_counter()
                written = store.publish(run_id, as_of, frame, champion)
                seconds, client = time.perf_counter() - started, time.process_time() - cpu_before
                result = Result(kind, scenario, written, seconds, client)
                if postmaster is not None and server_before is not None:
                    total, busiest = _cpu_delta(server_before, server_cpu(postmaster))
                    result = Result(kind, scenario, written, seconds, client, total, busiest)
                _check(store, frame, as_of, written)
                results.append(result)
                print(f"  {kind} {scenario}: {written:,} rows in {seconds:.1f} s", file=sys.stderr, flush=True)
        finally:
            store.dispose()
    return description, results


def _check(store: Store, frame: pd.DataFrame, as_of: datetime, written: int) -> None:
    """The publish wrote every row, and the last user's list reads back as published."""
    if written != len(frame):
        raise AssertionError(f"publish wrote {written} rows, expected {len(frame)}")
    last_user = frame["user_id"].iloc[-1]
    got = store.read_recommendations(last_user, model=MODEL, as_of=as_of)
    expected = frame[frame["user_id"] == last_user]
    if got["item_id"].tolist() != expected["item_id"].tolist() or not np.allclose(got["score"], expected["score"]):
        raise AssertionError(f"user {last_user}'s recommendations read back differ from the published ones")


def render(results: Sequence[Result], descriptions: dict[str, str], users: int, per_user: int) -> str:
    lines = [
        f"## Publishing {users:,} users x {per_user} recommendations ({users * per_user:,} rows)",
        "",
        "| database | publish | rows | wall s | rows/s | CPU s: this process | CPU s: PostgreSQL, all (busiest) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        server = "" if r.server_cpu is None else f"{r.server_cpu:.1f} ({r.server_busiest_cpu:.1f})"
        lines.append(
            f"| {descriptions[r.database]} | {r.scenario} | {r.rows:,} | {r.seconds:.1f} | {r.rate:,.0f} "
            f"| {r.client_cpu:.1f} | {server} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--per-user", type=int, default=50)
    parser.add_argument("--databases", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--pg-url", default=None, help="an existing PostgreSQL database instead of a throwaway one")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.databases.split(",") if k.strip()]
    unknown = sorted(set(kinds) - {"sqlite", "postgresql"})
    if unknown:
        parser.error(f"unknown database(s) {unknown}; choose from sqlite, postgresql")

    frame = make_recommendations(args.users, args.per_user)
    load_before = os.getloadavg()
    results: list[Result] = []
    descriptions: dict[str, str] = {}
    for kind in kinds:
        descriptions[kind], found = bench_database(kind, frame, args.pg_url)
        results += found
    load_after = os.getloadavg()

    print(render(results, descriptions, args.users, args.per_user))
    print()
    print(
        f"Machine: {os.cpu_count()} CPU cores, Python {platform.python_version()}, pandas {pd.__version__}; "
        f"load average (1, 5, 15 min) before {_load(load_before)}, after {_load(load_after)}."
    )
    return 0


def _load(values: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
