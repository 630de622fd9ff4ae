"""Frozen definitions of recforge's views, one function per version, for the revisions that create them.

A revision must keep producing the DDL it produced when it was written, so it cannot use the query in
``recforge.store`` (which follows the newest schema). Change a view by adding ``<name>_v2`` here and a
revision that replaces the view with it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from recforge.store import CreateView

CHAMPION_VIEW = "champion_recommendations"


def _champion_view(columns: tuple[str, ...]) -> CreateView:
    """The champion view over these ``recommendations`` columns (each version lists its own, frozen)."""
    rec = sa.table("recommendations", *(sa.column(name) for name in columns))
    champions = sa.table("champions", sa.column("as_of"), sa.column("model"))
    latest = sa.select(sa.func.max(champions.c.as_of)).scalar_subquery()
    query: sa.Select[Any] = (
        sa.select(*rec.c)
        .select_from(rec.join(champions, sa.and_(rec.c.as_of == champions.c.as_of, rec.c.model == champions.c.model)))
        .where(champions.c.as_of == latest)
    )
    return CreateView(CHAMPION_VIEW, query)


def champion_view_v1() -> CreateView:
    """``champion_recommendations``: the recommendations of the champion model of the latest ``as_of`` that
    has a champion (every column of ``recommendations``)."""
    return _champion_view(("as_of", "model", "user_id", "rank", "item_id", "score", "run_id"))


def champion_view_v2() -> CreateView:
    """``champion_recommendations`` with the columns of revision 0003 (``strategy``, ``reason``)."""
    return _champion_view(("as_of", "model", "user_id", "rank", "item_id", "score", "run_id", "strategy", "reason"))
