"""Synthetic interactions written as files, as a user's export would be: for tests that read a CSV source."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from recforge.data.synthetic import generate_synthetic


def write_synthetic_csv(
    path: Path, *, n_users: int, n_items: int, n_events: int, drop: Sequence[str] = ()
) -> pd.DataFrame:
    """Write synthetic interactions to ``path`` (timestamps as epoch seconds, ``drop`` columns left out); returns
    the frame as written. A file of the calling test only, so no earlier run can have cached its content."""
    events = generate_synthetic(n_users=n_users, n_items=n_items, n_events=n_events).interactions.drop(
        columns=list(drop)
    )
    events["timestamp"] = (events["timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    events.to_csv(path, index=False)
    return events
