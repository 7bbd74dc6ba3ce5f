"""Every SQL statement of the coordinator lives here (services never write SQL).

Write functions take a sqlite3 connection and run on the writer thread inside a group-committed
transaction (see database.py); they check row counts so that a claim or a state change is a
compare-and-set. Read functions are async and use the reader connection.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mloc_shared.errors import Conflict

from mloc_server.store.database import Database

TASK_COLUMNS = (
    "id, name, task_type, owner, spec, state, priority, created_at, updated_at, queued_at, started_at, "
    "finished_at, attempts, max_attempts, not_before, gpus_required, requirement, agent_id, epoch, "
    "lease_gpus, claim_id, progress, result, error, exit_code, cancel_requested, idempotency_key, "
    "last_checkpoint"
)


@dataclass
class NewTask:
    id: str
    name: str
    task_type: str
    owner: str
    spec: str
    priority: int
    created_at: float
    max_attempts: int
    gpus_required: int
    requirement: str
    idempotency_key: str | None
    body_hash: str | None


# -- tasks: writes ----------------------------------------------------------------------------


def insert_task(con: sqlite3.Connection, t: NewTask) -> tuple[str, bool]:
    """Insert a task; with an idempotency key already used, return that task instead.

    Returns (task_id, created). The same key with a different body is a conflict.
    """
    if t.idempotency_key:
        row = con.execute(
            "SELECT id, body_hash FROM tasks WHERE idempotency_key=?", (t.idempotency_key,)
        ).fetchone()
        if row is not None:
            if row["body_hash"] != t.body_hash:
                raise Conflict(
                    "this Idempotency-Key was already used for a different task body",
                    field="Idempotency-Key",
                    hint="use a new key for a new task",
                )
            return row["id"], False
    con.execute(
        "INSERT INTO tasks(id, name, task_type, owner, spec, state, priority, created_at, updated_at, "
        "queued_at, attempts, max_attempts, not_before, gpus_required, requirement, epoch, lease_gpus, "
        "cancel_requested, idempotency_key, body_hash) "
        "VALUES(?,?,?,?,?,'queued',?,?,?,?,0,?,0,?,?,0,'[]',0,?,?)",
        (
            t.id, t.name, t.task_type, t.owner, t.spec, t.priority, t.created_at, t.created_at,
            t.created_at, t.max_attempts, t.gpus_required, t.requirement, t.idempotency_key, t.body_hash,
        ),
    )
    return t.id, True


def task_row(con: sqlite3.Connection, task_id: str) -> sqlite3.Row:
    return con.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id=?", (task_id,)).fetchone()


@dataclass
class Claim:
    task_id: str
    gpus: tuple[int, ...]


@dataclass
class Claimed:
    task_id: str
    epoch: int
    attempt: int
    task_type: str
    spec: str
    last_checkpoint: str | None
    started_at: float


def claim_tasks(
    con: sqlite3.Connection, agent_id: str, claims: Sequence[Claim], claim_id: str, now: float
) -> list[Claimed]:
    """Turn queued tasks into leases for ``agent_id``: compare-and-set on state='queued'."""
    out: list[Claimed] = []
    for c in claims:
        cur = con.execute(
            "UPDATE tasks SET state='running', agent_id=?, epoch=epoch+1, attempts=attempts+1, "
            "lease_gpus=?, claim_id=?, started_at=COALESCE(started_at, ?), updated_at=?, error=NULL "
            "WHERE id=? AND state='queued' RETURNING epoch, attempts, task_type, spec, last_checkpoint",
            (agent_id, json.dumps(list(c.gpus)), claim_id, now, now, c.task_id),
        )
        row = cur.fetchone()
        if row is None:
            continue
        con.execute(
            "INSERT INTO attempts(task_id, attempt, epoch, agent_id, gpus, gpu_count, started_at) "
            "VALUES(?,?,?,?,?,?,?)",
            (c.task_id, row["attempts"], row["epoch"], agent_id, json.dumps(list(c.gpus)), len(c.gpus), now),
        )
        out.append(
            Claimed(c.task_id, row["epoch"], row["attempts"], row["task_type"], row["spec"],
                    row["last_checkpoint"], now)
        )
    return out


def finish_task(
    con: sqlite3.Connection,
    task_id: str,
    epoch: int,
    state: str,
    now: float,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    exit_code: int | None = None,
    progress: dict[str, Any] | None = None,
) -> bool:
    """Move a running task at ``epoch`` to a final state; False if it was not (a stale epoch)."""
    cur = con.execute(
        "UPDATE tasks SET state=?, finished_at=?, updated_at=?, result=?, error=?, exit_code=?, "
        "progress=COALESCE(?, progress) WHERE id=? AND epoch=? AND state='running'",
        (
            state, now, now, json.dumps(result) if result is not None else None, error, exit_code,
            json.dumps(progress) if progress is not None else None, task_id, epoch,
        ),
    )
    if cur.rowcount != 1:
        return False
    _end_attempt(con, task_id, epoch, state, error, now)
    return True


def requeue_task(
    con: sqlite3.Connection, task_id: str, epoch: int, reason: str, not_before: float, now: float
) -> str | None:
    """A lease was lost: queue the task again, or fail it when attempts are used up.

    Returns the new state ('queued' or 'failed'), or None when the epoch was stale.
    """
    row = con.execute(
        "SELECT attempts, max_attempts, cancel_requested FROM tasks WHERE id=? AND epoch=? AND state='running'",
        (task_id, epoch),
    ).fetchone()
    if row is None:
        return None
    _end_attempt(con, task_id, epoch, "lost", reason, now)
    if row["cancel_requested"]:
        con.execute(
            "UPDATE tasks SET state='cancelled', finished_at=?, updated_at=?, error=? WHERE id=?",
            (now, now, f"cancelled ({reason})", task_id),
        )
        return "cancelled"
    if row["attempts"] >= row["max_attempts"]:
        con.execute(
            "UPDATE tasks SET state='failed', finished_at=?, updated_at=?, error=? WHERE id=?",
            (now, now, f"{reason}; gave up after {row['attempts']} attempt(s) (retry.max_attempts)", task_id),
        )
        return "failed"
    con.execute(
        "UPDATE tasks SET state='queued', queued_at=?, not_before=?, updated_at=?, error=?, claim_id=NULL, "
        "lease_gpus='[]' WHERE id=?",
        (now, not_before, now, f"attempt {row['attempts']}: {reason}", task_id),
    )
    return "queued"


def _end_attempt(con: sqlite3.Connection, task_id: str, epoch: int, outcome: str, error: str | None, now: float):
    con.execute(
        "UPDATE attempts SET ended_at=?, outcome=?, error=? WHERE task_id=? AND epoch=? AND ended_at IS NULL",
        (now, outcome, error, task_id, epoch),
    )


def cancel_queued(con: sqlite3.Connection, task_id: str, now: float) -> bool:
    cur = con.execute(
        "UPDATE tasks SET state='cancelled', cancel_requested=1, finished_at=?, updated_at=?, "
        "error='cancelled before it started' WHERE id=? AND state='queued'",
        (now, now, task_id),
    )
    return cur.rowcount == 1


def request_cancel(con: sqlite3.Connection, task_id: str, now: float) -> bool:
    cur = con.execute(
        "UPDATE tasks SET cancel_requested=1, updated_at=? WHERE id=? AND state='running'", (now, task_id)
    )
    return cur.rowcount == 1


def save_progress(con: sqlite3.Connection, items: Iterable[tuple[str, int, dict[str, Any]]]) -> None:
    con.executemany(
        "UPDATE tasks SET progress=? WHERE id=? AND epoch=? AND state='running'",
        [(json.dumps(p), tid, ep) for tid, ep, p in items],
    )


def set_checkpoint(con: sqlite3.Connection, task_id: str, checkpoint: dict[str, Any]) -> None:
    con.execute("UPDATE tasks SET last_checkpoint=? WHERE id=?", (json.dumps(checkpoint), task_id))


def insert_logs(
    con: sqlite3.Connection, task_id: str, attempt: int, chunks: Iterable[tuple[int, str, str]], now: float
) -> None:
    """Idempotent by (task, attempt, seq): a resent chunk is ignored."""
    con.executemany(
        "INSERT OR IGNORE INTO logs(task_id, attempt, seq, stream, data, created_at) VALUES(?,?,?,?,?,?)",
        [(task_id, attempt, seq, stream, data, now) for seq, stream, data in chunks],
    )


# -- agents: writes ---------------------------------------------------------------------------


def upsert_agent(con: sqlite3.Connection, a: dict[str, Any]) -> None:
    con.execute(
        "INSERT INTO agents(id, name, credential_hash, labels, inventory, task_types, max_tasks, state, "
        "version, registered_at, last_seen) VALUES(:id,:name,:credential_hash,:labels,:inventory,:task_types,"
        ":max_tasks,:state,:version,:registered_at,:last_seen) ON CONFLICT(id) DO UPDATE SET "
        "labels=excluded.labels, inventory=excluded.inventory, task_types=excluded.task_types, "
        "max_tasks=excluded.max_tasks, version=excluded.version, last_seen=excluded.last_seen",
        a,
    )


def touch_agents(con: sqlite3.Connection, seen: Iterable[tuple[float, str]]) -> None:
    con.executemany("UPDATE agents SET last_seen=? WHERE id=?", list(seen))


def set_agent_state(con: sqlite3.Connection, agent_id: str, state: str) -> None:
    con.execute("UPDATE agents SET state=? WHERE id=?", (state, agent_id))


# -- tokens -----------------------------------------------------------------------------------


def insert_token(con: sqlite3.Connection, row: dict[str, Any]) -> None:
    con.execute(
        "INSERT INTO tokens(id, kind, token_hash, user, role, created_at, expires_at, max_uses, uses, revoked, note) "
        "VALUES(:id,:kind,:token_hash,:user,:role,:created_at,:expires_at,:max_uses,0,0,:note)",
        row,
    )


def use_join_token(con: sqlite3.Connection, token_hash: str, now: float) -> bool:
    """Count one use of a join token if it is valid now (not revoked, expired or used up)."""
    cur = con.execute(
        "UPDATE tokens SET uses=uses+1 WHERE token_hash=? AND kind='join' AND revoked=0 "
        "AND (expires_at IS NULL OR expires_at > ?) AND (max_uses IS NULL OR uses < max_uses)",
        (token_hash, now),
    )
    return cur.rowcount == 1


def revoke_token(con: sqlite3.Connection, token_id: str) -> bool:
    return con.execute("UPDATE tokens SET revoked=1 WHERE id=?", (token_id,)).rowcount == 1


# -- artifacts --------------------------------------------------------------------------------


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


# -- reads ------------------------------------------------------------------------------------


async def get_task(db: Database, task_id: str) -> sqlite3.Row | None:
    return await db.read_one(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id=?", (task_id,))


async def list_tasks(
    db: Database, *, state: str | Sequence[str] | None, owner: str | None, task_type: str | None, page: int,
    page_size: int,
) -> tuple[list[sqlite3.Row], int]:
    where, params = [], []
    states = (state,) if isinstance(state, str) else tuple(state or ())
    if states:  # several states at once: the status page's "finished" list
        where.append(f"state IN ({','.join('?' * len(states))})")
        params.extend(states)
    for column, value in (("owner", owner), ("task_type", task_type)):
        if value:
            where.append(f"{column}=?")
            params.append(value)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    total = await db.read_one(f"SELECT COUNT(*) AS n FROM tasks {clause}", params)
    rows = await db.read(
        f"SELECT {TASK_COLUMNS} FROM tasks {clause} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
        [*params, page_size, (page - 1) * page_size],
    )
    return rows, int(total["n"]) if total else 0


async def task_attempts(db: Database, task_id: str) -> list[sqlite3.Row]:
    return await db.read(
        "SELECT attempt, epoch, agent_id, gpus, started_at, ended_at, outcome, error FROM attempts "
        "WHERE task_id=? ORDER BY attempt",
        (task_id,),
    )


async def task_logs(
    db: Database, task_id: str, attempt: int | None, after: tuple[int, int], limit: int = 1000
) -> list[sqlite3.Row]:
    """Log chunks after the (attempt, seq) cursor, in order."""
    if attempt is not None:
        return await db.read(
            "SELECT attempt, seq, stream, data FROM logs WHERE task_id=? AND attempt=? AND seq>? "
            "ORDER BY seq LIMIT ?",
            (task_id, attempt, after[1] if after[0] == attempt else -1, limit),
        )
    return await db.read(
        "SELECT attempt, seq, stream, data FROM logs WHERE task_id=? AND (attempt>? OR (attempt=? AND seq>?)) "
        "ORDER BY attempt, seq LIMIT ?",
        (task_id, after[0], after[0], after[1], limit),
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


async def active_tasks(db: Database) -> list[sqlite3.Row]:
    return await db.read(f"SELECT {TASK_COLUMNS} FROM tasks WHERE state IN ('queued', 'running')")


async def all_agents(db: Database) -> list[sqlite3.Row]:
    return await db.read("SELECT * FROM agents")


async def token_by_hash(db: Database, token_hash: str) -> sqlite3.Row | None:
    return await db.read_one("SELECT * FROM tokens WHERE token_hash=?", (token_hash,))


async def list_tokens(db: Database) -> list[sqlite3.Row]:
    return await db.read(
        "SELECT id, kind, user, role, created_at, expires_at, max_uses, uses, revoked, note FROM tokens "
        "ORDER BY created_at"
    )


async def stats(
    db: Database, owner: str | None, start: float | None, end: float | None
) -> dict[str, Any]:
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
        "SELECT t.owner, SUM(a.gpu_count * (COALESCE(a.ended_at, strftime('%s','now')) - a.started_at)) / 3600.0 h "
        f"FROM attempts a JOIN tasks t ON t.id=a.task_id {clause} GROUP BY t.owner",
        params,
    )
    hours = {r["owner"]: r["h"] or 0.0 for r in gpu_hours}
    return {
        "tasks_by_state": {r["state"]: r["n"] for r in by_state},
        "tasks_by_type": {r["task_type"]: r["n"] for r in by_type},
        "users": [
            {"user": r["owner"], "tasks": r["n"], "gpu_hours": round(hours.get(r["owner"], 0.0), 4),
             "avg_queue_wait_s": round(r["wait"], 3) if r["wait"] is not None else None}
            for r in by_owner
        ],
        "gpu_hours": round(sum(hours.values()), 4),
        "total_tasks": sum(r["n"] for r in by_state),
    }
