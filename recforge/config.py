"""Run configuration: everything one pipeline run needs, from flags, a TOML file, or deployment parameters.

A :class:`RunConfig` is what the ``recommend`` flow takes as its parameter, so it must stay JSON-serialisable and
must never carry secrets: the database URL is resolved at run time from ``--db-url`` / ``RECFORGE_DB_URL``
(see :func:`resolve_db_url`) and only its password-masked form is logged or stored.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from recforge.privacy import PrivacyConfig

DEFAULT_DB_URL = "sqlite:///var/recforge.db"
DB_URL_ENV = "RECFORGE_DB_URL"

TaskRunnerName = Literal["thread", "process", "dask"]


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message says which option and how."""


class RunConfig(BaseModel):
    """Parameters of one ``recommend`` run. Unknown keys are rejected so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: dict[str, Any] = Field(
        default_factory=lambda: {"kind": "synthetic"},
        description="Where interactions come from: keys of recforge.data.sources.SourceSpec (kind, data_dir, ...).",
    )
    models: list[str] | None = Field(
        default=None, description="Model names from the registry; None trains the default set."
    )
    families: list[str] | None = Field(
        default=None, description="Train every registered model of these families (combined with models)."
    )
    as_of: datetime | None = Field(
        default=None,
        description="Only events strictly before this instant exist for the run (default: now, UTC).",
    )
    top_n: int = Field(default=50, ge=1, le=10_000, description="Recommendations published per user and model.")
    k: int = Field(default=10, ge=1, le=1000, description="Cut-off of the top-N evaluation metrics.")
    test_fraction: float = Field(default=0.2, gt=0, lt=1, description="Share of each user's latest events held out.")
    primary_metric: str = Field(
        default="ndcg",
        description="Metric that picks the champion model: a top-N metric at the cut-off k (ndcg, map, mrr, "
        "precision, recall, hit_rate, coverage, novelty) or a rating error (rmse, mae).",
    )
    impute: dict[str, str] = Field(
        default_factory=dict,
        description='Per attribute column: {"users.age": "median" | "mean" | "most_frequent" | "constant:VALUE" | '
        '"none"}; undeclared columns get median (numeric) or most_frequent (other).',
    )
    min_interactions: int = Field(default=10, ge=1, description="Validation floor on the interactions row count.")
    seed: int = Field(
        default=42, ge=0, lt=2**63, description="Seed for every random choice (models, splits, synthetic data)."
    )
    output_dir: str = Field(default="var", description="Folder for Data Docs, reports and model files.")
    task_runner: TaskRunnerName = Field(default="thread", description="How model tasks run concurrently.")
    dask_address: str | None = Field(default=None, description="Existing Dask scheduler (dask runner only).")
    max_workers: int | None = Field(
        default=None,
        ge=1,
        description="Model tasks in flight at once (default: one per core on threads, one per worker process "
        "on a process pool or a local Dask cluster).",
    )
    cold_start: bool = Field(
        default=True,
        description="Publish through the cold-start chain: the model for users with more than 4 events, item "
        "neighbours for 1-4, attribute-segment then global popularity for none (column recommendations.strategy).",
    )
    new_items_weight: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Let items without events be recommended: blend a content score over item attributes with "
        "each model's score, this weight on the model's side (0.9 measured best, docs/benchmarks/coldstart.md); "
        "None: off.",
    )
    explanations: bool = Field(
        default=True, description="Store a short reason with every published row (column recommendations.reason)."
    )
    privacy: PrivacyConfig = Field(
        default_factory=PrivacyConfig,
        description="Pseudonymised user ids and personal columns (recforge.privacy.PrivacyConfig).",
    )
    model_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='Hyperparameters per model over its registered defaults, e.g. {"als": {"factors": 128}}; '
        "each model's fields and defaults: `recforge models --params`. Only the fields given change.",
    )
    model_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Time budget of each model's evaluation and of its refit, in seconds; a model over it is "
        "cut off and counted as failed, the others are published. None: no budget.",
    )

    @field_validator("as_of")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        from recmodels.registry import get_model_class

        names = [v.strip() for v in value if v.strip()]
        if not names:
            raise ValueError("models is empty; name at least one (see `recforge models`)")
        for name in names:
            get_model_class(name)  # raises with the list of valid names
        return list(dict.fromkeys(names))

    @field_validator("primary_metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        # Checked here, before any data is read: an unknown name ("ndgc") used to give a completed run without a
        # champion, and "ndcg@5" failed the run after every model had trained.
        from recforge.champion import LOWER_IS_BETTER
        from recforge.metrics import PER_USER_BEYOND_KEYS, SET_KEYS, TOPN_KEYS

        # Metrics that every evaluation has and where higher is better, plus the rating errors (lower is better).
        known = (*TOPN_KEYS, "coverage", "novelty", *sorted(LOWER_IS_BETTER))
        name = value.strip().lower()
        if name in known:
            return name
        if name in (*PER_USER_BEYOND_KEYS, *SET_KEYS):
            raise ValueError(
                f"primary_metric {value!r} cannot pick a champion (lower is better, or not every run has it: ild "
                f"needs item genres); choose from: {', '.join(known)}"
            )
        metric, at, cutoff = name.partition("@")
        if at and metric in TOPN_KEYS and cutoff.isdigit():
            raise ValueError(
                f"primary_metric {value!r}: name the metric alone and set its cut-off with k "
                f"(primary_metric = {metric!r}, k = {cutoff})"
            )
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown primary_metric {value!r}{hint}; choose from: {', '.join(known)}")

    @field_validator("families")
    @classmethod
    def _known_families(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        from recmodels.registry import families

        known = families()
        names = [v.strip() for v in value if v.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise ValueError(f"unknown or empty families {unknown or value}; choose from: {', '.join(known)}")
        return list(dict.fromkeys(names))

    @field_validator("impute")
    @classmethod
    def _valid_impute(cls, value: dict[str, str]) -> dict[str, str]:
        strategies = ("mean", "median", "most_frequent", "none")
        for key, spec in value.items():
            table, _, column = key.partition(".")
            if table not in ("users", "items") or not column:
                raise ValueError(f"impute key {key!r} must be 'users.<column>' or 'items.<column>'")
            if spec not in strategies and not spec.startswith("constant:"):
                raise ValueError(f"impute strategy {spec!r} for {key}: use one of {strategies} or 'constant:VALUE'")
        return value

    @field_validator("model_params")
    @classmethod
    def _valid_model_params(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {name: check_model_params(name, params) for name, params in value.items()}

    def impute_for(self, table: str) -> dict[str, str]:
        """Declared imputation of one table's columns, keyed by column."""
        prefix = f"{table}."
        return {k.removeprefix(prefix): v for k, v in self.impute.items() if k.startswith(prefix)}

    @field_validator("source")
    @classmethod
    def _valid_source(cls, value: dict[str, Any]) -> dict[str, Any]:
        from recforge.data.sources import SourceSpec, check_complete

        check_complete(SourceSpec.from_mapping(value))  # raises naming the bad or missing setting
        return value

    @model_validator(mode="after")
    def _dask_address_needs_dask(self) -> RunConfig:
        # Silently ignored before: the run trained on threads while the user expected their cluster.
        if self.dask_address and self.task_runner != "dask":
            raise ValueError(
                f"dask_address {self.dask_address!r} is used only by the dask task runner, but task_runner is "
                f'{self.task_runner!r}: add --task-runner dask (task_runner = "dask"), or drop the address'
            )
        return self

    def recorded_parameters(self) -> dict[str, Any]:
        """The config as JSON for the run record, with any password in the source URL masked."""
        from recforge.data.sql import mask_url

        parameters = self.model_dump(mode="json")
        if parameters["source"].get("source_url"):
            parameters["source"] = {**parameters["source"], "source_url": mask_url(parameters["source"]["source_url"])}
        return parameters

    def resolved_as_of(self) -> datetime:
        return self.as_of if self.as_of is not None else datetime.now(UTC)

    def model_list(self) -> list[str]:
        """The models to train: those named, plus every model of the named families; else the default set."""
        from recmodels.registry import DEFAULT_MODELS, families

        if self.models is None and self.families is None:
            return list(DEFAULT_MODELS)
        chosen = list(self.models or [])
        by_family = families()
        for family in self.families or []:
            chosen += by_family[family]
        return list(dict.fromkeys(chosen))

    def models_for_data(self, has_ratings: bool) -> tuple[list[str], dict[str, str]]:
        """The models to train on a data set, and those left out with the reason.

        Models that need ratings (``requires_ratings``) are left out on data without ratings (clicks, purchases)
        when they came from the default set or a family; a model named in ``models`` is always kept, so asking
        for one that cannot train on this data fails visibly with its own error.
        """
        from recmodels.registry import get_model_class

        chosen = self.model_list()
        if has_ratings:
            return chosen, {}
        named = set(self.models or [])
        skipped = {
            name: "it needs ratings and this data set has none (map a rating column with --columns rating=<column>)"
            for name in chosen
            if name not in named and get_model_class(name).requires_ratings
        }
        return [name for name in chosen if name not in skipped], skipped


def check_model_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` for model ``name`` checked against its config: known fields, right types, valid values.

    Returns them with their values converted to the fields' types (``"128"`` from a command line becomes 128,
    ``"none"`` None where the field takes None); raises ValueError naming the model, the field and what is allowed.
    """
    from recmodels.registry import get_model_class, hyperparameters

    config_class = get_model_class(name).config_class  # raises with the list of valid names
    described = hyperparameters(name)
    fields = [h.name for h in described]
    # TOML has no null: "none" (or "null") sets a field that takes a number or None to None.
    nullable = {h.name for h in described if h.type.endswith("| None") and "str" not in h.type}
    params = {
        field: None if field in nullable and isinstance(value, str) and value.lower() in ("none", "null") else value
        for field, value in params.items()
    }
    unknown = [field for field in params if field not in fields]
    if unknown:
        hints = [
            f"{field!r} (did you mean {close[0]!r}?)"
            if (close := difflib.get_close_matches(field, fields, 1))
            else repr(field)
            for field in unknown
        ]
        raise ValueError(
            f"{name} has no hyperparameter {', '.join(hints)}; its hyperparameters: {', '.join(fields)} "
            f"(`recforge models --params {name}`)"
        )
    # Pydantic's lax mode reads True as 1: `--param als.factors=true` trained one factor.
    types = {h.name: h.type for h in described}
    flags = [field for field, value in params.items() if isinstance(value, bool) and "bool" not in types[field]]
    if flags:
        raise ValueError(
            f"{name}: " + "; ".join(f"{field}: takes {types[field]}, got {params[field]!r}" for field in flags)
        )
    try:
        config = TypeAdapter(config_class).validate_python(dict(params))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise ValueError(f"{name}: " + "; ".join(problems)) from None
    return {field: getattr(config, field) for field in params}


#: How far ahead of the clock an as_of may lie: a day, for a date given in a time zone ahead of UTC.
FUTURE_AS_OF_SLACK = timedelta(days=1)


def refuse_future_as_of(as_of: datetime | None, option: str, instead: str) -> None:
    """Raise :class:`ConfigError` for an ``as_of`` more than :data:`FUTURE_AS_OF_SLACK` ahead of the clock.

    A run publishes for an instant that has passed: the champion view serves the latest ``as_of``, so one in the
    future (a typo such as 2062 for 2026) would stay served over every nightly run until that day. The CLI checks
    before Prefect starts; the flows check again for runs started from a deployment or the dashboard. ``option``
    names the setting as the caller knows it, ``instead`` what to give.
    """
    if as_of is None:
        return
    if as_of > datetime.now(UTC) + FUTURE_AS_OF_SLACK:
        raise ConfigError(
            f"{option} {as_of.isoformat()} is in the future; the published tables would serve it over every run "
            f"until then. Give {instead}"
        )


def resolve_db_url(explicit: str | None = None) -> str:
    """The database URL: an explicit value, else ``$RECFORGE_DB_URL``, else the embedded SQLite default."""
    return explicit or os.environ.get(DB_URL_ENV) or DEFAULT_DB_URL


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; a top-level ``[run]`` table, if present, holds the run options."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return dict(data.get("run", data))


def build_config(values: dict[str, Any], origin: str = "options") -> RunConfig:
    """Validate ``values`` into a :class:`RunConfig`; errors name each bad option and why."""
    try:
        return RunConfig(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "config"
            problems.append(f"  {where}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError(f"invalid {origin}:\n" + "\n".join(problems)) from None
