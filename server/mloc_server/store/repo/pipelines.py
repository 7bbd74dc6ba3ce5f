"""Dependencies and pipelines: the edges between tasks, blocked tasks' transitions, pipeline rows."""

from __future__ import annotations

import sqlite3
from typing import Any

from mloc_server.store.database import Database
from mloc_server.store.records import DependencyState, StoredPipeline
from mloc_server.store.repo.tasks import TASK_COLUMNS

PIPELINE_COLUMNS = "id, name, kind, owner, team, created_at, max_parallel"


def keyed_task(con: sqlite3.Connection, idempotency_key: str) -> str | None:
    row = con.execute("SELECT id FROM tasks WHERE idempotency_key=?", (idempotency_key,)).fetchone()
    return row["id"] if row is not None else None


def find_task_ref(con: sqlite3.Connection, owner: str, ref: str) -> sqlite3.Row | None:
    """``ref`` as an id of ``owner``'s task, else the newest of their tasks whose spec has that ``name``."""
    row = con.execute("SELECT id, name, state FROM tasks WHERE id=? AND owner=?", (ref, owner)).fetchone()
    if row is not None:
        return row
    return con.execute(
        "SELECT id, name, state FROM tasks WHERE owner=? AND name=? AND json_extract(spec, '$.name')=? "
        "ORDER BY created_at DESC, id DESC LIMIT 1", (owner, ref, ref)).fetchone()


def task_dependencies(con: sqlite3.Connection, task_id: str) -> list[DependencyState]:
    rows = con.execute(
        "SELECT d.parent_id, d.condition, COALESCE(t.name, '') AS name, COALESCE(t.state, 'cancelled') AS state "
        "FROM task_deps d LEFT JOIN tasks t ON t.id = d.parent_id WHERE d.task_id=? ORDER BY d.rowid",
        (task_id,)).fetchall()
    return [DependencyState(r["parent_id"], r["condition"], r["name"], r["state"]) for r in rows]


def blocked_dependents(con: sqlite3.Connection, parent_id: str) -> list[str]:
    # CROSS JOIN keeps SQLite on the parent_id index: left to choose, it walks every blocked task (state index)
    rows = con.execute(
        "SELECT t.id FROM task_deps d CROSS JOIN tasks t ON t.id = d.task_id "
        "WHERE d.parent_id=? AND t.state='blocked' ORDER BY t.created_at, t.step_index, t.id", (parent_id,)).fetchall()
    return [r["id"] for r in rows]


def pipeline_slots(con: sqlite3.Connection, task_id: str) -> tuple[str, int, int, list[str]] | None:
    """For a task of a pipeline with ``max_parallel``: (pipeline id, limit, children queued or running,
    blocked children in order); None otherwise."""
    row = con.execute(
        "SELECT p.id, p.max_parallel FROM tasks t JOIN pipelines p ON p.id = t.pipeline_id "
        "WHERE t.id=? AND p.max_parallel IS NOT NULL", (task_id,)).fetchone()
    if row is None:
        return None
    # +state: on the pipeline_id index, not the state one (which would walk every queued or blocked task)
    active = con.execute("SELECT COUNT(*) AS n FROM tasks WHERE pipeline_id=? AND +state IN ('queued', 'running')",
                         (row["id"],)).fetchone()["n"]
    blocked = con.execute("SELECT id FROM tasks WHERE pipeline_id=? AND +state='blocked' ORDER BY step_index, id",
                          (row["id"],)).fetchall()
    return row["id"], int(row["max_parallel"]), int(active), [r["id"] for r in blocked]


def unblock(con: sqlite3.Connection, task_id: str, now: float) -> bool:
    cur = con.execute("UPDATE tasks SET state='queued', queued_at=?, updated_at=?, blocked_reason=NULL "
                      "WHERE id=? AND state='blocked'", (now, now, task_id))
    return cur.rowcount == 1


def set_blocked_reason(con: sqlite3.Connection, task_id: str, reason: str) -> None:
    con.execute("UPDATE tasks SET blocked_reason=? WHERE id=? AND state='blocked'", (reason, task_id))


def cancel_blocked(con: sqlite3.Connection, task_id: str, reason: str, now: float) -> bool:
    cur = con.execute(
        "UPDATE tasks SET state='cancelled', cancel_requested=1, finished_at=?, updated_at=?, error=?, "
        "blocked_reason=NULL WHERE id=? AND state='blocked'", (now, now, reason, task_id))
    return cur.rowcount == 1


def insert_pipeline(con: sqlite3.Connection, p: StoredPipeline) -> None:
    con.execute(f"INSERT INTO pipelines({PIPELINE_COLUMNS}) VALUES(?,?,?,?,?,?,?)",
                (p.id, p.name, p.kind, p.owner, p.team or None, p.created_at, p.max_parallel))


def _pipeline(row: sqlite3.Row | None) -> StoredPipeline | None:
    return StoredPipeline.model_validate(dict(row)) if row is not None else None


async def get_pipeline(db: Database, pipeline_id: str) -> StoredPipeline | None:
    return _pipeline(await db.read_one(f"SELECT {PIPELINE_COLUMNS} FROM pipelines WHERE id=?", (pipeline_id,)))


async def list_pipelines(db: Database, owner: str | None, page: int,
                         page_size: int) -> tuple[list[StoredPipeline], int]:
    clause, params = ("WHERE owner=?", [owner]) if owner else ("", [])
    total = await db.read_one(f"SELECT COUNT(*) AS n FROM pipelines {clause}", params)
    rows = await db.read(f"SELECT {PIPELINE_COLUMNS} FROM pipelines {clause} ORDER BY created_at DESC, id DESC "
                         "LIMIT ? OFFSET ?", [*params, page_size, (page - 1) * page_size])
    return [StoredPipeline.model_validate(dict(r)) for r in rows], int(total["n"]) if total else 0


async def pipeline_tasks(db: Database, pipeline_ids: list[str]) -> list[sqlite3.Row]:
    if not pipeline_ids:
        return []
    marks = ",".join("?" * len(pipeline_ids))
    return await db.read(f"SELECT {TASK_COLUMNS} FROM tasks WHERE pipeline_id IN ({marks}) "
                         "ORDER BY step_index, created_at, id", pipeline_ids)


async def blocked_tasks(db: Database) -> list[str]:
    rows = await db.read("SELECT id FROM tasks WHERE state='blocked' ORDER BY created_at, step_index, id")
    return [r["id"] for r in rows]


async def dependencies_of(db: Database, task_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each task's dependencies as the API shows them: [{task, condition}]."""
    if not task_ids:
        return {}
    marks = ",".join("?" * len(task_ids))
    rows = await db.read(f"SELECT task_id, parent_id, condition FROM task_deps WHERE task_id IN ({marks}) "
                         "ORDER BY rowid", task_ids)
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["task_id"], []).append({"task": r["parent_id"], "condition": r["condition"]})
    return out


