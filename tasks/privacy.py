"""Protect: personal columns dropped, user ids pseudonymised, erased users removed, right after ingest."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from recforge.data.contract import Dataset
from recforge.privacy import PrivacyConfig, apply_privacy
from recforge.store import Store


# Never cached: an erasure recorded since the last run must take effect on the very next one.
@task(name="protect", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def protect(dataset: Dataset, config: PrivacyConfig, db_url: str) -> Dataset:
    """Apply ``config`` and the erasures recorded in the database at ``db_url`` to a freshly loaded data set."""
    store = Store(db_url)
    try:
        erased = store.erased_users()
    finally:
        store.dispose()
    protected, summary = apply_privacy(dataset, config, erased)
    get_run_logger().info(
        "privacy: user ids %s; dropped personal columns %s; %d erased user(s), %d of their events removed",
        "pseudonymised" if summary["pseudonymised"] else "kept as given",
        summary["dropped_columns"] or "none",
        summary["erased_users"],
        summary["erased_events"],
    )
    return protected
