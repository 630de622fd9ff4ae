"""Deployments of the recforge flows: ``recforge deploy`` (work pool + ``deploy/prefect.yaml``) and ``recforge serve``.

``deploy/prefect.yaml`` is the one description of the deployments: ``recommend/nightly`` (cron schedule) and
``backfill/manual`` (no schedule). ``recforge deploy`` registers them with the Prefect server named by
``PREFECT_API_URL`` for a ``process`` work pool served by ``prefect worker start``; ``recforge serve`` runs the
same two deployments from one long-lived process instead (no work pool, no worker).

The database URL never appears in a deployment: a pull step of each deployment
(:func:`use_database_secret`) loads it from a Prefect Secret block when the flow run starts on the worker and
puts it in ``$RECFORGE_DB_URL`` of that flow-run process only, where the flows read it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recforge.config import DB_URL_ENV, ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PREFECT_FILE = REPO_ROOT / "deploy" / "prefect.yaml"
#: Name of the Secret block that holds the publishing database URL.
DB_SECRET_BLOCK = "recforge-db-url"


@dataclass(frozen=True)
class DeploymentSpec:
    """One entry of ``deployments:`` in a prefect.yaml, as far as ``recforge serve`` needs it."""

    name: str
    entrypoint: str
    parameters: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    description: str | None = None
    # Each schedule as written in the file: {"cron": ..., "timezone": ..., "active": ...}.
    schedules: list[dict[str, Any]] = field(default_factory=list)
    work_pool: str | None = None


def load_deployments(prefect_file: str | Path = DEFAULT_PREFECT_FILE) -> dict[str, DeploymentSpec]:
    """The deployments of a prefect.yaml keyed by deployment name; errors name the file and the bad entry."""
    path = Path(prefect_file)
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; pass --prefect-file or run from a recforge checkout") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    entries = (document or {}).get("deployments")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path} has no 'deployments:' list")
    specs: dict[str, DeploymentSpec] = {}
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("entrypoint"):
            raise ConfigError(f"{path}: deployment #{position + 1} needs a 'name' and an 'entrypoint'")
        specs[entry["name"]] = DeploymentSpec(
            name=entry["name"],
            entrypoint=entry["entrypoint"],
            parameters=dict(entry.get("parameters") or {}),
            tags=list(entry.get("tags") or []),
            description=entry.get("description"),
            schedules=list(entry.get("schedules") or []),
            work_pool=(entry.get("work_pool") or {}).get("name"),
        )
    return specs


# -- database URL from a Secret block -------------------------------------------------------------------------


def use_database_secret(block: str = DB_SECRET_BLOCK, env: str = DB_URL_ENV) -> dict[str, str]:
    """Deployment pull step: put the URL stored in Secret block ``block`` into ``$env`` of this flow run.

    Runs in the flow-run process before the flow starts, so the URL lives only in that process's environment;
    it is never written to the deployment, the run's parameters or the logs (the step returns the masked URL).
    An URL already set in ``$env`` (e.g. a worker started with ``RECFORGE_DB_URL``) wins over the block.
    """
    from recforge.store import mask_url

    if os.environ.get(env):
        return {"database": mask_url(os.environ[env]), "from": f"${env}"}
    os.environ[env] = load_database_secret(block)
    return {"database": mask_url(os.environ[env]), "from": f"secret block {block}"}


def load_database_secret(block: str = DB_SECRET_BLOCK) -> str:
    """The database URL stored in Secret block ``block``; a missing block is an error that says how to make it."""
    from prefect.blocks.system import Secret

    try:
        secret = Secret.load(block)
    except ValueError:
        raise ConfigError(
            f"Prefect Secret block {block!r} does not exist on {_api_url()}; create it with "
            f"`RECFORGE_DB_URL=postgresql+psycopg://... recforge deploy --store-db-secret` (or in the UI: "
            f"Blocks → Secret, name {block!r}), or start the worker with RECFORGE_DB_URL set"
        ) from None
    value = secret.get()
    if not isinstance(value, str) or not value:
        raise ConfigError(f"Prefect Secret block {block!r} must hold the database URL as a non-empty string")
    return value


def store_database_secret(url: str, block: str = DB_SECRET_BLOCK) -> None:
    """Save ``url`` as Secret block ``block`` (replacing its value), checking first that it parses."""
    from prefect.blocks.system import Secret

    from recforge.store import mask_url

    mask_url(url)  # raises a clear error for an unparsable URL, without echoing it
    Secret(value=url).save(block, overwrite=True)


# -- recforge deploy -------------------------------------------------------------------------------------------


def ensure_work_pool(name: str, pool_type: str = "process") -> bool:
    """Create work pool ``name`` of ``pool_type`` with Prefect's default job template unless it exists.

    Returns True when it was created. An existing pool of another type is an error naming both types.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.asyncutils import run_coro_as_sync
    from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

    async def ensure() -> bool:
        async with get_client() as client:
            try:
                pool = await client.read_work_pool(name)
            except ObjectNotFound:
                template = await get_default_base_job_template_for_infrastructure_type(pool_type)
                await client.create_work_pool(
                    WorkPoolCreate(name=name, type=pool_type, base_job_template=template or {})
                )
                return True
            if pool.type != pool_type:
                raise ConfigError(
                    f"work pool {name!r} exists with type {pool.type!r}, but deploy/prefect.yaml needs a "
                    f"{pool_type!r} pool; delete it (`prefect work-pool delete {name}`) or rename the pool"
                )
            return False

    created = run_coro_as_sync(ensure())
    return bool(created)


def deploy(
    prefect_file: str | Path = DEFAULT_PREFECT_FILE,
    names: list[str] | None = None,
    store_db_secret: bool = False,
) -> int:
    """Register the deployments of ``prefect_file`` (all, or those in ``names``) with the Prefect API.

    Needs ``PREFECT_API_URL`` (a server started with ``prefect server start``). Creates the work pools the
    file names, stores ``$RECFORGE_DB_URL`` as the database Secret block when ``store_db_secret``, then runs
    ``prefect deploy`` from the repository root (the entrypoints are relative to it). Returns its exit code.
    """
    _require_server("recforge deploy")
    prefect_file = Path(prefect_file).resolve()
    specs = load_deployments(prefect_file)
    # Prefect accepts "nightly" or "recommend/nightly"; check the deployment part of either.
    unknown = sorted(n for n in names or [] if n.rsplit("/", 1)[-1] not in specs)
    if unknown:
        raise ConfigError(f"no deployment named {unknown} in {prefect_file}; it defines {sorted(specs)}")
    if store_db_secret:
        url = os.environ.get(DB_URL_ENV)
        if not url:
            raise ConfigError(f"--store-db-secret stores ${DB_URL_ENV} as Secret block {DB_SECRET_BLOCK!r}: set it")
        store_database_secret(url)
        print(f"stored ${DB_URL_ENV} in Prefect Secret block {DB_SECRET_BLOCK!r}")
    for pool in sorted({s.work_pool for s in specs.values() if s.work_pool}):
        if ensure_work_pool(pool):
            print(f"created process work pool {pool!r}")
    command = [_prefect_executable(), "--no-prompt", "deploy", "--prefect-file", str(prefect_file)]
    command += [arg for name in names for arg in ("--name", name)] if names else ["--all"]
    return subprocess.run(command, cwd=REPO_ROOT, check=False).returncode


def _require_server(command: str, why: str = "") -> None:
    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError(
            f"{command} needs a Prefect server{why}: start one (`prefect server start`) and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )


def _prefect_executable() -> str:
    """The ``prefect`` command of this interpreter's environment (the one recforge is installed in)."""
    candidate = Path(sys.executable).with_name("prefect")
    return str(candidate) if candidate.exists() else "prefect"


def _api_url() -> str:
    return os.environ.get("PREFECT_API_URL") or "the Prefect API"


# -- recforge serve --------------------------------------------------------------------------------------------


def runner_deployments(
    prefect_file: str | Path = DEFAULT_PREFECT_FILE,
    cron: str | None = None,
    timezone: str | None = None,
) -> list[Any]:
    """Every deployment of ``prefect_file`` as a ``RunnerDeployment`` for ``prefect.serve``.

    ``cron``/``timezone`` replace those of the scheduled deployments (``recommend/nightly``); parameters, tags
    and descriptions come from the file, so served and worker-run deployments behave alike.
    """
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    deployments = []
    for spec in load_deployments(prefect_file).values():
        flow = load_flow_from_entrypoint(str(REPO_ROOT / spec.entrypoint))
        schedules = [
            Cron(
                cron or s["cron"],
                timezone=timezone or s.get("timezone"),
                active=bool(s.get("active", True)),
            )
            for s in spec.schedules
            if "cron" in s
        ]
        deployments.append(
            flow.to_deployment(
                name=spec.name,
                schedules=schedules or None,
                parameters=spec.parameters,
                tags=spec.tags,
                description=spec.description,
            )
        )
    return deployments


def serve(
    prefect_file: str | Path = DEFAULT_PREFECT_FILE,
    cron: str | None = None,
    timezone: str | None = None,
    db_secret: str | None = None,
) -> None:
    """Serve the deployments of ``prefect_file`` from this process until interrupted (Ctrl-C); needs
    ``PREFECT_API_URL``.

    Scheduled runs (the nightly cron) and runs started with ``prefect deployment run`` execute in child
    processes of this one, which inherit its environment: ``db_secret`` names a Secret block read once here
    into ``$RECFORGE_DB_URL`` (restart to pick up a changed secret).
    """
    from prefect import serve as prefect_serve

    # Without one, Prefect served from a temporary server of this process's own: no dashboard, and nothing outside
    # (`prefect deployment run`, a backfill trigger) could reach the deployments it printed.
    _require_server("recforge serve", " that outlives this process (its schedule, runs and dashboard live there)")
    if db_secret:
        os.environ[DB_URL_ENV] = load_database_secret(db_secret)
    # Entrypoints are relative to the repository root; runs started by the runner load them from here.
    os.chdir(REPO_ROOT)
    prefect_serve(*runner_deployments(prefect_file, cron=cron, timezone=timezone))
