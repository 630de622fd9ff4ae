"""Ingest: load a data set from its source."""

from __future__ import annotations

import socket
from typing import Any

from prefect import task
from prefect.logging import get_run_logger

from recforge.data.contract import Dataset
from recforge.data.sources import SourceSpec, load_dataset
from recforge.privacy import PrivacyConfig, deidentify, privacy_fingerprint
from tasks.caching import Unfingerprintable, cached, source_fingerprint


def _is_transient(exc: BaseException) -> bool:
    """Retry only I/O hiccups (network, database connection), never contract violations.

    A host name that does not resolve at all (no network, a typo in the URL) is not a hiccup either: retrying it
    only delayed the explanation by 12 s. A temporary resolver failure (``EAI_AGAIN``) is retried.
    """
    from sqlalchemy.exc import OperationalError

    if not isinstance(exc, (OSError, OperationalError)) or isinstance(exc, FileNotFoundError):
        return False
    cause: object = exc
    for _ in range(8):  # the chain: SourceUnavailableError <- URLError (reason: gaierror)
        if isinstance(cause, socket.gaierror) and cause.errno == socket.EAI_NONAME:
            return False
        if not isinstance(cause, BaseException):
            break
        cause = cause.__cause__ or getattr(cause, "reason", None)
    return True


def _privacy_key(privacy: PrivacyConfig | None) -> str:
    try:
        return privacy_fingerprint(privacy or PrivacyConfig())
    except LookupError as exc:
        raise Unfingerprintable(str(exc)) from None


# Cached by the content of the files the source names and the privacy settings (see tasks.caching): a rerun reads
# the stored Dataset, which is stored de-identified — personal columns dropped, user ids pseudonymised if asked.
@task(
    **cached("ingest", source=source_fingerprint, privacy=_privacy_key),
    name="ingest",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=lambda _task, _run, state: _is_transient(state.result(raise_on_failure=False)),
)
def ingest(source: dict[str, Any], privacy: PrivacyConfig | None = None) -> Dataset:
    """Load interactions (and optional users/items tables) from the configured source, de-identified.

    Personal columns are dropped and user ids pseudonymised (as ``privacy`` says) before the result leaves the
    task, so raw ids and personal columns never reach Prefect's result storage. Erasures are applied after, by
    the uncached ``protect`` task.
    """
    spec = SourceSpec.from_mapping(source)
    logger = get_run_logger()
    logger.info("loading %s", spec.describe())
    dataset = load_dataset(spec)
    logger.info(
        "loaded %s: %d interactions, %s users rows, %s items rows",
        dataset.name,
        len(dataset.interactions),
        "no" if dataset.users is None else len(dataset.users),
        "no" if dataset.items is None else len(dataset.items),
    )
    dataset, summary = deidentify(dataset, privacy or PrivacyConfig())
    logger.info(
        "privacy: user ids %s; dropped personal columns %s",
        "pseudonymised" if summary["pseudonymised"] else "kept as given",
        summary["dropped_columns"] or "none",
    )
    return dataset
