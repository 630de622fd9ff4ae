"""A throwaway PostgreSQL cluster for tests and benchmarks, and the pytest fixtures that use it.

``PostgresCluster`` runs Debian's PostgreSQL binaries (``/usr/lib/postgresql/<version>/bin``, or ``pg_ctl`` on
``PATH``): ``initdb`` into a temporary folder, ``pg_ctl start`` on 127.0.0.1 with a free port and its unix
socket in that folder, and ``stop`` + delete at the end. PostgreSQL refuses to run as root, so as root the
cluster runs as the system user ``postgres`` (created by the Debian package) through ``runuser``.

The superuser gets a random password and TCP connections must give it (scram-sha-256), so tests see real
passwords in URLs and can check they are never shown.

Fixtures (registered from ``tests/conftest.py``):

- ``pg_cluster`` (session): the running cluster. Missing binaries FAIL the test rather than skip it: CI must
  exercise PostgreSQL. Install them with ``bash .ci/run`` (which apt-installs ``postgresql``) or
  ``apt-get install -y postgresql``.
- ``pg_url`` (function): a new empty database in that cluster, dropped after the test.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

SUPERUSER = "recforge"
RUN_AS_WHEN_ROOT = "postgres"
INSTALL_HINT = (
    "install PostgreSQL with `bash .ci/run` (it runs `apt-get install -y postgresql`) or "
    "`apt-get update && apt-get install -y postgresql`"
)
# Settings for a disposable test cluster: durability is pointless for data deleted at the end of the run.
FAST_SETTINGS: Mapping[str, str] = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresUnavailable(RuntimeError):
    """PostgreSQL binaries, or the user to run them as, are missing on this machine."""


def find_bin_dir() -> Path:
    """The folder holding ``initdb``/``pg_ctl``: the newest ``/usr/lib/postgresql/*/bin``, else ``PATH``."""
    candidates = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if (Path(p) / "pg_ctl").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1,
    )
    if candidates:
        return candidates[-1]
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    raise PostgresUnavailable(
        f"PostgreSQL binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin or on PATH; {INSTALL_HINT}."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """A PostgreSQL cluster in a temporary folder; use as a context manager (start on enter, remove on exit).

    ``settings`` are extra ``postgresql.conf`` lines (name -> value) on top of the listen address, port and
    socket folder; the default ``FAST_SETTINGS`` turn off durability, pass ``{}`` to keep PostgreSQL's defaults.
    """

    def __init__(self, settings: Mapping[str, str] = FAST_SETTINGS) -> None:
        self.settings = dict(settings)
        self.bin_dir = find_bin_dir()
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self.root: Path | None = None
        self._run_as: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(RUN_AS_WHEN_ROOT)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root, and PostgreSQL refuses to run as root; the system user "
                    f"{RUN_AS_WHEN_ROOT!r} to run it as does not exist; {INSTALL_HINT} (the package creates it)."
                ) from None
            self._run_as = RUN_AS_WHEN_ROOT

    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "cluster not started"
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.root is not None, "cluster not started"
        return self.root / "socket"

    @property
    def log_file(self) -> Path:
        assert self.root is not None, "cluster not started"
        return self.root / "postgres.log"

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        """A SQLAlchemy URL for ``database`` over TCP, with the superuser's password."""
        return f"{driver}://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect``."""
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": SUPERUSER,
            "password": self.password,
            "dbname": database,
        }

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._run_as is not None:
            command = ["runuser", "-u", self._run_as, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:2])} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                f"server log {self.log_file}:\n{log}"
            )
        return result

    def start(self) -> None:
        """initdb, write the settings, start the server and wait until it accepts connections."""
        self.root = Path(tempfile.mkdtemp(prefix="recforge-pg-"))
        self.socket_dir.mkdir()
        password_file = self.root / "pwfile"
        password_file.write_text(self.password + "\n")
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            for path in (self.root, self.socket_dir, password_file):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            f"--pwfile={password_file}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        password_file.unlink()
        last_error: Exception | None = None
        for _ in range(3):  # the free port may be taken by someone else before the server binds it
            self.port = _free_port()
            lines = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(self.port),
                "unix_socket_directories": f"'{self.socket_dir}'",
                **self.settings,
            }
            with (self.data_dir / "postgresql.auto.conf").open("w") as conf:
                conf.writelines(f"{name} = {value}\n" for name, value in lines.items())
            try:
                self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60")
                return
            except RuntimeError as exc:
                last_error = exc
        raise RuntimeError(f"PostgreSQL did not start in {self.root}") from last_error

    def stop(self) -> None:
        """Stop the server (immediate: nothing to keep) and delete its folder."""
        if self.root is None:
            return
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (named ``name`` or a random one); returns its name."""
        import psycopg
        from psycopg import sql

        name = name or f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(**self.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, closing any connection still open to it."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(**self.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def __enter__(self) -> PostgresCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """A running throwaway PostgreSQL cluster for the whole test session; fails (never skips) without it."""
    try:
        cluster = PostgresCluster()
    except PostgresUnavailable as exc:
        pytest.fail(f"PostgreSQL tests cannot run: {exc}", pytrace=False)
    started = time.perf_counter()
    with cluster:
        print(f"\nPostgreSQL cluster up in {time.perf_counter() - started:.1f} s on port {cluster.port}")
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> Iterator[str]:
    """The SQLAlchemy URL (``postgresql+psycopg://``, with password) of a new empty database."""
    name = pg_cluster.create_database()
    yield pg_cluster.url(name)
    pg_cluster.drop_database(name)
