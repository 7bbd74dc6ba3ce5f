"""Pending uploads and recorded artifacts/checkpoints."""

from __future__ import annotations

import sqlite3
from typing import Any

from mloc_server.store.database import Database


def insert_upload(con: sqlite3.Connection, row: dict[str, Any]) -> None:
    con.execute(
        "INSERT INTO uploads(id, task_id, epoch, attempt, name, kind, step, size, storage_key, multipart_id, "
        "created_at) VALUES(:id,:task_id,:epoch,:attempt,:name,:kind,:step,:size,:storage_key,:multipart_id,"
        ":created_at)",
        row,
    )

def take_upload(con: sqlite3.Connection, upload_id: str) -> dict[str, Any] | None:
    row = con.execute("SELECT * FROM uploads WHERE id=?", (upload_id,)).fetchone()
    if row is None:
        return None
    con.execute("DELETE FROM uploads WHERE id=?", (upload_id,))
    return dict(row)

def record_artifact(con: sqlite3.Connection, up: dict[str, Any], now: float) -> None:
    con.execute("DELETE FROM artifacts WHERE task_id=? AND name=?", (up["task_id"], up["name"]))
    con.execute(
        "INSERT INTO artifacts(task_id, attempt, name, kind, step, size, storage_key, created_at) "
        "VALUES(?,?,?,?,?,?,?,?)",
        (up["task_id"], up["attempt"], up["name"], up["kind"], up["step"], up["size"], up["storage_key"], now),
    )

async def task_artifacts(db: Database, task_id: str) -> list[sqlite3.Row]:
    return await db.read(
        "SELECT name, kind, step, size, attempt, storage_key, created_at FROM artifacts WHERE task_id=? "
        "ORDER BY created_at, name",
        (task_id,),
    )

async def artifact(db: Database, task_id: str, name: str) -> sqlite3.Row | None:
    return await db.read_one(
        "SELECT name, kind, step, size, storage_key FROM artifacts WHERE task_id=? AND name=?", (task_id, name)
    )
