"""Task progress history (the loss curve): one row per distinct step of an attempt, thinned to a bound.

The reaper writes the points heartbeats gathered in memory, in the same transaction as the latest
progress (services/reaper.py). Counting an attempt's rows on every flush would cost a scan per running
task each second, so the caller passes the count it last got back and only a first write counts.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from mloc_server.store.database import Database
from mloc_server.store.records import PointBatch, ProgressPoint

MAX_POINTS = 2000  # per task attempt; past it the older half of the curve keeps every other point


def add_progress_points(con: sqlite3.Connection, batches: Iterable[PointBatch],
                        most: int = MAX_POINTS) -> dict[tuple[str, int], int]:
    """Store each batch's points (a step sent again replaces its row); returns how many rows each
    (task, attempt) holds now, at most ``most``."""
    batches = [b for b in batches if b.points]
    con.executemany(  # one statement for every task's points: a flush carries one per running task
        "INSERT INTO progress_points(task_id, attempt, step, t, loss, learning_rate, metrics) "
        "VALUES(?,?,?,?,?,?,?) ON CONFLICT(task_id, attempt, step) DO UPDATE SET t=excluded.t, "
        "loss=excluded.loss, learning_rate=excluded.learning_rate, metrics=excluded.metrics",
        [(b.task_id, b.attempt, p.step, p.t, p.loss, p.learning_rate, json.dumps(p.metrics) if p.metrics else None)
         for b in batches for p in b.points],
    )
    counts: dict[tuple[str, int], int] = {}
    for b in batches:
        n = _count(con, b.task_id, b.attempt) if b.stored is None else b.stored + len(b.points)
        if n > most:  # an over-estimate (a replaced step) only costs a recount here
            n = _count(con, b.task_id, b.attempt)
            if n > most:
                n -= _thin(con, b.task_id, b.attempt, n)
        counts[(b.task_id, b.attempt)] = n
    return counts


def _count(con: sqlite3.Connection, task_id: str, attempt: int) -> int:
    return con.execute("SELECT COUNT(*) FROM progress_points WHERE task_id=? AND attempt=?",
                       (task_id, attempt)).fetchone()[0]


def _thin(con: sqlite3.Connection, task_id: str, attempt: int, n: int) -> int:
    """Drop every other point of the older half (the first point stays): recent steps keep full detail,
    the curve's shape is kept, and thinning happens once per ~n/4 new points, not on every write."""
    cur = con.execute(
        "DELETE FROM progress_points WHERE task_id=? AND attempt=? AND step IN ("
        " SELECT step FROM (SELECT step, ROW_NUMBER() OVER (ORDER BY step) AS rn FROM progress_points"
        "  WHERE task_id=? AND attempt=?) WHERE rn <= ? AND rn % 2 = 0)",
        (task_id, attempt, task_id, attempt, n // 2),
    )
    return cur.rowcount


async def progress_points(db: Database, task_id: str, since: float | None, limit: int) -> list[ProgressPoint]:
    """A task's points received after ``since`` (all of them without it), by attempt and step."""
    rows = await db.read(
        "SELECT attempt, step, t, loss, learning_rate, metrics FROM progress_points "
        "WHERE task_id=? AND t>? ORDER BY attempt, step LIMIT ?",
        (task_id, since if since is not None else float("-inf"), limit),
    )
    return [ProgressPoint(attempt=r["attempt"], step=r["step"], t=r["t"], loss=r["loss"],
                          learning_rate=r["learning_rate"], metrics=json.loads(r["metrics"]) if r["metrics"] else None)
            for r in rows]
