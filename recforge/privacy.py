"""Privacy on ingest: keyed pseudonyms for user ids, personal attribute columns dropped, erased users removed.

Pseudonymisation replaces each user id by ``HMAC-SHA256(key, id)`` (first 128 bits, hex, prefixed ``p_``), so
the raw id never reaches the database, the features, the reports or the logs. The same key always gives the
same pseudonym, so runs stay comparable and an application that knows the key can find a user's rows
(:func:`pseudonymise_id`). Without the key the mapping cannot be recomputed, unlike a plain hash of a small id
space. The key comes from an environment variable (a Prefect Secret exported there on workers), never from the
run's parameters.

Personal attribute columns (a default list of common personal-data names, plus any the config marks) are
dropped from the users table before validation unless the config keeps them explicitly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from collections.abc import Iterable

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from recforge.data.contract import ITEM, MAX_ID_CHARS, RATING, TIMESTAMP, USER, DataError, Dataset

DEFAULT_KEY_ENV = "RECFORGE_PSEUDONYM_KEY"
# What an event is made of: never dropped as personal, whatever privacy.personal_columns names.
EVENT_COLUMNS = (USER, ITEM, RATING, TIMESTAMP)
PSEUDONYM_PREFIX = "p_"
# Column names that hold personal data in most user tables; matched case-insensitively.
DEFAULT_PERSONAL_COLUMNS = (
    "name",
    "first_name",
    "last_name",
    "full_name",
    "email",
    "phone",
    "address",
    "street",
    "zip_code",
    "zipcode",
    "postcode",
    "postal_code",
    "ip",
    "ip_address",
    "birth_date",
    "date_of_birth",
    "ssn",
)


class PrivacyConfig(BaseModel):
    """What happens to personal data on ingest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pseudonymise_users: bool = Field(
        default=False,
        description="Replace user ids by keyed HMAC pseudonyms on ingest (key from the environment variable key_env).",
    )
    key_env: str = Field(default=DEFAULT_KEY_ENV, description="Environment variable holding the pseudonym key.")
    personal_columns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PERSONAL_COLUMNS),
        description=(
            "Columns of the users table and of the events treated as personal data (case-insensitive); dropped "
            "unless kept."
        ),
    )
    keep_personal_columns: list[str] = Field(
        default_factory=list, description="Personal columns to keep anyway (an explicit, reviewed choice)."
    )


def pseudonym_key(config: PrivacyConfig) -> bytes:
    """The key from ``config.key_env``; a DataError says how to set it when it is missing or too short."""
    value = os.environ.get(config.key_env, "")
    if len(value) < 16:
        raise DataError(
            f"pseudonymise_users is on but environment variable {config.key_env} is "
            f"{'unset' if not value else 'shorter than 16 characters'}; set it to a long random secret "
            "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`) and keep it: another key gives "
            "other pseudonyms."
        )
    return value.encode("utf-8")


def pseudonymise_id(user_id: str, key: bytes) -> str:
    """The pseudonym of one user id under ``key``."""
    digest = hmac.new(key, str(user_id).encode("utf-8"), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:32]


def pseudonymise_ids(ids: pd.Series, key: bytes) -> pd.Series:
    """Pseudonyms of a column of ids (each distinct id hashed once); a missing id stays missing.

    Missing ids used to become the pseudonym of the text "nan": one made-up user that validation (which runs
    after) no longer saw as missing, trained on and published with every id-less event.
    """
    present = ids.notna()
    text = ids[present].astype(str)
    mapping = {value: pseudonymise_id(value, key) for value in pd.unique(text)}
    return text.map(mapping).reindex(ids.index).astype("str")


def personal_columns(columns: Iterable[str], config: PrivacyConfig) -> list[str]:
    """The columns of a users table (or an events table) that are personal and not kept."""
    personal = {c.lower() for c in config.personal_columns}
    kept = {c.lower() for c in config.keep_personal_columns}
    return [c for c in columns if c != USER and c.lower() in personal and c.lower() not in kept]


def apply_privacy(dataset: Dataset, config: PrivacyConfig, erased: set[str]) -> tuple[Dataset, dict[str, object]]:
    """:func:`deidentify`, then :func:`erase`: the whole privacy step; returns the data set and one summary."""
    deidentified, summary = deidentify(dataset, config)
    protected, erasure = erase(deidentified, erased)
    return protected, summary | erasure


def deidentify(dataset: Dataset, config: PrivacyConfig) -> tuple[Dataset, dict[str, object]]:
    """Drop personal columns and pseudonymise user ids (if configured).

    Depends only on the data, ``config`` and the key, so its result may be cached (the ingest task caches it:
    what reaches Prefect's result storage is already de-identified). Returns the data set and a summary for the
    logs (what was dropped; never any id).
    """
    interactions, users = dataset.interactions, dataset.users
    dropped: list[str] = []
    if users is not None:
        personal = personal_columns(users.columns, config)
        if personal:
            users = users.drop(columns=personal)
            dropped += personal
    # An events log may carry them too (the e-mail or IP address of each event), next to the pseudonymised id.
    personal = [c for c in personal_columns(interactions.columns, config) if c not in EVENT_COLUMNS]
    if personal:
        interactions = interactions.drop(columns=personal)
        dropped += [f"interactions.{c}" for c in personal]
    summary: dict[str, object] = {"pseudonymised": False, "dropped_columns": dropped}
    if config.pseudonymise_users:
        key = pseudonym_key(config)
        interactions = interactions.assign(**{USER: pseudonymise_ids(interactions[USER], key)})
        if users is not None:
            users = users.assign(**{USER: pseudonymise_ids(users[USER], key)})
        summary["pseudonymised"] = True
    deidentified = dataclasses.replace(dataset, interactions=interactions, users=users)
    require_short_ids(deidentified, config.pseudonymise_users)
    return deidentified, summary


def require_short_ids(dataset: Dataset, pseudonymised: bool) -> None:
    """Refuse ids longer than the published tables hold, before any training rather than at the publish (after
    its retries); user ids are checked as published, so pseudonyms rather than what they replace."""
    for table, frame in dataset.tables().items():
        for column in (USER, ITEM):
            if column not in frame.columns:
                continue
            text = frame[column].astype("str")
            too_long = (text.str.len() > MAX_ID_CHARS).fillna(False).astype(bool)
            if not too_long.any():
                continue
            shown = ", ".join(f"row {i}: {v[:40]!r}… ({len(v)} characters)" for i, v in text[too_long].head(3).items())
            hint = " or pseudonymise user ids (--pseudonymise-users)" if column == USER and not pseudonymised else ""
            raise DataError(
                f"{dataset.source or dataset.name}: {table} column {column!r} holds {int(too_long.sum())} id(s) longer "
                f"than {MAX_ID_CHARS} characters ({shown}), the most the published tables hold; map them to shorter "
                f"keys in the source (a hash, for example){hint}"
            )


def erase(dataset: Dataset, erased: set[str]) -> tuple[Dataset, dict[str, object]]:
    """Drop the events and users-table rows of the ``erased`` users.

    ``erased`` holds user ids as the database stores them (pseudonyms when pseudonymising), so ``dataset`` must
    be de-identified already. Returns the data set and the counts removed.
    """
    interactions, users = dataset.interactions, dataset.users
    summary: dict[str, object] = {"erased_users": 0, "erased_events": 0}
    if erased:
        gone = interactions[USER].astype(str).isin(erased)
        summary["erased_events"] = int(gone.sum())
        summary["erased_users"] = int(interactions.loc[gone, USER].nunique())
        # The index stays: validation names rows by it, and they must be the source's rows, not the positions left.
        interactions = interactions.loc[~gone]
        if users is not None:
            users = users.loc[~users[USER].astype(str).isin(erased)]
    return dataclasses.replace(dataset, interactions=interactions, users=users), summary


def privacy_fingerprint(config: PrivacyConfig) -> str:
    """What :func:`deidentify` depends on besides the data: the settings and, when pseudonymising, the key.

    The key enters as an HMAC of a fixed text under it, so a new key gives a new cache key while neither the
    fingerprint nor the cache reveals the key. A missing key gives no fingerprint (``LookupError``): the
    ingest task then runs uncached and fails with :func:`pseudonym_key`'s explanation.
    """
    parts = [config.model_dump_json()]
    if config.pseudonymise_users:
        value = os.environ.get(config.key_env, "")
        if len(value) < 16:
            raise LookupError(f"no usable pseudonym key in {config.key_env}")
        parts.append(hmac.new(value.encode("utf-8"), b"recforge cache fingerprint", hashlib.sha256).hexdigest())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def stored_user_id(user_id: str, config: PrivacyConfig | None = None) -> str:
    """A raw user id as the database stores it: its pseudonym when the key is set and pseudonymising is on."""
    config = config or PrivacyConfig()
    if config.pseudonymise_users:
        return pseudonymise_id(user_id, pseudonym_key(config))
    return str(user_id)
