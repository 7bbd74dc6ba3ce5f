"""Counts: tasks by state (metrics, the status page), finished tasks (durations), usage per owner."""

from __future__ import annotations

from mloc_server.store.database import Database
from mloc_server.store.records import AttemptUsage, FinishedTask, Usage, UserUsage


async def count_tasks_by_state(db: Database, owner: str | None = None) -> dict[str, int]:
    if owner is None:
        rows = await db.read("SELECT state, COUNT(*) AS n FROM tasks GROUP BY state")
    else:
        rows = await db.read("SELECT state, COUNT(*) AS n FROM tasks WHERE owner=? GROUP BY state", (owner,))
    return {r["state"]: r["n"] for r in rows}


async def attempt_usage(db: Database, after: float) -> list[AttemptUsage]:
    """Attempts running now or ended after ``after``, with their task's owner and team."""
    rows = await db.read(
        "SELECT t.owner, t.team, a.gpu_count, a.started_at, a.ended_at FROM attempts a "
        "JOIN tasks t ON t.id = a.task_id WHERE a.ended_at IS NULL OR a.ended_at > ?", (after,))
    return [AttemptUsage.model_validate(dict(r)) for r in rows]


async def finished_since(db: Database, after: float, limit: int = 10_000) -> list[FinishedTask]:
    rows = await db.read(
        "SELECT task_type, state, started_at, finished_at FROM tasks "
        "WHERE finished_at > ? AND state IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT ?",
        (after, limit),
    )
    return [FinishedTask.model_validate(dict(r)) for r in rows]


async def usage(db: Database, owner: str | None, start: float | None, end: float | None, now: float) -> Usage:
    where, params = [], []
    if owner:
        where.append("t.owner=?")
        params.append(owner)
    if start is not None:
        where.append("t.created_at>=?")
        params.append(start)
    if end is not None:
        where.append("t.created_at<?")
        params.append(end)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    by_state = await db.read(f"SELECT t.state, COUNT(*) n FROM tasks t {clause} GROUP BY t.state", params)
    by_type = await db.read(f"SELECT t.task_type, COUNT(*) n FROM tasks t {clause} GROUP BY t.task_type", params)
    by_owner = await db.read(
        f"SELECT t.owner, COUNT(*) n, AVG(CASE WHEN t.started_at IS NOT NULL THEN t.started_at-t.created_at END) "
        f"wait FROM tasks t {clause} GROUP BY t.owner",
        params,
    )
    gpu_hours = await db.read(
        "SELECT t.owner, SUM(a.gpu_count * (COALESCE(a.ended_at, ?) - a.started_at)) / 3600.0 h "
        f"FROM attempts a JOIN tasks t ON t.id=a.task_id {clause} GROUP BY t.owner",
        [now, *params],
    )
    hours = {r["owner"]: r["h"] or 0.0 for r in gpu_hours}
    return Usage(
        tasks_by_state={r["state"]: r["n"] for r in by_state},
        tasks_by_type={r["task_type"]: r["n"] for r in by_type},
        users=[UserUsage(user=r["owner"], tasks=r["n"], gpu_hours=round(hours.get(r["owner"], 0.0), 4),
                         avg_queue_wait_s=round(r["wait"], 3) if r["wait"] is not None else None)
               for r in by_owner],
        gpu_hours=round(sum(hours.values()), 4),
        total_tasks=sum(r["n"] for r in by_state),
    )
