"""Usage statistics (GET /api/v1/stats): tasks by state and type, GPU-hours and queue wait per user."""

from __future__ import annotations

import time

from mloc_server.schemas import Stats
from mloc_server.store import Store


async def usage_stats(db: Store, user: str | None, start: float | None, end: float | None, *,
                      start_date: str | None, end_date: str | None) -> Stats:
    """Tasks created in [start, end) (a user's own when ``user`` is set); ``start_date`` and
    ``end_date`` are the dates as asked, echoed in the answer. Running attempts count until now."""
    usage = await db.usage(user, start, end, time.time())
    return Stats(**usage.model_dump(), user=user, start_date=start_date, end_date=end_date)
