"""Shared fixtures. Prefect settings are fixed here, before any test imports Prefect."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="recforge-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("RECFORGE_DB_URL", None)

# Fixtures pg_cluster (a throwaway PostgreSQL server for the session) and pg_url (a new database per test).
pytest_plugins = ("tests.pg",)

REPO_ROOT = Path(__file__).resolve().parents[1]
ML100K_DIR = REPO_ROOT.parent / "shared" / "data" / "ml-100k"


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The shared MovieLens 100K folder; its absence is a broken environment, not a reason to skip."""
    if not (ML100K_DIR / "u.data").exists():
        pytest.fail(f"MovieLens 100K is missing at {ML100K_DIR}; CI and developer machines must have ../shared")
    return ML100K_DIR


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API for the whole session (starting it takes ~20 s on 2 cores)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
