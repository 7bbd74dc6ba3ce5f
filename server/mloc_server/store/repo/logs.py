"""Task log chunks, stored idempotently by (task, attempt, seq)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from mloc_server.store.database import Database
from mloc_server.store.records import StoredLogChunk


def insert_logs(
    con: sqlite3.Connection, task_id: str, attempt: int, chunks: Iterable[tuple[int, str, str]], now: float
) -> None:
    """Idempotent by (task, attempt, seq): a resent chunk is ignored."""
    con.executemany(
        "INSERT OR IGNORE INTO logs(task_id, attempt, seq, stream, data, created_at) VALUES(?,?,?,?,?,?)",
        [(task_id, attempt, seq, stream, data, now) for seq, stream, data in chunks],
    )


async def task_logs(
    db: Database, task_id: str, attempt: int | None, after: tuple[int, int], limit: int = 1000
) -> list[StoredLogChunk]:
    """Log chunks after the (attempt, seq) cursor, in order."""
    if attempt is not None:
        rows = await db.read(
            "SELECT attempt, seq, stream, data FROM logs WHERE task_id=? AND attempt=? AND seq>? "
            "ORDER BY seq LIMIT ?",
            (task_id, attempt, after[1] if after[0] == attempt else -1, limit),
        )
    else:
        rows = await db.read(
            "SELECT attempt, seq, stream, data FROM logs WHERE task_id=? AND (attempt>? OR (attempt=? AND seq>?)) "
            "ORDER BY attempt, seq LIMIT ?",
            (task_id, after[0], after[0], after[1], limit),
        )
    return [StoredLogChunk(attempt=r["attempt"], seq=r["seq"], stream=r["stream"], data=r["data"]) for r in rows]
