"""SQL for the operations features: task secrets, metrics and the status page's counts.

Kept apart from repo.py (the task and lease life cycle) so each file stays one concern; the same
rules hold: writes take a sqlite3 connection on the writer thread, reads are async.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from mloc_server.store.database import Database

# -- task secrets -----------------------------------------------------------------------------


def insert_secrets(con: sqlite3.Connection, task_id: str, ciphertext: str, now: float) -> None:
    con.execute("INSERT OR REPLACE INTO task_secrets(task_id, ciphertext, created_at) VALUES(?,?,?)",
                (task_id, ciphertext, now))


def delete_secrets(con: sqlite3.Connection, task_ids: Iterable[str]) -> None:
    con.executemany("DELETE FROM task_secrets WHERE task_id=?", [(t,) for t in task_ids])


async def secrets_ciphertext(db: Database, task_id: str) -> str | None:
    row = await db.read_one("SELECT ciphertext FROM task_secrets WHERE task_id=?", (task_id,))
    return row["ciphertext"] if row else None


async def tasks_with_secrets(db: Database) -> list[tuple[str, str]]:
    """(task id, state) of every task that still has stored secrets."""
    rows = await db.read(
        "SELECT s.task_id, COALESCE(t.state, 'gone') AS state FROM task_secrets s LEFT JOIN tasks t ON t.id=s.task_id"
    )
    return [(r["task_id"], r["state"]) for r in rows]


# -- counts for metrics and the status page ---------------------------------------------------


async def tasks_by_state(db: Database, owner: str | None = None) -> dict[str, int]:
    if owner is None:
        rows = await db.read("SELECT state, COUNT(*) AS n FROM tasks GROUP BY state")
    else:
        rows = await db.read("SELECT state, COUNT(*) AS n FROM tasks WHERE owner=? GROUP BY state", (owner,))
    return {r["state"]: r["n"] for r in rows}


async def finished_since(db: Database, after: float, limit: int = 10_000) -> list[sqlite3.Row]:
    """Tasks that reached a final state after ``after`` (wall clock), oldest first."""
    return await db.read(
        "SELECT task_type, state, started_at, finished_at FROM tasks "
        "WHERE finished_at > ? AND state IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT ?",
        (after, limit),
    )
