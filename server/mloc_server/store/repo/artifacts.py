"""Pending uploads and recorded artifacts/checkpoints."""

from __future__ import annotations

import sqlite3

from mloc_server.store.database import Database
from mloc_server.store.records import PendingUpload, StoredArtifact
from mloc_server.store.repo.tasks import set_checkpoint

ARTIFACT_COLUMNS = "name, kind, step, size, attempt, storage_key, created_at"


def insert_upload(con: sqlite3.Connection, up: PendingUpload) -> None:
    con.execute(
        "INSERT INTO uploads(id, task_id, epoch, attempt, name, kind, step, size, storage_key, multipart_id, "
        "created_at) VALUES(:id,:task_id,:epoch,:attempt,:name,:kind,:step,:size,:storage_key,:multipart_id,"
        ":created_at)",
        up.model_dump(),
    )


def commit_upload(con: sqlite3.Connection, upload_id: str, now: float) -> PendingUpload | None:
    """Take the pending upload, record its artifact (one per task and name), and make a checkpoint the
    task's resume point."""
    row = con.execute("DELETE FROM uploads WHERE id=? RETURNING *", (upload_id,)).fetchone()
    if row is None:
        return None
    up = PendingUpload.model_validate(dict(row))
    con.execute("DELETE FROM artifacts WHERE task_id=? AND name=?", (up.task_id, up.name))
    con.execute(
        "INSERT INTO artifacts(task_id, attempt, name, kind, step, size, storage_key, created_at) "
        "VALUES(?,?,?,?,?,?,?,?)",
        (up.task_id, up.attempt, up.name, up.kind, up.step, up.size, up.storage_key, now),
    )
    if up.kind == "checkpoint":
        set_checkpoint(con, up.task_id, {"name": up.name, "step": up.step, "size": up.size,
                                         "storage_key": up.storage_key})
    return up


async def pending_upload(db: Database, upload_id: str, task_id: str) -> PendingUpload | None:
    row = await db.read_one("SELECT * FROM uploads WHERE id=? AND task_id=?", (upload_id, task_id))
    return PendingUpload.model_validate(dict(row)) if row is not None else None


async def task_artifacts(db: Database, task_id: str) -> list[StoredArtifact]:
    rows = await db.read(
        f"SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE task_id=? ORDER BY created_at, name", (task_id,)
    )
    return [StoredArtifact.model_validate(dict(r)) for r in rows]


async def artifact(db: Database, task_id: str, name: str) -> StoredArtifact | None:
    row = await db.read_one(f"SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE task_id=? AND name=?", (task_id, name))
    return StoredArtifact.model_validate(dict(row)) if row is not None else None
