"""Protect: erased users removed right after ingest (which already dropped personal columns and pseudonymised)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from recforge.data.contract import Dataset
from recforge.privacy import erase
from recforge.store import Store


# Never cached: an erasure recorded since the last run must take effect on the very next one.
@task(name="protect", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def protect(dataset: Dataset, db_url: str) -> Dataset:
    """Drop the events and rows of users erased in the database at ``db_url`` (``dataset`` is de-identified)."""
    store = Store(db_url)
    try:
        erased = store.erased_users()
    finally:
        store.dispose()
    protected, summary = erase(dataset, erased)
    get_run_logger().info(
        "privacy: %d erased user(s), %d of their events removed", summary["erased_users"], summary["erased_events"]
    )
    return protected
