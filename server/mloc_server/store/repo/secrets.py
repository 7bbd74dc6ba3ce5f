"""Task secrets: one sealed (encrypted) blob per task, kept apart from the task row."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from mloc_server.store.database import Database


def insert_secrets(con: sqlite3.Connection, task_id: str, ciphertext: str, now: float) -> None:
    con.execute("INSERT OR REPLACE INTO task_secrets(task_id, ciphertext, created_at) VALUES(?,?,?)",
                (task_id, ciphertext, now))


def delete_secrets(con: sqlite3.Connection, task_ids: Iterable[str]) -> None:
    con.executemany("DELETE FROM task_secrets WHERE task_id=?", [(t,) for t in task_ids])


async def secrets_ciphertext(db: Database, task_id: str) -> str | None:
    row = await db.read_one("SELECT ciphertext FROM task_secrets WHERE task_id=?", (task_id,))
    return row["ciphertext"] if row else None


async def tasks_with_secrets(db: Database) -> list[tuple[str, str]]:
    rows = await db.read(
        "SELECT s.task_id, COALESCE(t.state, 'gone') AS state FROM task_secrets s LEFT JOIN tasks t ON t.id=s.task_id"
    )
    return [(r["task_id"], r["state"]) for r in rows]
