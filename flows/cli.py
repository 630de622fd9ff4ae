"""The ``recforge`` command line: ``run``, ``backfill``, ``deploy``, ``serve``, ``recommendations``, ``models``.

Option values are validated before Prefect starts, so a typo costs a clear message, not a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from recforge.config import (
    DB_URL_ENV,
    ConfigError,
    RunConfig,
    build_config,
    load_toml,
    refuse_future_as_of,
    resolve_db_url,
)
from recforge.data.contract import DataError
from recforge.malloc import tune_malloc

if TYPE_CHECKING:
    from recforge.store import Store

DATASET_KINDS = ("synthetic", "movielens-100k", "csv", "parquet", "sql")


def _prefect_defaults() -> None:
    """Environment defaults that make a server-less local run reliable (set before Prefect is imported)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary local API takes ~10 s to start on 2 busy cores and sometimes longer than Prefect's default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _start_temporary_server() -> Callable[[], None]:
    """Start Prefect's temporary local server now, in a thread, when no Prefect API is configured; returns the
    function that waits for it.

    The server is a subprocess that takes ~7 s to come up; started here, it boots on the other core while this
    process imports the pipeline (torch, Great Expectations: ~4.5 s), instead of after it, when the flow call
    would start it. Prefect keeps one such server per process and its ``start`` does nothing when it already
    runs, so the flow call then uses this one. If starting fails here, the flow call tries again and reports
    Prefect's own error. Wait before calling the flow (a half-started server would be taken as running) and
    before leaving on an error (so that Prefect has registered the server's shutdown at exit).
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return lambda: None
    try:
        from prefect.server.api.server import SubprocessASGIServer
    except ImportError:  # another Prefect layout: the flow call starts its server as before
        return lambda: None

    server = _own_session_server_class(SubprocessASGIServer)()

    def start() -> None:
        with contextlib.suppress(Exception):
            server.start()

    thread = threading.Thread(target=start, name="prefect-temporary-server", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if server.running:  # Prefect's own notice was logged before its logging was set up
            from prefect.logging import get_logger

            get_logger().info(
                "Started a temporary Prefect server on %s; for the dashboard and scheduled runs, run a dedicated "
                "one and set PREFECT_API_URL (docs/operations.md)",
                server.address,
            )

    return wait


def _own_session_server_class(base: type) -> type:
    """Prefect's temporary-server class, its server process started in a session of its own.

    In the terminal's process group the server got Ctrl-C's SIGINT too and died at once, so the flow, closing its
    run, retried a dead API for minutes and the command ended with "ConnectError" instead of "interrupted". In its
    own session it lives until this process stops it at exit, as Prefect arranges. Prefect keeps one server per
    process in a registry shared with this subclass, so the flow call finds and uses this one.
    """
    import subprocess

    import prefect.server.api.server as server_module

    class _OwnSessionPopen(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("start_new_session", True)
            super().__init__(*args, **kwargs)

    class OwnSessionServer(base):  # type: ignore[misc,valid-type]
        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            # Prefect's method spawns with `subprocess.Popen`: the module's name is pointed at a Popen that starts a
            # new session for this one call (only Prefect's server module sees it).
            shim = types.SimpleNamespace(**{**vars(subprocess), "Popen": _OwnSessionPopen})
            server_module.subprocess = shim  # type: ignore[assignment]
            try:
                return super()._run_uvicorn_command()  # type: ignore[no-any-return]
            finally:
                server_module.subprocess = subprocess  # type: ignore[assignment]

    return OwnSessionServer


def _parse_columns(text: str) -> dict[str, str]:
    """``user_id=customer,item_id=sku`` → mapping from contract column to source column."""
    mapping = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"--columns expects name=column pairs, got {part!r}")
        key, value = (s.strip() for s in part.split("=", 1))
        mapping[key] = value
    return mapping


def _parse_as_of(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--as-of expects an ISO date or datetime such as 1998-04-01 or 1998-04-01T06:00:00Z, got {text!r}"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _parse_before(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--before expects an ISO date or datetime such as 2026-11-01 or 2026-11-01T06:00:00Z, got {text!r}"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date such as 1998-01-31, got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _parse_param(text: str) -> tuple[str, str, Any]:
    """``MODEL.FIELD=VALUE`` → (model, field, value); VALUE is read as JSON when it is JSON, else kept as text."""
    key, sep, raw = text.partition("=")
    model, dot, field = key.strip().partition(".")
    if not sep or not dot or not model or not field:
        raise argparse.ArgumentTypeError(f"expected MODEL.FIELD=VALUE, e.g. als.factors=128, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw  # plain text: a name such as bm25, or a number pydantic converts when it checks the field
    return model, field.strip(), value


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options that describe a pipeline run (source, models, database, runner), shared by run and backfill."""
    parser.add_argument("--config", help="TOML file with run options ([run] table); flags override it")
    parser.add_argument(
        "--dataset",
        choices=DATASET_KINDS,
        help="data source kind (default: csv or parquet with --interactions, sql with --source-url, movielens-100k "
        "with --data-dir, else synthetic)",
    )
    parser.add_argument("--data-dir", help="movielens-100k: folder with u.data/u.user/u.item or RecBole files")
    parser.add_argument("--interactions", help="csv/parquet: interactions file (.csv, .tsv, .parquet, RecBole .inter)")
    parser.add_argument("--users", help="csv/parquet: optional users attribute file")
    parser.add_argument("--items", help="csv/parquet: optional items attribute file")
    parser.add_argument(
        "--columns",
        type=_parse_columns,
        help="column mapping, e.g. user_id=customer,item_id=sku,timestamp=ts",
    )
    parser.add_argument("--sep", help="csv: field separator (default from the extension)")
    parser.add_argument(
        "--names",
        help="csv: the interactions file has no header line; its column names in file order, "
        "e.g. user_id,item_id,rating,timestamp",
    )
    parser.add_argument(
        "--user-names",
        help="csv: the users file has no header line; its column names in file order, the id named user_id, "
        "e.g. user_id,gender,age,occupation,zip_code",
    )
    parser.add_argument(
        "--item-names",
        help="csv: the items file has no header line; its column names in file order, the id named item_id, "
        "e.g. item_id,title,genres",
    )
    parser.add_argument("--encoding", help="csv: text encoding of the files, e.g. latin-1 (default utf-8)")
    parser.add_argument("--timestamp-unit", choices=("s", "ms", "us", "ns"), help="unit of numeric timestamps")
    parser.add_argument(
        "--rating-range", help="valid rating scale 'min,max', e.g. 1,5 (ratings outside fail validation)"
    )
    parser.add_argument(
        "--source-url",
        help="sql: SQLAlchemy URL of the database to read interactions from; movielens-100k: the zip to download "
        "instead of GroupLens' (an http(s), ftp or file URL implies movielens-100k)",
    )
    parser.add_argument("--table", help="sql: table holding the interactions")
    parser.add_argument("--query", help="sql: SELECT returning the interactions (instead of --table)")
    parser.add_argument(
        "--db-url", help=f"SQLAlchemy URL to publish to (default ${DB_URL_ENV} or sqlite:///var/recforge.db)"
    )
    parser.add_argument("--models", help="comma-separated model names (see `recforge models`)")
    parser.add_argument(
        "--families", help="train every model of these comma-separated families (see `recforge models`)"
    )
    parser.add_argument("--top-n", type=_positive_int, help="recommendations per user (default 50)")
    parser.add_argument("--k", type=_positive_int, help="metric cut-off (default 10)")
    parser.add_argument(
        "--task-runner", choices=("thread", "process", "dask"), help="how model tasks run (default thread)"
    )
    parser.add_argument("--dask-address", help="address of an existing Dask scheduler (with --task-runner dask)")
    parser.add_argument(
        "--max-workers",
        type=_positive_int,
        help="model tasks in flight at once (default: one per core on threads, one per worker process otherwise)",
    )
    parser.add_argument(
        "--no-cold-start",
        dest="cold_start",
        action="store_false",
        default=None,
        help="publish each model's own ranking for every user (no fallback chain for users with few events)",
    )
    parser.add_argument(
        "--no-explanations", dest="explanations", action="store_false", default=None, help="store no reasons"
    )
    parser.add_argument(
        "--new-items-weight",
        type=float,
        help="let items without events be recommended: blend a content score with the model's, this weight on "
        "the model's side (e.g. 0.9)",
    )
    parser.add_argument(
        "--pseudonymise-users",
        action="store_true",
        help="replace user ids by keyed pseudonyms on ingest (key from $RECFORGE_PSEUDONYM_KEY)",
    )
    parser.add_argument(
        "--model-timeout",
        type=_positive_int,
        help="seconds each model may take to evaluate and to refit; over it the model counts as failed",
    )
    parser.add_argument(
        "--param",
        dest="params",
        action="append",
        type=_parse_param,
        metavar="MODEL.FIELD=VALUE",
        help="a model hyperparameter over its default, e.g. als.factors=128 (repeatable; VALUE as JSON: 0.5, true, "
        "null, [1, 2], or plain text; every model's fields: `recforge models --params`)",
    )
    parser.add_argument("--seed", type=int, help="random seed (default 42)")
    parser.add_argument("--output-dir", help="folder for Data Docs and reports (default var)")


def _add_pseudonymised_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pseudonymised",
        action="store_true",
        help="the runs pseudonymised user ids: look the user up by the pseudonym of --user ($RECFORGE_PSEUDONYM_KEY)",
    )


def _stored_user(args: argparse.Namespace) -> str:
    from recforge.privacy import PrivacyConfig, stored_user_id

    try:
        return stored_user_id(args.user, PrivacyConfig(pseudonymise_users=args.pseudonymised))
    except DataError as exc:  # the key is missing: a setting of this command, not a problem of the data
        raise ConfigError(f"--pseudonymised needs the key: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recforge", description="Interaction logs in, ranked recommendation tables in SQL out."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the recommend pipeline once")
    _add_run_options(run)
    run.add_argument("--as-of", type=_parse_as_of, help="only events before this instant count (default: now)")

    backfill = sub.add_parser(
        "backfill", help="run the pipeline for every date in [--start, --end] (already published dates skipped)"
    )
    backfill.add_argument("--start", required=True, type=_parse_date, help="first as_of date, e.g. 1998-01-01")
    backfill.add_argument("--end", required=True, type=_parse_date, help="last as_of date (inclusive)")
    backfill.add_argument("--step", type=_positive_int, default=1, help="days between dates (default 1)")
    backfill.add_argument("--force", action="store_true", help="rerun dates that were already published")
    backfill.add_argument(
        "--concurrency", type=_positive_int, default=2, help="dates running at the same time (default 2)"
    )
    backfill.add_argument(
        "--deployment",
        help="run each date as a run of this deployment (e.g. recommend/nightly, needs a server and a worker) "
        "instead of as a subflow in this process",
    )
    _add_run_options(backfill)
    backfill.set_defaults(as_of=None)

    deploy = sub.add_parser("deploy", help="register deploy/prefect.yaml's deployments with the Prefect server")
    deploy.add_argument("--prefect-file", help="prefect.yaml to deploy (default deploy/prefect.yaml)")
    deploy.add_argument("--name", action="append", help="deploy only this deployment (repeatable; default all)")
    deploy.add_argument(
        "--store-db-secret",
        action="store_true",
        help=f"first store ${DB_URL_ENV} in the Prefect Secret block the deployments read the database URL from",
    )

    serve = sub.add_parser("serve", help="serve the deployments from this process (nightly schedule, backfills)")
    serve.add_argument("--prefect-file", help="prefect.yaml whose deployments to serve (default deploy/prefect.yaml)")
    serve.add_argument("--cron", help="schedule of the nightly run instead of the file's, e.g. '30 2 * * *'")
    serve.add_argument("--timezone", help="time zone of the schedule, e.g. Europe/Berlin (default: the file's)")
    serve.add_argument("--db-secret", help=f"Prefect Secret block holding the database URL (default ${DB_URL_ENV})")

    recs = sub.add_parser("recommendations", help="print what was published for a user")
    recs.add_argument("--user", required=True, help="user id as in the source data")
    recs.add_argument("--model", help="model name (default: the current champion)")
    recs.add_argument("--as-of", type=_parse_as_of, help="a published as_of (default: the latest)")
    recs.add_argument("--limit", type=_positive_int, default=10, help="rows to show (default 10)")
    recs.add_argument("--db-url", help="SQLAlchemy URL (default $RECFORGE_DB_URL or sqlite:///var/recforge.db)")
    recs.add_argument(
        "--explain", action="store_true", help="show why each item was recommended, and by which strategy"
    )
    _add_pseudonymised_option(recs)

    forget = sub.add_parser(
        "forget", help="erase a user: delete their published rows, record it, drop their events from later runs"
    )
    forget.add_argument("--user", required=True, help="user id as in the source data")
    forget.add_argument("--note", help="why (e.g. a ticket number); stored with the erasure record")
    forget.add_argument("--db-url", help="SQLAlchemy URL (default $RECFORGE_DB_URL or sqlite:///var/recforge.db)")
    _add_pseudonymised_option(forget)

    prune = sub.add_parser(
        "prune",
        help="delete the published rows of old dates (recommendations, features, champion); runs and metrics stay",
    )
    cutoff = prune.add_mutually_exclusive_group(required=True)
    cutoff.add_argument(
        "--before", type=_parse_before, help="delete every as_of before this date or datetime (UTC unless given)"
    )
    cutoff.add_argument("--keep-days", type=_positive_int, help="delete every as_of older than this many days")
    prune.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    prune.add_argument("--db-url", help="SQLAlchemy URL (default $RECFORGE_DB_URL or sqlite:///var/recforge.db)")

    runs = sub.add_parser("runs", help="list the latest runs (status, as_of, duration, champion, error)")
    runs.add_argument("--limit", type=_positive_int, default=10, help="runs to list (default 10)")
    runs.add_argument("--status", help="only runs with this status: running, completed, partial or failed")
    runs.add_argument(
        "--run", metavar="RUN_ID", help="one run in full (its id or first characters): timings, error, metrics"
    )
    runs.add_argument("--db-url", help="SQLAlchemy URL (default $RECFORGE_DB_URL or sqlite:///var/recforge.db)")

    models = sub.add_parser("models", help="list the registered models and their families")
    models.add_argument(
        "--params",
        nargs="*",
        metavar="MODEL",
        help="show the hyperparameters (type, default, meaning) of these models, or of every model",
    )
    # No prefix matching: `--source csv` was taken as `--source-url csv` and failed with an error about SQL tables.
    for command in (parser, *sub.choices.values()):
        command.allow_abbrev = False
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Merge a TOML config file (if any) with the flags given on the command line; flags win."""
    values: dict[str, Any] = load_toml(args.config) if args.config else {}
    if "db_url" in values and not args.db_url:
        args.db_url = values.pop("db_url")
    values.pop("db_url", None)
    source: dict[str, Any] = dict(values.get("source", {}))
    flag_to_source = {
        "data_dir": args.data_dir,
        "interactions": args.interactions,
        "users": args.users,
        "items": args.items,
        "columns": args.columns,
        "sep": args.sep,
        "names": args.names,
        "user_names": args.user_names,
        "item_names": args.item_names,
        "encoding": args.encoding,
        "timestamp_unit": args.timestamp_unit,
        "rating_range": args.rating_range,
        "source_url": args.source_url,
        "table": args.table,
        "query": args.query,
    }
    if args.dataset and args.dataset != source.get("kind"):
        source = {"kind": args.dataset}
    source.update({k: v for k, v in flag_to_source.items() if v is not None})
    if "kind" not in source:
        from recforge.data.sources import infer_kind

        source["kind"] = infer_kind(source)  # recorded with the run, as the flags implied it
    values["source"] = source
    flags = {
        "models": None if args.models is None else args.models.split(","),
        "families": None if args.families is None else args.families.split(","),
        "as_of": args.as_of,
        "top_n": args.top_n,
        "k": args.k,
        "task_runner": args.task_runner,
        "dask_address": args.dask_address,
        "max_workers": args.max_workers,
        "model_timeout_s": args.model_timeout,
        "cold_start": args.cold_start,
        "explanations": args.explanations,
        "new_items_weight": args.new_items_weight,
        "seed": args.seed,
        "output_dir": args.output_dir,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    if args.params:  # over the config file's [run.model_params.MODEL] tables, field by field
        model_params = {model: dict(fields) for model, fields in values.get("model_params", {}).items()}
        for model, field, value in args.params:
            model_params.setdefault(model, {})[field] = value
        values["model_params"] = model_params
    if getattr(args, "pseudonymise_users", False):
        values["privacy"] = {**values.get("privacy", {}), "pseudonymise_users": True}
    return build_config(values, origin=f"options{' in ' + args.config if args.config else ''}")


def _format_leaderboard(summary: dict[str, Any]) -> str:
    import pandas as pd

    board = pd.DataFrame(summary["leaderboard"])
    if {"ndcg_ci_low", "ndcg_ci_high"} <= set(board.columns):
        board["ndcg 95% CI"] = [
            "" if pd.isna(lo) else f"[{lo:.3f}, {hi:.3f}]"
            for lo, hi in zip(board["ndcg_ci_low"], board["ndcg_ci_high"], strict=True)
        ]
    columns = [
        c
        for c in (
            "model",
            "family",
            "ndcg",
            "ndcg 95% CI",
            "precision",
            "recall",
            "map",
            "mrr",
            "hit_rate",
            "coverage",
            "rmse",
            "mae",
            "seconds",
            "error",
        )
        if c in board.columns
    ]
    board = board[columns]
    if "error" in board.columns and board["error"].isna().all():
        board = board.drop(columns="error")
    elif "error" in board.columns:  # in full under the table (_print_run_summary): a line each, not a wide table
        board["error"] = [_first_words(e) if isinstance(e, str) else "" for e in board["error"]]
    return board.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def _first_words(text: str, width: int = 60) -> str:
    """``text`` cut to ``width`` characters, an ellipsis marking the cut (tables print the whole text below)."""
    return text if len(text) <= width else text[: width - 1] + "…"


def _refuse_missing_paths(config: RunConfig) -> None:
    """A source folder or file that is not there, refused before Prefect starts (a backfill ran every date into it)."""
    from recforge.data.sources import SourceSpec, check_paths

    try:
        check_paths(SourceSpec.from_mapping(config.source))
    except DataError as exc:
        raise ConfigError(f"{exc}; check the path options (--data-dir, --interactions, --users, --items)") from exc


def _warn_unused_params(config: RunConfig) -> None:
    """Hyperparameters for a model the run does not train, said before any data is read (the flow said it only
    after ingest, validation and preparation, minutes in at scale). A warning, not a refusal: a deployment's
    model_params may cover models that a narrower run (``--models``) leaves out."""
    chosen = config.model_list()
    for name in config.model_params:
        if name not in chosen:
            print(
                f"recforge: warning: the hyperparameters for {name} are unused: {name} is not among this run's "
                f"models ({', '.join(chosen)}); add it to --models, or drop its --param",
                file=sys.stderr,
            )


def cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    refuse_future_as_of(config.as_of, "--as-of", "a date up to today (or leave --as-of out for now)")
    _refuse_missing_paths(config)
    _warn_unused_params(config)
    if args.db_url:
        # Passed by environment, not as a flow parameter, so a password never shows among the run's parameters.
        os.environ[DB_URL_ENV] = args.db_url
    from flows.runners import check_dask_scheduler, make_task_runner

    runner = make_task_runner(config.task_runner, config.max_workers, config.dask_address)  # may refuse: first
    if config.task_runner == "dask" and config.dask_address:
        check_dask_scheduler(config.dask_address)  # before any data is read, not after preparing it
    server_ready = _start_temporary_server()
    try:
        from flows.recommend import recommend
    finally:
        server_ready()
    try:
        summary = recommend.with_options(task_runner=runner)(config=config)
    except Exception as exc:
        # A partial run published the other models and wrote its report: show them, then the failure.
        partial = getattr(exc, "summary", None)
        if partial is not None:
            _print_run_summary(partial, config, args)
        raise
    _print_run_summary(summary, config, args)
    return 0


def _print_run_summary(summary: dict[str, Any], config: RunConfig, args: argparse.Namespace) -> None:
    print()
    print(f"recforge run {summary['run_id']} — {summary['dataset']} as of {summary['as_of']}: {summary['status']}")
    print(f"Leaderboard (top-N metrics @{config.k} on the per-user temporal holdout):")
    print(_format_leaderboard(summary))
    for row in summary["leaderboard"]:
        if isinstance(row.get("error"), str):
            print(f"Failed: {row['model']} — {row['error']}")
    for name, reason in (summary.get("skipped_models") or {}).items():
        print(f"Left out: {name} — {reason}")
    if summary.get("report"):
        print(f"Report: {summary['report']}")
    published = bool((summary.get("rows_written") or {}).get("recommendations"))
    if summary.get("champion") is not None:
        print(f"Champion: {summary['champion']} ({summary['champion_reason']})")
    else:  # the reason says why ("no champion chosen: …"); without one, no model was there to choose from
        print(f"Champion: none ({summary.get('champion_reason') or 'no model finished its evaluation'})")
    if published:
        print(f"Published to {summary['database']}: {summary['rows_written']}")
        print(
            "Tables: recommendations, champion_recommendations (view), publications, model_metrics, runs, features, "
            "champions, erasures"
        )
    else:
        print(f"Published to {summary['database']}: nothing (the tables keep serving what they served before)")
    if summary.get("data_docs"):
        print(f"Validation report (Great Expectations Data Docs): {summary['data_docs']}")
    if published:
        print(f"Try: recforge recommendations --user <id>{' --db-url ...' if args.db_url else ''}")


def _published_store(db_url: str | None, upgrade: bool = False) -> Store:
    """The database a run published to, for the commands that read (or amend) it.

    A ConfigError instead of an SQL traceback when there is nothing there: a SQLite file that does not exist (not
    created empty, as connecting would), a database without recforge's tables, one at an older schema revision
    (``upgrade``: migrated, for the commands that write), or one that cannot be reached.
    """
    from sqlalchemy.exc import DBAPIError

    from recforge.migrations import head_revision
    from recforge.store import Store, mask_url, sqlite_file

    url = resolve_db_url(db_url)
    where = "--db-url" if db_url else (f"${DB_URL_ENV}" if os.environ.get(DB_URL_ENV) else "the default")
    database = sqlite_file(url)
    if database is not None and not database.is_file():
        raise ConfigError(
            f"no database file {os.path.abspath(database)} ({mask_url(url)}, from {where}); `recforge run` "
            "creates it, or point --db-url at the database a run published to"
        )
    store = Store(url)
    try:
        revision = store.schema_revision()
    except DBAPIError as exc:
        raise ConfigError(f"cannot read database {store.url_masked} (from {where}): {exc.orig}") from None
    if revision is None:
        raise ConfigError(
            f"database {store.url_masked} (from {where}) holds no recforge tables; `recforge run` with the same "
            "URL creates and fills them"
        )
    if revision != head_revision():
        if not upgrade:
            raise ConfigError(
                f"database {store.url_masked} is at schema revision {revision}, this recforge reads revision "
                f"{head_revision()}; the next `recforge run` upgrades it, keeping its rows"
            )
        store.create_schema()
    return store


def _in_stage_order(timings: dict[str, float]) -> list[tuple[str, float]]:
    """The stored timings (a JSON object kept with sorted keys) in the flow's order, unknown names last."""
    from recforge.store import RUN_STAGES

    def position(stage: str) -> int:
        name = stage.removesuffix(" (failed)")
        return RUN_STAGES.index(name) if name in RUN_STAGES else len(RUN_STAGES)

    return sorted(timings.items(), key=lambda item: position(item[0]))


def cmd_runs(args: argparse.Namespace) -> int:
    if args.run is not None and not args.run.strip():  # an empty prefix matched every run: the list, not one run
        raise ConfigError("--run needs a run id (or its first characters); `recforge runs` lists them")
    store = _published_store(args.db_url)
    if args.run:
        try:
            found = store.latest_runs(limit=2, run_id_prefix=args.run)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if len(found) != 1:
            problem = "no run" if found.empty else "more than one run"
            raise ConfigError(
                f"{problem} in {store.url_masked} has an id starting {args.run!r}; `recforge runs` lists them"
            )
        run = found.iloc[0]
        k = run["parameters"].get("k") if isinstance(run["parameters"], dict) else None
        print(_run_details(run, store.metrics_for_run(str(run["run_id"])), k))
        return 0
    try:
        runs = store.latest_runs(limit=args.limit, status=args.status)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if runs.empty:
        which = f"{args.status} runs" if args.status else "runs"
        print(f"no {which} in {store.url_masked}", file=sys.stderr)
        return 1
    print(_runs_table(runs))
    return 0


def _runs_table(runs: Any) -> str:
    import pandas as pd

    seconds = (runs["finished_at"] - runs["started_at"]).dt.total_seconds()
    table = pd.DataFrame(
        {
            "started (UTC)": runs["started_at"].dt.strftime("%Y-%m-%d %H:%M:%S"),
            "run_id": runs["run_id"].str.slice(0, 8),
            "dataset": runs["dataset"],
            "as_of": runs["as_of"].dt.strftime("%Y-%m-%d %H:%M"),
            "status": runs["status"],
            "seconds": [("" if pd.isna(v) else f"{v:.1f}") for v in seconds],
            "champion": [_text(c) for c in runs["champion"]],
            # The first line of the error, shortened: `recforge runs --run ID` shows it whole.
            "error": [_first_line(e, 70) for e in runs["error"]],
        }
    )
    # Left-aligned text with the error last (pandas right-aligns every column, which scatters short errors).
    widths = {name: max(len(name), *(len(v) for v in table[name])) for name in table.columns}
    rows = [list(table.columns), *table.itertuples(index=False)]
    return "\n".join(
        "  ".join(str(v).ljust(widths[c]) for c, v in zip(table.columns, row, strict=True)).rstrip() for row in rows
    )


def _text(value: Any, missing: str = "") -> str:
    """A runs-table cell as text; NULL (None or NaN, as pandas reads it) as ``missing``."""
    return value if isinstance(value, str) and value else missing


def _first_line(text: Any, width: int) -> str:
    lines = _text(text).strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def _run_details(run: Any, metrics: Any, k: int | None = None) -> str:
    import json

    import pandas as pd

    lines = [f"run {run['run_id']}: {run['status']}"]
    for label, key in (("flow run", "flow_run_id"), ("dataset", "dataset"), ("source", "source"), ("as_of", "as_of")):
        lines.append(f"  {label + ':':<11}{run[key] if key == 'as_of' else _text(run[key], '-')}")
    started, ended = run["started_at"], run["finished_at"]
    finished = "" if pd.isna(ended) else f" → {ended:%H:%M:%S} ({(ended - started).total_seconds():.1f} s)"
    lines.append(
        f"  {'ran:':<11}{started:%Y-%m-%d %H:%M:%S} UTC{finished} on {_text(run['host'], '?')} "
        f"({_text(run['process'], '?')})"
    )
    lines.append(f"  {'champion:':<11}{_text(run['champion'], '-')}")
    if run["timings"]:
        lines.append("  stages (s): " + ", ".join(f"{stage} {s:.1f}" for stage, s in _in_stage_order(run["timings"])))
    lines.append("  parameters: " + json.dumps(run["parameters"], sort_keys=True, default=str))
    if _text(run["error"]):
        lines.append("  error:")
        lines.extend(f"    {line}" for line in _text(run["error"]).splitlines())
    board = _metrics_board(metrics, k)
    if board is not None:
        lines.append(f"Metrics ({board.attrs['split']}):")
        lines.append(board.reset_index().to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return "\n".join(lines)


#: The leaderboard's column order; other metrics follow alphabetically.
_BOARD_ORDER = ("ndcg", "precision", "recall", "map", "mrr", "hit_rate", "coverage", "novelty", "ild", "gini")


def _metrics_board(metrics: Any, k: int | None = None) -> Any:
    """Model × metric of the run's main protocol at its cut-off ``k`` (every cut-off when unknown), best first.

    Leaves out the per-group, rating, timing and interval rows.
    """
    import pandas as pd

    at_k = (metrics["k"] == k).fillna(False)  # k is NULL for rating metrics (NA in a nullable column)
    if k is not None and at_k.any():
        metrics = metrics[at_k]
    main = metrics[
        ~metrics["split"].str.contains(":")
        & ~metrics["split"].isin(["timing", "random_80_20"])
        & ~metrics["metric"].str.endswith(("_ci_low", "_ci_high"))
    ]
    if main.empty:
        return None
    split = str(main["split"].iloc[0])
    main = main[main["split"] == split]
    names = [m if pd.isna(cut) else f"{m}@{cut}" for m, cut in zip(main["metric"], main["k"], strict=True)]
    board = main.assign(name=names).pivot_table(index="model", columns="name", values="value", aggfunc="first")
    rank = {m: i for i, m in enumerate(_BOARD_ORDER)}
    board = board[sorted(board.columns, key=lambda c: (rank.get(c.split("@")[0], len(rank)), c))]
    ndcg = [c for c in board.columns if c.startswith("ndcg@")]
    if ndcg:
        board = board.sort_values(ndcg[0], ascending=False)
    board.columns.name = None
    board.attrs["split"] = split
    return board


def cmd_recommendations(args: argparse.Namespace) -> int:
    store = _published_store(args.db_url)
    user = _stored_user(args)
    frame = store.read_recommendations(user, model=args.model, as_of=args.as_of, limit=args.limit)
    if frame.empty:
        print(_why_no_recommendations(store, args, user), file=sys.stderr)
        return 1
    shown = ["as_of", "model", "user_id", "rank", "item_id", "score", "run_id"]
    if args.explain:
        frame = frame.assign(strategy=frame["strategy"].fillna("-"), reason=frame["reason"].fillna("-"))
        shown += ["strategy", "reason"]
    print(frame[shown].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _why_no_recommendations(store: Store, args: argparse.Namespace, user: str) -> str:
    """The empty answer explained: nothing published, an as_of or model never published, or an unknown user."""
    import pandas as pd

    which = f"model {args.model!r}" if args.model else "the champion model"
    start = f"no recommendations from {which} for user {args.user!r} in {store.url_masked}"
    if user in store.erased_users():  # as stored: the pseudonym when the runs pseudonymise ids
        return f"{start}: this user was erased (`recforge forget`; table erasures), and later runs leave them out"
    published = store.publications()
    if published.empty:
        return f"{start}: nothing is published there yet; run `recforge run` first"
    models = sorted(set(published["model"]))
    if args.model and args.model not in models:
        return f"{start}: {args.model!r} was never published; published models: {', '.join(models)}"
    dates = published if not args.model else published[published["model"] == args.model]
    if args.as_of is not None:
        at = dates[dates["as_of"] == pd.Timestamp(args.as_of)]
        if at.empty:
            shown = ", ".join(str(d) for d in dates["as_of"].drop_duplicates().head(5))
            return f"{start}: nothing was published for as_of {args.as_of}; the latest published: {shown}"
        if not args.model and not at["champion"].any():
            return (
                f"{start}: as_of {args.as_of} has no champion (its models: {', '.join(at['model'])}); "
                "name one with --model"
            )
    elif not args.model:
        champions = published[published["champion"].astype(bool)]
        if champions.empty:
            return (
                f"{start}: no run has chosen a champion yet (the guard rails rejected every model: see `recforge "
                f"runs --run ID`); name a published model with --model: {', '.join(models)}"
            )
        served = champions.iloc[0]  # newest first: what the champion view serves
        return (
            f"{start}: check the user id (as in the source data){_pseudonym_hint(store, args)}; the champion view "
            f"serves {served['model']} as of {served['as_of']}"
        )
    return f"{start}: check the user id (as in the source data){_pseudonym_hint(store, args)}"


def _pseudonymises(run: dict[str, Any]) -> bool:
    """Whether a run record (a row of ``Store.latest_runs``) pseudonymised user ids."""
    return bool(((run["parameters"] or {}).get("privacy") or {}).get("pseudonymise_users"))


def _pseudonym_hint(store: Store, args: argparse.Namespace) -> str:
    """ ", or add --pseudonymised" when the latest published run pseudonymised ids and the lookup used the raw id."""
    if args.pseudonymised:
        return ""
    runs = store.latest_runs(limit=20).to_dict(orient="records")
    published = [r for r in runs if r["status"] in ("completed", "partial")]
    if published and _pseudonymises(published[0]):
        return ", or add --pseudonymised: the runs there pseudonymise user ids, so the tables hold pseudonyms"
    return ""


def cmd_prune(args: argparse.Namespace) -> int:
    store = _published_store(args.db_url, upgrade=not args.dry_run)
    before = args.before if args.before is not None else datetime.now(UTC) - timedelta(days=args.keep_days)
    result = store.prune(before, dry_run=args.dry_run)
    cut = f"before {result.before:%Y-%m-%d %H:%M:%S} UTC"
    if result.dates:
        span = f"{result.dates[0]:%Y-%m-%d %H:%M}" + (
            f" to {result.dates[-1]:%Y-%m-%d %H:%M}" if len(result.dates) > 1 else ""
        )
        print(
            f"{'would delete' if args.dry_run else 'deleted'} {len(result.dates)} published date(s) {cut} ({span} "
            f"UTC) in {store.url_masked}: {result.rows['recommendations']} recommendation and "
            f"{result.rows['features']} feature rows, with their champions; run records and metrics stay"
        )
    else:
        print(f"no published date {cut} in {store.url_masked} to delete")
    if result.kept_served is not None:
        print(
            f"kept {result.kept_served:%Y-%m-%d %H:%M} UTC, older but the date the champion view serves (the latest "
            "with a champion), so readers keep their recommendations"
        )
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from recforge.data.contract import DataError
    from recforge.privacy import PrivacyConfig, pseudonym_key, pseudonymise_id
    from tasks.caching import purge_cached_results

    if not str(args.user).strip():
        # An erasure of "" matches nobody, yet would be recorded for good and reported as done.
        print("recforge: forget needs a user id; got an empty one", file=sys.stderr)
        return 2
    store = _published_store(args.db_url, upgrade=True)

    try:
        key: bytes | None = pseudonym_key(PrivacyConfig())
    except DataError as exc:
        if args.pseudonymised:
            print(f"recforge: --pseudonymised needs the key: {exc}", file=sys.stderr)
            return 2
        key = None

    def stored_forms(user: str) -> dict[str, str]:
        # Every form the tables may hold: the raw id (runs without pseudonymisation, before or after), and its
        # pseudonym whenever the key is at hand. One form only left the other's rows readable, and a run with the
        # other setting published the user again (the erasures matched one form).
        forms = {"the id itself": user}
        if key is not None:
            forms["its pseudonym"] = pseudonymise_id(user, key)
        return forms

    forms = stored_forms(str(args.user))
    padded = str(args.user) != str(args.user).strip()

    def published(user_forms: dict[str, str]) -> bool:
        return any(any(store.user_row_counts(form).values()) for form in user_forms.values())

    if padded and not published(forms) and published(stored_forms(str(args.user).strip())):
        # A pasted id with a space: its erasure was recorded for good, matching nobody, and the user's rows stayed.
        print(
            f"recforge: no published rows hold {args.user!r}, which begins or ends with spaces, but "
            f"{str(args.user).strip()!r} has some: did you mean it? Nothing was erased.",
            file=sys.stderr,
        )
        return 2
    deleted = {"recommendations": 0, "features": 0}
    for form in forms.values():
        for table, rows in store.forget_user(form, note=args.note).items():
            deleted[table] += rows
    found = (
        f"deleted {deleted['recommendations']} recommendation and {deleted['features']} feature rows"
        if any(deleted.values())
        else "no published rows of this user were found (check the id if you expected some"
        + (
            f"; it begins or ends with spaces, which ids read from CSV files never do: did you mean "
            f"{str(args.user).strip()!r}?)"
            if padded
            else ")"
        )
    )
    print(
        f"forgot user {args.user!r} ({' and '.join(forms)}) in {store.url_masked}: {found}; recorded in table "
        "erasures, so later runs drop this user's events and no model trained from now on contains them."
    )
    pseudonymising = any(_pseudonymises(run) for run in store.latest_runs(limit=50).to_dict(orient="records"))
    missing_pseudonym = "its pseudonym" not in forms and pseudonymising
    if missing_pseudonym:
        print(
            f"recforge: runs in {store.url_masked} pseudonymise user ids, and without $RECFORGE_PSEUDONYM_KEY the "
            f"pseudonym of {args.user!r} cannot be computed: its rows from those runs are still there. Set the key "
            "and run forget again.",
            file=sys.stderr,
        )
    # Cached ingest/validate/prepare results hold every user's events: the next run recomputes them without this one.
    purged = purge_cached_results()
    print(
        f"deleted {purged.deleted} cached stage result(s) under {purged.folder} (they held the user's events; the "
        "next run recomputes them). Clear them on every other machine whose Prefect home runs recforge too."
    )
    if purged.unreachable:
        print(f"warning: {purged.unreachable}")
    return 2 if missing_pseudonym else 0


def cmd_models(args: argparse.Namespace) -> int:
    from recmodels.registry import DEFAULT_MODELS, get_model_class, model_names

    if args.params is not None:
        # Names as --models takes them too ("als,item_knn"), besides one per argument.
        names = [name.strip() for value in args.params for name in value.split(",") if name.strip()]
        return _print_hyperparameters(names or model_names())
    print(f"{'model':<16} {'family':<26} {'predicts ratings':<17} {'needs ratings':<14} default")
    for name in model_names():
        cls = get_model_class(name)
        predicts = "yes" if cls.predicts_ratings else "no"
        needs = "yes" if cls.requires_ratings else "no"
        print(f"{name:<16} {cls.family:<26} {predicts:<17} {needs:<14} {'yes' if name in DEFAULT_MODELS else 'no'}")
    print("Models that need ratings are left out of the default set and of --families on data without ratings.")
    return 0


def _print_hyperparameters(names: list[str]) -> int:
    import textwrap

    from recmodels.registry import get_model_class, hyperparameters

    try:
        described = {name: hyperparameters(name) for name in names}
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, fields in described.items():
        print(
            f"{name} ({get_model_class(name).family}): set with --param {name}.FIELD=VALUE or [run.model_params.{name}]"
        )
        for field in fields:
            print(f"  {field.name} = {field.default!r}  ({field.type})")
            print(textwrap.fill(field.doc, width=100, initial_indent="      ", subsequent_indent="      "))
        print()
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.db_url:
        os.environ[DB_URL_ENV] = args.db_url  # by environment, as in `run`: never among the parameters
    from flows.backfill import OUTCOME_COLUMNS, BackfillFailed, as_of_dates, backfill
    from flows.runners import check_dask_scheduler, make_task_runner

    dates = as_of_dates(args.start, args.end, args.step)  # a bad range fails here, before Prefect starts
    # The last date run, as the flow checks: an --end past today is fine when the step never reaches it.
    refuse_future_as_of(dates[-1], "the backfill's last date", "an --end up to today")
    _warn_unused_params(config)
    if args.deployment is None:  # a deployment's runs read their files on its workers, not here
        _refuse_missing_paths(config)
    else:
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():  # a temporary server would start, then hold no deployment at all
            raise ConfigError(
                f"--deployment {args.deployment} runs each date as a run of that deployment on a Prefect server, "
                "and none is configured: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) to the server it "
                "was deployed to, or leave --deployment out to run the dates here"
            )
    make_task_runner(config.task_runner, config.max_workers, config.dask_address)  # so does a bad runner
    if config.task_runner == "dask" and config.dask_address:
        check_dask_scheduler(config.dask_address)
    state = backfill(
        start=args.start,
        end=args.end,
        step=args.step,
        force=args.force,
        config=config,
        concurrency=args.concurrency,
        child_deployment=args.deployment,
        return_state=True,
    )
    result = state.result(raise_on_failure=False)
    if isinstance(result, BackfillFailed):
        records = result.outcomes
    elif isinstance(result, BaseException):
        raise result
    else:
        records = result
    import pandas as pd

    table = pd.DataFrame(records, columns=list(OUTCOME_COLUMNS))
    table["rows"] = table["rows"].astype("Int64")  # a date without a count made the column float: 93900.0
    # Missing champion or error (None, read back as NaN): blank, not "NaN" / "nan".
    table = table.astype(object).where(table.notna(), "")
    errors = table.loc[table["error"].astype(str) != "", ["date", "error"]]
    table["error"] = table["error"].map(lambda e: _first_words(str(e), 81))  # 80 characters and the ellipsis
    print()
    print(f"recforge backfill {args.start} to {args.end} every {args.step} day(s):")
    print(table.to_string(index=False))
    # The table cuts errors short, often right before the fix: each error in full, once, with its dates (errors
    # that differ only by the date's as_of in them are one: a range before the data gave one paragraph a date).
    as_of_free = errors["error"].astype(str).map(lambda e: _AS_OF_TEXT.sub("<as_of>", e))
    for shared, group in errors.groupby(as_of_free, sort=False):
        error = group["error"].iloc[0] if len(group) == 1 else shared
        print(f"\n{', '.join(map(str, group['date']))}: {error}")
    return 1 if isinstance(result, BackfillFailed) else 0


#: An as_of as the pipeline's messages write it (midnight UTC of a backfill date).
_AS_OF_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}T00:00:00\+00:00")


def cmd_deploy(args: argparse.Namespace) -> int:
    from flows.deploy import DEFAULT_PREFECT_FILE, deploy

    return deploy(args.prefect_file or DEFAULT_PREFECT_FILE, names=args.name, store_db_secret=args.store_db_secret)


def _check_schedule(cron: str | None, timezone: str | None) -> None:
    """``--cron`` and ``--timezone`` as Prefect's schedule will take them, refused before anything starts.

    Prefect's schedule refused them later with a raw validation error; and Python's zoneinfo, checked here before,
    accepts names Prefect does not ("posixrules").
    """
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    def accepted(**fields: str) -> bool:
        try:
            CronSchedule(**fields)
        except ValidationError:
            return False
        return True

    if cron is not None and not accepted(cron=cron):
        raise ConfigError(
            f"--cron {cron!r} is not a cron schedule Prefect accepts; use five fields: minute hour day-of-month "
            "month day-of-week, e.g. '30 2 * * *'"
        )
    if timezone is not None and not accepted(cron="0 0 * * *", timezone=timezone):
        raise ConfigError(
            f"--timezone {timezone!r} is not a time zone Prefect accepts; use an IANA name such as Europe/Berlin or UTC"
        )


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.deploy import DEFAULT_PREFECT_FILE, serve

    _check_schedule(args.cron, args.timezone)
    serve(args.prefect_file or DEFAULT_PREFECT_FILE, cron=args.cron, timezone=args.timezone, db_secret=args.db_secret)
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (docker stop, kill, a cancellation) and SIGHUP end the command by unwinding, as Ctrl-C does, so that what
    runs at exit runs: by default the process just died, and the temporary Prefect server it had started lived on,
    re-parented to init. The flow's own SIGTERM handling comes first: Prefect closes the run as crashed, then
    re-sends the signal to the handler it found, this one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # SIGHUP (the terminal closed) too: the temporary server runs in a session of its own, so only this process's
    # exit stops it.
    caught = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) == signal.SIG_DFL]
    for number in caught:
        signal.signal(number, _exit_on_sigterm)
    try:
        yield
    finally:
        for number in caught:
            signal.signal(number, signal.SIG_DFL)


def main(argv: Sequence[str] | None = None) -> int:
    with _sigterm_unwinds():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    _prefect_defaults()
    tune_malloc()
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "run": cmd_run,
        "backfill": cmd_backfill,
        "deploy": cmd_deploy,
        "serve": cmd_serve,
        "recommendations": cmd_recommendations,
        "forget": cmd_forget,
        "prune": cmd_prune,
        "models": cmd_models,
        "runs": cmd_runs,
    }
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print(f"recforge: {exc}", file=sys.stderr)
        return 2
    except DataError as exc:
        print(f"recforge: data problem: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("recforge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`recforge runs | head`): stop quietly, as other commands do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return 141
    except Exception as exc:  # the flow already logged the traceback; the user gets the reason
        failed = "run failed" if args.command in ("run", "backfill") else f"{args.command} failed"
        print(f"recforge: {failed}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
