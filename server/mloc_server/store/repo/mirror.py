"""The mirror's statements: pushes of hub snapshots and the snapshots they committed."""

from __future__ import annotations

import json
import sqlite3

from mloc_server.store.database import Database
from mloc_server.store.records import StoredMirror

_COLUMNS = "id, kind, hub_id, revision, files, bytes, uploads, created_at, pushed_by, ready"


def _record(row: sqlite3.Row) -> StoredMirror:
    data = dict(row)
    data["files"] = json.loads(data["files"])
    data["uploads"] = json.loads(data["uploads"])
    data["ready"] = bool(data["ready"])
    return StoredMirror.model_validate(data)


def insert_mirror_push(con: sqlite3.Connection, push: StoredMirror) -> None:
    con.execute(f"INSERT INTO mirror({_COLUMNS}) VALUES(?,?,?,?,?,?,?,?,?,0)",
                (push.id, push.kind, push.hub_id, push.revision, json.dumps(push.files), push.bytes,
                 json.dumps(push.uploads), push.created_at, push.pushed_by))


def commit_mirror_push(con: sqlite3.Connection, push_id: str, now: float) -> StoredMirror | None:
    """Mark a push ready, replacing the ready snapshot of the same (kind, hub id, revision); None if
    it is unknown or already committed."""
    row = con.execute(f"SELECT {_COLUMNS} FROM mirror WHERE id=? AND ready=0", (push_id,)).fetchone()
    if row is None:
        return None
    con.execute("DELETE FROM mirror WHERE kind=? AND hub_id=? AND revision=? AND ready=1",
                (row["kind"], row["hub_id"], row["revision"]))
    con.execute("UPDATE mirror SET ready=1, created_at=?, uploads='{}' WHERE id=?", (now, push_id))
    # pushes of this snapshot never committed (a CLI that stopped half way) are dropped as well
    con.execute("DELETE FROM mirror WHERE kind=? AND hub_id=? AND revision=? AND ready=0 AND created_at<?",
                (row["kind"], row["hub_id"], row["revision"], now - 86400))
    out = _record(row)
    return out.model_copy(update={"ready": True, "created_at": now, "uploads": {}})


async def mirror_push(db: Database, push_id: str) -> StoredMirror | None:
    row = await db.read_one(f"SELECT {_COLUMNS} FROM mirror WHERE id=? AND ready=0", (push_id,))
    return _record(row) if row is not None else None


async def mirrored(db: Database, kind: str | None = None, hub_id: str | None = None) -> list[StoredMirror]:
    sql, params = f"SELECT {_COLUMNS} FROM mirror WHERE ready=1", []
    if kind is not None:
        sql += " AND kind=?"
        params.append(kind)
    if hub_id is not None:
        sql += " AND hub_id=?"
        params.append(hub_id)
    rows = await db.read(sql + " ORDER BY kind, hub_id, created_at DESC", params)
    return [_record(r) for r in rows]
