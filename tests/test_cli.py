"""Command-line parsing and error messages: bad options get a clear message and exit code 2, never a traceback."""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pytest

from flows.cli import build_parser, config_from_args, main
from recforge.config import ConfigError, RunConfig, build_config, load_toml, resolve_db_url


def _config(argv: list[str]) -> RunConfig:
    return config_from_args(build_parser().parse_args(["run", *argv]))


def test_defaults_are_the_synthetic_nightly_run() -> None:
    config = _config([])
    assert config.source == {"kind": "synthetic"}
    assert config.model_list() and config.top_n == 50 and config.k == 10 and config.task_runner == "thread"


@pytest.mark.parametrize(
    ("argv", "taken_as"),
    [(["run", "--source", "csv"], "--source-url"), (["runs", "--db", "sqlite:///x.db"], "--db-url")],
)
def test_option_prefixes_are_not_taken_for_longer_options(
    argv: list[str], taken_as: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse's prefix matching turned `--source csv` (meaning the kind) into `--source-url csv`, which then failed
    # with an error about SQL tables; an option must be spelt out.
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert f"unrecognized arguments: {' '.join(argv[1:])}" in capsys.readouterr().err
    assert taken_as.startswith(argv[1])


def test_flags_build_the_source_and_options() -> None:
    config = _config(
        [
            "--dataset", "csv", "--interactions", "e.csv", "--columns", "user_id=customer,item_id=sku",
            "--rating-range", "1,10", "--models", "item_knn,popularity", "--as-of", "1998-03-01",
            "--top-n", "7", "--task-runner", "dask",
        ]
    )  # fmt: skip
    assert config.source == {
        "kind": "csv",
        "interactions": "e.csv",
        "columns": {"user_id": "customer", "item_id": "sku"},
        "rating_range": "1,10",
    }
    assert config.models == ["item_knn", "popularity"]
    assert config.as_of == datetime(1998, 3, 1, tzinfo=UTC)
    assert config.top_n == 7 and config.task_runner == "dask"


def test_headerless_side_files_and_encoding_flags_reach_the_source() -> None:
    config = _config(
        [
            "--interactions", "ratings.dat", "--sep", "::", "--names", "user_id,item_id,rating,timestamp",
            "--users", "users.dat", "--user-names", "user_id,gender", "--items", "movies.dat",
            "--item-names", "item_id,title,genres", "--encoding", "latin-1",
        ]
    )  # fmt: skip
    source = config.source
    assert source["user_names"] == "user_id,gender" and source["item_names"] == "item_id,title,genres"
    assert source["encoding"] == "latin-1" and source["kind"] == "csv"


def test_families_select_every_model_of_a_family() -> None:
    assert _config(["--families", "baseline"]).model_list() == ["popularity", "ease"]
    both = _config(["--families", "collaborative_filtering", "--models", "popularity"]).model_list()
    assert both[0] == "popularity" and "item_knn" in both


def test_models_that_need_ratings_are_left_out_only_when_not_named() -> None:
    from recmodels.registry import DEFAULT_MODELS

    default = _config([])
    assert default.models_for_data(has_ratings=True) == (list(DEFAULT_MODELS), {})
    kept, skipped = default.models_for_data(has_ratings=False)
    assert set(skipped) == {"biased_mf", "nmf"} and kept == [m for m in DEFAULT_MODELS if m not in skipped]
    named = _config(["--families", "matrix_factorization", "--models", "nmf"])
    kept, skipped = named.models_for_data(has_ratings=False)
    assert "nmf" in kept and set(skipped) == {"biased_mf"}


def test_kind_is_inferred_from_the_inputs() -> None:
    assert _config(["--interactions", "e.parquet"]).source["kind"] == "parquet"
    assert _config(["--interactions", "e.tsv"]).source["kind"] == "csv"
    assert _config(["--source-url", "sqlite:///x.db", "--table", "t"]).source["kind"] == "sql"
    assert _config(["--source-url", "https://mirror.example/ml-100k.zip"]).source["kind"] == "movielens-100k"


def test_toml_config_with_flag_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        '[run]\nmodels = ["popularity"]\ntop_n = 20\ndb_url = "sqlite:///x.db"\n'
        '[run.source]\nkind = "csv"\ninteractions = "a.csv"\ncolumns = { user_id = "u" }\n'
    )
    args = build_parser().parse_args(["run", "--config", str(path), "--top-n", "5"])
    config = config_from_args(args)
    assert config.models == ["popularity"] and config.top_n == 5
    assert config.source == {"kind": "csv", "interactions": "a.csv", "columns": {"user_id": "u"}}
    assert args.db_url == "sqlite:///x.db"  # taken out of the flow parameters
    assert "db_url" not in config.model_dump()


def test_model_params_from_toml_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        '[run]\nmodels = ["als", "gru4rec"]\n'
        "[run.model_params.als]\nfactors = 32\nregularization = 5\n"
        '[run.model_params.gru4rec]\nmax_len = "none"\nnegatives = 512\n'  # TOML has no null: "none"
    )
    argv = ["run", "--config", str(path), "--param", "als.factors=16", "--param", "gru4rec.negatives=null"]
    argv += ["--param", "item_knn.weighting=bm25", "--param", "caser.horizon=3", "--param", "bpr.learning_rate=0.1"]
    config = config_from_args(build_parser().parse_args(argv))
    # Flags win field by field over the file; values come out as the fields' types.
    assert config.model_params == {
        "als": {"factors": 16, "regularization": 5.0},
        "gru4rec": {"max_len": None, "negatives": None},
        "item_knn": {"weighting": "bm25"},
        "caser": {"horizon": 3},
        "bpr": {"learning_rate": 0.1},
    }
    assert isinstance(config.model_params["als"]["regularization"], float)
    # Plain text that is a number is converted by the field's type; the run record keeps the converted value.
    assert build_config({"model_params": {"als": {"factors": "8"}}}).model_params == {"als": {"factors": 8}}
    assert RunConfig(model_params={"als": {"factors": 8}}).recorded_parameters()["model_params"] == {
        "als": {"factors": 8}
    }


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"alz": {"factors": 8}}, "unknown model 'alz'; choose from"),
        ({"als": {"factor": 8}}, "als has no hyperparameter 'factor' (did you mean 'factors'?)"),
        ({"als": {"factors": 0}}, "als: factors must be ≥ 1, got 0"),
        ({"als": {"factors": 1.5}}, "als: factors: Input should be a valid integer"),
        ({"item_knn": {"weighting": "bm26"}}, "item_knn: weighting: Input should be 'none', 'bm25' or 'tfidf'"),
        ({"bpr": {"learning_rate": "fast"}}, "bpr: learning_rate: Input should be a valid number"),
        ({"ease": {"regularization": "none"}}, "ease: regularization: Input should be a valid number"),
        # Read as 1 before: `--param als.factors=true` trained one factor.
        ({"als": {"factors": True}}, "als: factors: takes int, got True"),
        ({"als": {"regularization": False}}, "als: regularization: takes float, got False"),
    ],
)
def test_bad_model_params_name_the_model_and_field(params: dict[str, dict[str, object]], message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        build_config({"model_params": params})
    assert message in str(excinfo.value) and "Value error" not in str(excinfo.value)


def test_a_dask_address_without_the_dask_runner_is_refused() -> None:
    # It was ignored: the run trained on threads while the user thought their cluster did.
    with pytest.raises(ConfigError, match=r"dask_address 'tcp://sched:8786' is used only by the dask task runner"):
        _config(["--dask-address", "tcp://sched:8786"])
    assert _config(["--task-runner", "dask", "--dask-address", "tcp://sched:8786"]).dask_address == "tcp://sched:8786"


def test_models_command_shows_hyperparameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--params", "als"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("als (matrix_factorization): set with --param als.FIELD=VALUE or [run.model_params.als]")
    assert "  factors = 64  (int)\n      latent dimensions per user and item." in out
    assert main(["models", "--params"]) == 0  # every model
    out = capsys.readouterr().out
    assert "gru4rec (neural)" in out and "  negatives = None  (int | None)" in out
    assert main(["models", "--params", "als,item_knn"]) == 0  # as --models takes them
    out = capsys.readouterr().out
    assert "als (" in out and "item_knn (" in out
    assert main(["models", "--params", "alz"]) == 2
    assert "unknown model 'alz'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--models", "popularity,nope"], "unknown model 'nope'; choose from"),
        (["run", "--param", "als.factor=8"], "did you mean 'factors'?"),
        (["run", "--seed", "-1"], "seed: Input should be greater than or equal to 0"),
        (["run", "--as-of", "2999-01-01"], "--as-of 2999-01-01T00:00:00+00:00 is in the future"),
        (["backfill", "--start", "2998-12-30", "--end", "2999-01-01"], "last date 2999-01-01T00:00:00+00:00 is in the"),
        (["run", "--models", ","], "models is empty"),
        (["run", "--families", "quantum"], "choose from"),
        (["run", "--dataset", "csv"], "needs interactions"),
        (["run", "--dataset", "sql", "--source-url", "sqlite:///x.db"], "exactly one of table"),
        (["run", "--interactions", "x.csv", "--columns", "user_id=a,oops=b"], "oops"),
        (["run", "--rating-range", "5,1"], "min < max"),
        (["run", "--config", "/no/such/file.toml"], "does not exist"),
        # Missing paths, before Prefect starts: a backfill ran (and recorded as failed) every date into them.
        (["run", "--data-dir", "/no/such/dir"], "MovieLens folder /no/such/dir does not exist"),
        (
            ["backfill", "--start", "1998-04-01", "--end", "1998-04-06", "--data-dir", "/no/such/dir"],
            "MovieLens folder /no/such/dir does not exist; pass the folder that holds u.data; check the path options",
        ),
        (["run", "--interactions", "/no/events.csv"], "interactions file /no/events.csv does not exist"),
        (["runs", "--run", ""], "--run needs a run id"),  # an empty prefix listed every run
        (["serve", "--timezone", "Mars/Olympus"], "--timezone 'Mars/Olympus' is not a time zone"),
        # Python's zoneinfo accepts it, Prefect's schedule does not (the check passed, then serve failed raw).
        (["serve", "--timezone", "posixrules"], "--timezone 'posixrules' is not a time zone Prefect accepts"),
        (["serve", "--cron", "61 * * * *"], "--cron '61 * * * *' is not a cron schedule Prefect accepts; use five"),
        (
            ["run", "--task-runner", "dask", "--dask-address", "garbage addr"],
            "--dask-address 'garbage addr' is not a Dask scheduler address",
        ),
        (
            ["run", "--interactions", __file__, "--items", "/no/items.csv"],
            "items file /no/items.csv does not exist (or is not a file)",
        ),
    ],
)
def test_bad_options_give_a_message_not_a_traceback(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("recforge: ") and message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [["run"], ["backfill", "--start", "1998-04-01", "--end", "1998-04-02"]])
def test_hyperparameters_for_a_model_not_in_the_run_are_said_before_any_data_is_read(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Said by the flow only after ingest, validation and preparation before. The bad address stops the command
    # right after the check, before Prefect or any data.
    stop = ["--task-runner", "dask", "--dask-address", "garbage addr"]
    params = ["--param", "bpr.epochs=5", "--param", "als.factors=8"]
    assert main([*command, "--models", "popularity,als", *params, *stop]) == 2
    err = capsys.readouterr().err
    assert "the hyperparameters for bpr are unused: bpr is not among this run's models (popularity, als)" in err
    assert "for als" not in err
    assert main([*command, "--models", "bpr", "--param", "bpr.epochs=5", *stop]) == 2
    assert "unused" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--top-n", "0"],
        ["run", "--as-of", "yesterday"],
        ["run", "--task-runner", "ray"],
        ["run", "--dataset", "oracle"],
        ["run", "--param", "als=8"],
        ["run", "--param", "factors=8"],
        ["frobnicate"],
    ],
)
def test_argparse_rejects_malformed_values(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_process_runner_without_server_explains_the_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["run", "--task-runner", "process"]) == 2
    assert "prefect server start" in capsys.readouterr().err


def test_models_command_lists_families(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "popularity" in out and "baseline" in out and "item_knn" in out and "collaborative_filtering" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.split()}
    assert rows["nmf"][3] == "yes" and rows["item_knn"][3] == "no"  # the "needs ratings" column


def test_toml_errors_and_db_url_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)
    with pytest.raises(ConfigError, match="top_n"):
        build_config({"top_n": 0})
    with pytest.raises(ConfigError, match="colour"):
        build_config({"colour": "blue"})
    monkeypatch.delenv("RECFORGE_DB_URL", raising=False)
    assert resolve_db_url() == "sqlite:///var/recforge.db"
    monkeypatch.setenv("RECFORGE_DB_URL", "sqlite:///env.db")
    assert resolve_db_url() == "sqlite:///env.db"
    assert resolve_db_url("sqlite:///flag.db") == "sqlite:///flag.db"


def test_temporary_server_starts_in_a_thread_and_the_flow_waits_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    import prefect.server.api.server as prefect_server
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import cli

    class FakeServer:
        starts: ClassVar[list[str]] = []
        fail = False

        def __init__(self) -> None:
            self.running = False
            self.address = "http://127.0.0.1:1"

        def start(self) -> None:
            time.sleep(0.3)  # the caller goes on meanwhile
            FakeServer.starts.append(threading.current_thread().name)
            if FakeServer.fail:
                raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")
            self.running = True

    monkeypatch.setattr(prefect_server, "SubprocessASGIServer", FakeServer)
    # A configured API means no temporary server at all.
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        cli._start_temporary_server()()
    assert FakeServer.starts == []
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        started = time.perf_counter()
        wait = cli._start_temporary_server()
        assert time.perf_counter() - started < 0.25 and FakeServer.starts == []  # not waited for yet
        wait()
        assert FakeServer.starts == ["prefect-temporary-server"]
        FakeServer.fail = True  # a failed start is left to the flow call, which starts it again and reports it
        cli._start_temporary_server()()
        assert FakeServer.starts == ["prefect-temporary-server"] * 2


def _store_with_runs(url: str) -> tuple[str, list[str]]:
    import pandas as pd

    from recforge.store import Store

    store = Store(url)
    store.create_schema()
    ids = []
    for day, status in ((1, "completed"), (2, "failed"), (3, "running")):
        run_id = store.start_run(
            dataset="shop",
            source="csv:events.csv",
            as_of=datetime(2024, 3, day, tzinfo=UTC),
            parameters={"models": ["popularity", "item_knn"], "k": 10},
            flow_run_id=None,
        )
        ids.append(run_id)
        if status == "completed":
            metrics = pd.DataFrame(
                {
                    "model": ["popularity", "item_knn", "item_knn", "item_knn", "item_knn", "item_knn"],
                    "metric": ["ndcg", "ndcg", "ndcg_ci_low", "ndcg", "fit_seconds", "ndcg"],
                    "k": [10, 10, 10, 10, None, 5],
                    "value": [0.11, 0.19, 0.18, 0.25, 1.5, 0.3],
                    "split": ["temporal_holdout"] * 3 + ["temporal_holdout:light", "timing", "temporal_holdout"],
                }
            )
            store.write_metrics(run_id, metrics)
            store.finish_run(run_id, status="completed", timings={"ingest": 1.25, "train": 30.0}, champion="item_knn")
        elif status == "failed":
            error = "DataError: events.csv, column 'rating': 2 rating(s) are not numbers\nTraceback line two"
            store.finish_run(run_id, status="failed", timings={"ingest": 0.5}, error=error)
    store.dispose()
    return url, ids


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_runs_command_lists_filters_and_details(
    backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import types
    import uuid

    fixed = iter(uuid.UUID(f"{head}-0000-4000-8000-000000000000") for head in ("aaaa0000", "aaaa1111", "bbbb0000"))
    # Only the store's run ids (the uuid module itself stays: drivers use it too).
    monkeypatch.setattr("recforge.store.uuid", types.SimpleNamespace(uuid4=lambda: next(fixed)))
    db = f"sqlite:///{tmp_path / 'rf.db'}" if backend == "sqlite" else str(request.getfixturevalue("pg_url"))
    url, (done, failed, running) = _store_with_runs(db)
    capsys.readouterr()  # what setting up the server printed
    assert main(["runs", "--db-url", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines[1:]] == [running[:8], failed[:8], done[:8]]  # newest first
    assert "2024-03-02" in lines[2] and "failed" in lines[2] and "column 'rating'" in lines[2]
    assert "Traceback" not in lines[2]  # the first line of the error only
    assert "item_knn" in lines[3] and "completed" in lines[3]

    assert main(["runs", "--db-url", url, "--status", "failed", "--limit", "5"]) == 0
    assert [line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]] == [failed[:8]]
    assert main(["runs", "--db-url", url, "--status", "partial"]) == 1
    assert "no partial runs" in capsys.readouterr().err
    assert main(["runs", "--db-url", url, "--status", "done"]) == 2
    assert "run status must be one of" in capsys.readouterr().err

    assert main(["runs", "--db-url", url, "--run", done[:8]]) == 0
    out = capsys.readouterr().out
    assert f"run {done}: completed" in out and "champion:  item_knn" in out
    assert "stages (s): ingest 1.2, train 30.0" in out and '"k": 10' in out
    board = out.split("Metrics (temporal_holdout):")[1].splitlines()
    assert board[1].split() == ["model", "ndcg@10"]  # the run's cut-off k only
    assert board[2].split() == ["item_knn", "0.1900"] and board[3].split() == ["popularity", "0.1100"]
    assert main(["runs", "--db-url", url, "--run", failed]) == 0
    assert "    Traceback line two" in capsys.readouterr().out  # the whole error
    assert main(["runs", "--db-url", url, "--run", "zz"]) == 2
    assert "not the start of a run id" in capsys.readouterr().err
    assert main(["runs", "--db-url", url, "--run", "AAAA"]) == 2  # both aaaa… runs
    assert "more than one run" in capsys.readouterr().err
    assert main(["runs", "--db-url", url, "--run", "c"]) == 2
    assert "no run in" in capsys.readouterr().err
    assert main(["runs", "--db-url", url, "--run", "BBBB"]) == 0  # case-insensitive
    assert f"run {running}: running" in capsys.readouterr().out


def test_read_commands_explain_a_missing_or_empty_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "typo.db"
    for argv in (["runs"], ["recommendations", "--user", "1"], ["forget", "--user", "1"]):
        assert main([*argv, "--db-url", f"sqlite:///{missing}"]) == 2
        assert f"no database file {missing}" in capsys.readouterr().err
        assert not missing.exists()  # not created empty by looking
    monkeypatch.setenv("RECFORGE_DB_URL", f"sqlite:///{missing}")
    assert main(["runs"]) == 2
    assert "from $RECFORGE_DB_URL" in capsys.readouterr().err

    empty = tmp_path / "empty.db"
    empty.touch()
    assert main(["recommendations", "--user", "1", "--db-url", f"sqlite:///{empty}"]) == 2
    err = capsys.readouterr().err
    assert "holds no recforge tables" in err and "OperationalError" not in err


def test_recommendations_says_when_no_date_has_a_champion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd

    from recforge.store import ChampionDecision, Store

    url = f"sqlite:///{tmp_path / 'rf.db'}"
    store = Store(url)
    store.create_schema()
    first = datetime(2024, 1, 1, tzinfo=UTC)
    run_id = store.start_run(dataset="toy", source="toy", as_of=first, parameters={}, flow_run_id=None)
    rows = pd.DataFrame({"model": "popularity", "user_id": ["u1"], "rank": [1], "item_id": ["i1"], "score": [1.0]})
    store.publish(run_id, first, rows, None)  # the guard rails rejected it: published, not champion
    # Before: "check the user id", though u1 is there and `--model popularity` shows its rows.
    assert main(["recommendations", "--user", "u1", "--db-url", url]) == 1
    err = capsys.readouterr().err
    assert "no run has chosen a champion yet" in err and "name a published model with --model: popularity" in err
    assert main(["recommendations", "--user", "u1", "--model", "popularity", "--db-url", url]) == 0
    capsys.readouterr()
    store.publish(run_id, first, rows, ChampionDecision("popularity", "ndcg@10", 0.1, "test"))
    assert main(["recommendations", "--user", "nobody", "--db-url", url]) == 1
    err = capsys.readouterr().err
    assert "check the user id" in err and "the champion view serves popularity as of 2024-01-01" in err
    store.dispose()


def test_a_reader_that_leaves_early_stops_the_command_quietly() -> None:
    import subprocess

    recforge = Path(sys.executable).with_name("recforge")
    done = subprocess.run(
        f"'{recforge}' models --params | head -n 1", shell=True, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.startswith("popularity (baseline)") and done.stdout.count("\n") == 1
    assert "Broken pipe" not in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_sigterm_unwinds_the_command_so_its_exit_handlers_run(name: str) -> None:
    # Killed by the default action, `recforge run` left its temporary Prefect server running (re-parented to
    # init); unwinding with SystemExit runs the atexit hook that stops it. SIGHUP (the terminal closed) too, now
    # that the server has a session of its own.
    import os
    import signal

    from flows.cli import _sigterm_unwinds

    number = getattr(signal, name)
    assert signal.getsignal(number) == signal.SIG_DFL
    with pytest.raises(SystemExit) as exited, _sigterm_unwinds():
        os.kill(os.getpid(), number)
        time.sleep(5)  # the handler runs at the next bytecode; never reached
    assert exited.value.code == 128 + number
    assert signal.getsignal(number) == signal.SIG_DFL


def test_run_stages_print_in_the_flows_order_and_name_the_failed_one() -> None:
    from flows.cli import _in_stage_order
    from flows.recommend import _stage_after

    stored = {"ingest": 1.0, "prepare (failed)": 0.5, "validate": 2.0}  # as kept: keys sorted
    assert [stage for stage, _ in _in_stage_order(stored)] == ["ingest", "validate", "prepare (failed)"]
    assert _stage_after({"ingest": 1.0, "validate": 2.0}) == "prepare"
    assert _stage_after({}) == "ingest"
    assert _stage_after(dict.fromkeys(("ingest", "validate", "prepare", "train", "publish"), 1.0)) == "finishing"


def test_the_temporary_server_runs_in_a_session_of_its_own() -> None:
    # In the terminal's process group the server died of Ctrl-C with the command, and the flow then retried the dead
    # API for minutes ("ConnectError" after 218 s, where "interrupted" was due).
    import subprocess

    import prefect.server.api.server as server_module

    from flows.cli import _own_session_server_class

    class FakeServer:
        def _run_uvicorn_command(self) -> subprocess.Popen[bytes]:
            return server_module.subprocess.Popen(["sleep", "30"])  # as Prefect's method spawns uvicorn

    process = _own_session_server_class(FakeServer)()._run_uvicorn_command()
    try:
        assert os.getsid(process.pid) == process.pid != os.getsid(0)
        assert server_module.subprocess is subprocess  # the module's name is restored
    finally:
        process.kill()
        process.wait()


def test_a_run_that_published_nothing_says_so_and_suggests_no_lookup(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from flows.cli import _print_run_summary

    summary = {
        "run_id": "r1",
        "dataset": "shop",
        "as_of": "2026-01-01",
        "status": "failed",
        "leaderboard": [],
        "champion": None,
        "champion_reason": None,
        "database": "sqlite:///x.db",
        "rows_written": {},
    }
    _print_run_summary(summary, RunConfig(), argparse.Namespace(db_url=None))
    out = capsys.readouterr().out
    # It said "Champion: None (None)" and "Try: recforge recommendations …" for rows that did not exist.
    assert "Champion: none (no model finished its evaluation)" in out
    assert "Published to sqlite:///x.db: nothing (the tables keep serving what they served before)" in out
    assert "Try:" not in out and "(None)" not in out


def test_a_failed_models_error_is_printed_whole_below_the_leaderboard(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from flows.cli import _print_run_summary

    error = "evaluation timed out: " + "x" * 200
    summary = {
        "run_id": "r1",
        "dataset": "shop",
        "as_of": "2026-01-01",
        "status": "partial",
        "leaderboard": [
            {"model": "popularity", "family": "baseline", "ndcg": 0.1, "seconds": 1.0, "error": None},
            {"model": "bpr", "family": "matrix_factorization", "ndcg": None, "seconds": None, "error": error},
        ],
        "champion": "popularity",
        "champion_reason": "chose popularity",
        "database": "sqlite:///x.db",
        "rows_written": {"recommendations": 10},
    }
    _print_run_summary(summary, RunConfig(), argparse.Namespace(db_url=None))
    out = capsys.readouterr().out
    # The whole error sat in the table, making every row of it hundreds of characters wide.
    table = out[out.index("Leaderboard") : out.index("Failed: ")]
    assert max(len(line) for line in table.splitlines()) < 150
    assert f"Failed: bpr — {error}\n" in out


def test_backfill_on_a_deployment_needs_a_configured_server(capsys: pytest.CaptureFixture[str]) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # A temporary server started, then said the deployment did not exist there and to `recforge deploy` it.
    argv = ["backfill", "--start", "1998-04-01", "--end", "1998-04-02", "--deployment", "recommend/nightly"]
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # other tests' harness may have set one
        assert main(argv) == 2
    assert (
        "--deployment recommend/nightly runs each date as a run of that deployment on a Prefect server, and none"
        in capsys.readouterr().err
    )


def test_prune_command_counts_deletes_and_keeps_the_served_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pandas as pd

    from recforge.store import ChampionDecision, Store

    url = f"sqlite:///{tmp_path / 'rf.db'}"
    store = Store(url)
    store.create_schema()
    for day, champion in ((1, "popularity"), (2, None), (3, None)):
        as_of = datetime(2024, 3, day, tzinfo=UTC)
        run_id = store.start_run(dataset="shop", source="s", as_of=as_of, parameters={}, flow_run_id=None)
        rows = pd.DataFrame({"model": "popularity", "user_id": ["u1", "u2"], "rank": 1, "item_id": "a", "score": 1.0})
        decision = ChampionDecision(champion, "ndcg", 0.1, "r") if champion else None
        store.publish(run_id, as_of, rows, decision)
    store.dispose()

    assert main(["prune", "--before", "2024-03-03", "--dry-run", "--db-url", url]) == 0
    out = capsys.readouterr().out
    assert "would delete 1 published date(s) before 2024-03-03 00:00:00 UTC (2024-03-02 00:00 UTC)" in out, out
    assert "2 recommendation and 0 feature rows" in out
    assert "kept 2024-03-01 00:00 UTC" in out and "champion view serves" in out
    assert Store(url).counts()["recommendations"] == 6
    assert main(["prune", "--keep-days", "1", "--db-url", url]) == 0  # 2024 is long ago: all but the served date
    assert "deleted 2 published date(s)" in capsys.readouterr().out
    assert Store(url).publications()["as_of"].tolist() == [datetime(2024, 3, 1, tzinfo=UTC)]
    assert main(["prune", "--before", "2024-03-02", "--db-url", url]) == 0
    assert "no published date before 2024-03-02 00:00:00 UTC" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["prune", "--db-url", url])  # a cut-off is required: nothing is deleted by default
