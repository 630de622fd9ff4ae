"""Deployments: deploy/prefect.yaml, the database Secret pull step, ``recforge serve``'s deployments, and one
end-to-end run through a real ``prefect server start``, ``recforge deploy``, a process worker and
``prefect deployment run``."""

from __future__ import annotations

import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from flows.deploy import (
    DB_SECRET_BLOCK,
    DEFAULT_PREFECT_FILE,
    deploy,
    load_deployments,
    runner_deployments,
)
from recforge.config import DB_URL_ENV, ConfigError, build_config
from recforge.data.synthetic import generate_synthetic

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_prefect_yaml_describes_nightly_and_manual_backfill() -> None:
    specs = load_deployments(DEFAULT_PREFECT_FILE)
    assert set(specs) == {"nightly", "manual"}
    nightly, manual = specs["nightly"], specs["manual"]
    assert nightly.entrypoint == "flows/recommend.py:recommend"
    assert manual.entrypoint == "flows/backfill.py:backfill"
    assert nightly.schedules == [{"cron": "0 3 * * *", "timezone": "UTC", "active": True}]
    assert manual.schedules == []
    assert nightly.work_pool == manual.work_pool == "recforge-process"
    # The anchors give both deployments the same run configuration, and it is a valid one.
    assert nightly.parameters["config"] == manual.parameters["config"]
    config = build_config(nightly.parameters["config"])
    assert config.as_of is None and config.source == {"kind": "synthetic"}
    # Every parameter the backfill deployment sets is a parameter of the backfill flow.
    from flows.backfill import backfill

    assert set(manual.parameters) <= set(inspect.signature(backfill.fn).parameters)
    assert manual.parameters["child_deployment"] == "recommend/nightly"


def test_prefect_yaml_keeps_the_database_url_out() -> None:
    text = DEFAULT_PREFECT_FILE.read_text()
    document = yaml.safe_load(text)
    assert "://" not in text.replace("https://", "")  # no inline SQLAlchemy URL anywhere
    steps = [next(iter(step)) for step in document["pull"]]
    assert steps == ["prefect.deployments.steps.set_working_directory", "flows.deploy.use_database_secret"]
    assert document["pull"][1]["flows.deploy.use_database_secret"] == {"block": DB_SECRET_BLOCK}


def test_compose_gives_each_service_only_its_own_database_password() -> None:
    compose = yaml.safe_load((REPO_ROOT / "deploy" / "docker-compose.yml").read_text())
    services = compose["services"]
    text = {name: json.dumps(service) for name, service in services.items()}
    # The Prefect server logged in as the superuser that also owned the recforge database, with the same password.
    assert [n for n, t in text.items() if "RECFORGE_DB_PASSWORD" in t] == ["postgres", "deploy"]
    assert [n for n, t in text.items() if "PREFECT_DB_PASSWORD" in t] == ["postgres", "prefect-server"]
    assert [n for n, t in text.items() if "POSTGRES_PASSWORD" in t] == ["postgres"]
    assert "//prefect:${PREFECT_DB_PASSWORD" in text["prefect-server"]
    assert "//recforge:${RECFORGE_DB_PASSWORD" in text["deploy"]
    for volume in services["postgres"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            script = REPO_ROOT / "deploy" / source
            assert script.is_file() and os.access(script, os.X_OK), script  # the image runs executable .sh files


def test_compose_roles_cannot_reach_each_others_database() -> None:
    import psycopg

    from tests.pg import SUPERUSER, PostgresCluster, PostgresUnavailable

    # Roles of other names than the compose file's: the test clusters' superuser is itself called recforge.
    roles = {"prefect": "app_prefect", "recforge": "app_recforge"}
    # Passwords with quotes and a semicolon: they reach SQL as psql variables, never spliced into statements.
    passwords = {"app_prefect": "pre'fect pw", "app_recforge": 'rec"forge;DROP ROLE postgres'}
    try:
        cluster = PostgresCluster()
    except PostgresUnavailable as exc:
        pytest.fail(f"PostgreSQL tests cannot run: {exc}", pytrace=False)
    with cluster:
        env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(cluster.port), "PGPASSWORD": cluster.password}
        env |= {"POSTGRES_USER": SUPERUSER, "PREFECT_DB_USER": roles["prefect"], "RECFORGE_DB_USER": roles["recforge"]}
        env |= {"PREFECT_DB_PASSWORD": passwords["app_prefect"], "RECFORGE_DB_PASSWORD": passwords["app_recforge"]}
        script = REPO_ROOT / "deploy" / "postgres-init.sh"
        subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True, text=True, timeout=60)

        def connect(role: str, database: str) -> str:
            info = {**cluster.conninfo(database), "user": role, "password": passwords[role]}
            with psycopg.connect(**info, connect_timeout=10) as conn:
                row = conn.execute("SELECT current_user").fetchone()
                return str(row[0]) if row else ""

        for role in roles.values():
            assert connect(role, role) == role
        for role, other in (("app_prefect", "app_recforge"), ("app_recforge", "app_prefect")):
            with pytest.raises(psycopg.OperationalError, match="does not have CONNECT privilege"):
                connect(role, other)


def test_load_deployments_reports_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_deployments(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("deployments:\n  - name: x\n")
    with pytest.raises(ConfigError, match=r"deployment #1 needs a 'name' and an 'entrypoint'"):
        load_deployments(bad)
    bad.write_text("deployments: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_deployments(bad)


def test_served_deployments_follow_the_file_and_the_overrides() -> None:
    served = {d.name: d for d in runner_deployments(DEFAULT_PREFECT_FILE, cron="30 2 * * *", timezone="Europe/Berlin")}
    assert set(served) == {"nightly", "manual"}
    nightly = served["nightly"]
    assert [(s.schedule.cron, s.schedule.timezone) for s in nightly.schedules] == [("30 2 * * *", "Europe/Berlin")]
    assert nightly.parameters["config"]["source"] == {"kind": "synthetic"}
    assert "nightly" in nightly.tags
    assert not served["manual"].schedules
    default = {d.name: d for d in runner_deployments(DEFAULT_PREFECT_FILE)}
    assert default["nightly"].schedules[0].schedule.cron == "0 3 * * *"


def test_deploy_and_serve_need_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.deploy import serve

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(ConfigError, match="PREFECT_API_URL"):
        deploy(DEFAULT_PREFECT_FILE)
    # serve went on with a temporary server of its own, printing deployments nothing outside could reach.
    with pytest.raises(ConfigError, match=r"recforge serve needs a Prefect server that outlives this process"):
        serve(DEFAULT_PREFECT_FILE)
    # A misspelt deployment is refused before anything is created on the server.
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with pytest.raises(ConfigError, match=r"no deployment named \['recommend/nightlly'\]"):
        deploy(DEFAULT_PREFECT_FILE, names=["recommend/nightlly"])


@pytest.mark.usefixtures("prefect_harness")
def test_database_secret_pull_step(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.deploy import load_database_secret, store_database_secret, use_database_secret

    monkeypatch.delenv(DB_URL_ENV, raising=False)
    with pytest.raises(ConfigError, match="Secret block 'recforge-test-missing' does not exist"):
        use_database_secret("recforge-test-missing")
    url = "postgresql+psycopg://recforge:s3cret@db.example/recforge"
    store_database_secret(url, block="recforge-test-db")
    assert load_database_secret("recforge-test-db") == url
    output = use_database_secret("recforge-test-db")
    assert os.environ[DB_URL_ENV] == url
    assert "s3cret" not in json.dumps(output) and "***" in output["database"]
    # A URL the worker already has in its environment wins over the block.
    monkeypatch.setenv(DB_URL_ENV, "sqlite:///worker.db")
    assert use_database_secret("recforge-test-db")["from"] == f"${DB_URL_ENV}"
    assert os.environ[DB_URL_ENV] == "sqlite:///worker.db"


# -- a real server, worker and deployment ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[Any]) -> None:
    """Stop a process and everything it started (it leads its own process group)."""
    if process.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_healthy(api_url: str, server: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"prefect server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"prefect server did not answer {api_url}/health within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def _run(command: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run a command to completion in its own process group (all of it is stopped on a time-out)."""
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop(process)
        pytest.fail(f"{' '.join(command[:4])} … did not finish within {timeout_s:.0f} s")
    if process.returncode != 0:
        pytest.fail(f"{' '.join(command[:4])} … exited {process.returncode}:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``prefect server start`` on a free local port with its own PREFECT_HOME; stopped afterwards."""
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k not in (DB_URL_ENV, "PREFECT_API_URL")}
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": api_url,
        # The worker asks for due runs every 2 s instead of 15 s.
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started: list[subprocess.Popen[Any]] = [server]
    try:
        _wait_healthy(api_url, server, log, timeout_s=180)
        yield {"env": env, "api_url": api_url, "processes": started, "tmp": tmp_path}
    finally:
        for process in reversed(started):
            _stop(process)


def _deployment_run(name: str) -> list[str]:
    return [str(BIN / "prefect"), "deployment", "run", name]


def _table(url: str, query: str) -> pd.DataFrame:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return pd.read_sql(sa.text(query), conn)
    finally:
        engine.dispose()


@pytest.mark.server
@pytest.mark.timeout(600)
def test_deployed_nightly_and_backfill_run_on_a_process_worker(prefect_server: dict[str, Any]) -> None:
    env, tmp = prefect_server["env"], prefect_server["tmp"]
    db_url = f"sqlite:///{tmp / 'published.db'}"

    # `recforge deploy` stores the URL as the Secret block, creates the pool and deploys both deployments.
    deployed = _run([str(BIN / "recforge"), "deploy", "--store-db-secret"], env | {DB_URL_ENV: db_url}, 300)
    assert "created process work pool 'recforge-process'" in deployed.stdout
    listed = _run([str(BIN / "prefect"), "deployment", "ls"], env, 60).stdout
    assert "recommend/nightly" in listed and "backfill/manual" in listed
    assert "published.db" not in listed

    worker_log = tmp / "worker.log"
    with worker_log.open("wb") as out:
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "recforge-process", "--type", "process"],
            cwd=tmp,  # not the checkout: the deployment's pull step must find the code by itself
            env=env,  # no RECFORGE_DB_URL: the run must take it from the Secret block
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    prefect_server["processes"].append(worker)

    config = {
        "source": {"kind": "synthetic", "synthetic_users": 120, "synthetic_items": 80, "synthetic_events": 3000},
        "as_of": "2024-05-01T00:00:00Z",
        "models": ["popularity", "item_knn"],
        "top_n": 5,
        "output_dir": str(tmp / "var"),
    }
    # Both deployments at once (the worker runs them side by side): recommend/nightly for 2024-05-01, and
    # backfill/manual for the single date 2024-04-01, which it runs as a child run of recommend/nightly.
    backfill = {"start": "2024-04-01", "end": "2024-04-01", "config": config}
    watches = [
        subprocess.Popen(
            [*_deployment_run(name), "--params", json.dumps(params), "--watch", "--watch-timeout", "300"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for name, params in (("recommend/nightly", {"config": config}), ("backfill/manual", backfill))
    ]
    prefect_server["processes"].extend(watches)
    for watch in watches:
        output, _ = watch.communicate(timeout=360)  # on a time-out the fixture stops every process group
        assert watch.returncode == 0, f"{output[-2000:]}\nworker:\n{worker_log.read_text()[-4000:]}"

    runs = _table(db_url, "SELECT status, as_of, flow_run_id, parameters FROM runs ORDER BY as_of DESC")
    assert runs["status"].tolist() == ["completed", "completed"]
    assert [str(a)[:10] for a in runs["as_of"]] == ["2024-05-01", "2024-04-01"]
    assert runs["flow_run_id"].notna().all()
    assert {json.loads(p)["top_n"] for p in runs["parameters"]} == {5}
    recs = _table(db_url, "SELECT substr(as_of, 1, 10) AS day, model, user_id, rank FROM recommendations")
    for day, published in recs.groupby("day"):
        assert set(published["model"]) == {"popularity", "item_knn"}, day
        per_user = published.groupby(["model", "user_id"])["rank"].agg(["count", "max"])
        assert (per_user["count"] == 5).all() and (per_user["max"] == 5).all()
    # Each date ranks the users who had joined by then (108 of the 120 by May, 88 by April): the users table is
    # today's, and users whose first event is later are not in a past date's catalogue.
    source = config["source"]
    events = generate_synthetic(
        n_users=source["synthetic_users"], n_items=source["synthetic_items"], n_events=source["synthetic_events"]
    )
    stamps = events.interactions["timestamp"]
    users = recs.groupby("day")["user_id"].nunique()
    for day in ("2024-05-01", "2024-04-01"):
        joined = events.interactions.loc[stamps < pd.Timestamp(day, tz="UTC"), "user_id"].nunique()
        assert users[day] == joined, day

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server["api_url"]}), get_client(sync_client=True) as client:
        child = client.read_flow_run(runs["flow_run_id"].iloc[1])  # the 2024-04-01 run
        assert child.parent_task_run_id is not None  # started by the backfill's task for that date
        assert client.read_deployment(child.deployment_id).name == "nightly"
        tables = [a for a in client.read_latest_artifacts() if a.key == "backfill"]
        assert len(tables) == 1
        rows = json.loads(tables[0].data) if isinstance(tables[0].data, str) else tables[0].data
        april = int((recs["day"] == "2024-04-01").sum())
        assert [(r["date"], r["status"], r["rows"]) for r in rows] == [("2024-04-01", "completed", april)]
