"""Tasks and their attempts: submit, claim (compare-and-set), finish, requeue, cancel, reads."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from mloc_shared.errors import Conflict

from mloc_server.store.database import Database
from mloc_server.store.records import Claim, Claimed, GangMember, NewTask

TASK_COLUMNS = (
    "id, name, task_type, owner, spec, state, priority, created_at, updated_at, queued_at, started_at, "
    "finished_at, attempts, max_attempts, not_before, gpus_required, requirement, agent_id, epoch, "
    "lease_gpus, claim_id, progress, result, error, exit_code, cancel_requested, idempotency_key, "
    "last_checkpoint, preemptions, team, gang, pipeline_id, step, step_index, sweep_values, blocked_reason"
)

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
        "cancel_requested, idempotency_key, body_hash, team, pipeline_id, step, step_index, sweep_values, "
        "blocked_reason) "
        "VALUES(?,?,?,?,?,?,?,?,?,?,0,?,0,?,?,0,'[]',0,?,?,?,?,?,?,?,?)",
        (
            t.id, t.name, t.task_type, t.owner, t.spec, t.state, t.priority, t.created_at, t.created_at,
            t.created_at, t.max_attempts, t.gpus_required, t.requirement, t.idempotency_key, t.body_hash,
            t.team or None, t.pipeline_id, t.step, t.step_index, t.sweep_values, t.blocked_reason,
        ),
    )
    if t.depends:
        con.executemany(
            "INSERT OR IGNORE INTO task_deps(task_id, parent_id, condition, field) VALUES(?,?,?,?)",
            [(t.id, d.parent_id, d.condition, d.field) for d in t.depends],
        )
    return t.id, True

def task_row(con: sqlite3.Connection, task_id: str) -> sqlite3.Row:
    return con.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id=?", (task_id,)).fetchone()

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
            "INSERT INTO attempts(task_id, attempt, epoch, agent_id, gpus, gpu_count, started_at, model_cached) "
            "VALUES(?,?,?,?,?,?,?,?)",
            (c.task_id, row["attempts"], row["epoch"], agent_id, json.dumps(list(c.gpus)), len(c.gpus), now,
             c.model_cached),
        )
        out.append(
            Claimed(c.task_id, row["epoch"], row["attempts"], row["task_type"], row["spec"],
                    row["last_checkpoint"], now)
        )
    return out

def claim_gang(
    con: sqlite3.Connection, task_id: str, members: Sequence[GangMember], network: str, claim_id: str, now: float
) -> Claimed | None:
    """Lease a queued task to several agents at once (a gang; ``members[i]`` is node rank i): one
    compare-and-set, one epoch, one attempt that names every member. Node rank 0's agent is the task's
    ``agent_id``; all of them are in ``gang``. None if it is no longer queued."""
    gang = json.dumps({"network": network, "members": [{"agent_id": m.agent_id, "gpus": list(m.gpus)}
                                                        for m in members]})
    row = con.execute(
        "UPDATE tasks SET state='running', agent_id=?, epoch=epoch+1, attempts=attempts+1, lease_gpus=?, "
        "claim_id=?, started_at=COALESCE(started_at, ?), updated_at=?, error=NULL, gang=? "
        "WHERE id=? AND state='queued' RETURNING epoch, attempts, task_type, spec, last_checkpoint",
        (members[0].agent_id, json.dumps(list(members[0].gpus)), claim_id, now, now, gang, task_id),
    ).fetchone()
    if row is None:
        return None
    con.execute(
        "INSERT INTO attempts(task_id, attempt, epoch, agent_id, gpus, gpu_count, started_at, members) "
        "VALUES(?,?,?,?,?,?,?,?)",
        (task_id, row["attempts"], row["epoch"], members[0].agent_id, json.dumps(list(members[0].gpus)),
         sum(len(m.gpus) for m in members), now, json.dumps([m.agent_id for m in members])),
    )
    return Claimed(task_id, row["epoch"], row["attempts"], row["task_type"], row["spec"], row["last_checkpoint"], now)

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
    start: str | None = None,
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
    _end_attempt(con, task_id, epoch, state, error, now, start)
    return True

def requeue_task(
    con: sqlite3.Connection, task_id: str, epoch: int, reason: str, not_before: float, now: float, *,
    preempted: bool = False, start: str | None = None,
) -> str | None:
    """A lease was lost: queue the task again, or fail it when attempts are used up. A ``preempted``
    attempt (it checkpointed on request) is not a failed one: it counts in ``preemptions``, not
    against max_attempts.

    Returns the new state ('queued' or 'failed'), or None when the epoch was stale.
    """
    row = con.execute(
        "SELECT attempts - COALESCE(preemptions, 0) AS failed, max_attempts, cancel_requested FROM tasks "
        "WHERE id=? AND epoch=? AND state='running'",
        (task_id, epoch),
    ).fetchone()
    if row is None:
        return None
    _end_attempt(con, task_id, epoch, "preempted" if preempted else "lost", reason, now, start)
    if preempted:
        con.execute("UPDATE tasks SET preemptions=COALESCE(preemptions, 0)+1 WHERE id=?", (task_id,))
    if row["cancel_requested"]:
        con.execute(
            "UPDATE tasks SET state='cancelled', finished_at=?, updated_at=?, error=? WHERE id=?",
            (now, now, f"cancelled ({reason})", task_id),
        )
        return "cancelled"
    if not preempted and row["failed"] >= row["max_attempts"]:
        con.execute(
            "UPDATE tasks SET state='failed', finished_at=?, updated_at=?, error=? WHERE id=?",
            (now, now, f"{reason}; gave up after {row['failed']} attempt(s) (retry.max_attempts)", task_id),
        )
        return "failed"
    con.execute(
        "UPDATE tasks SET state='queued', queued_at=?, not_before=?, updated_at=?, error=?, claim_id=NULL, "
        "lease_gpus='[]' WHERE id=?",
        (now, not_before, now, f"{'preempted' if preempted else 'attempt ' + str(row['failed'])}: {reason}", task_id),
    )
    return "queued"

def _end_attempt(con: sqlite3.Connection, task_id: str, epoch: int, outcome: str, error: str | None, now: float,
                 start: str | None = None):
    con.execute(
        "UPDATE attempts SET ended_at=?, outcome=?, error=?, start=COALESCE(?, start) "
        "WHERE task_id=? AND epoch=? AND ended_at IS NULL",
        (now, outcome, error, start, task_id, epoch),
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

def set_priority(con: sqlite3.Connection, task_id: str, priority_class: str | None, priority: int | None,
                 now: float) -> bool:
    """Change a queued or running task's priority class and/or priority (in its spec, where recovery
    reads them); False when the task is not queued or running."""
    row = con.execute("SELECT spec FROM tasks WHERE id=? AND state IN ('queued', 'running')", (task_id,)).fetchone()
    if row is None:
        return False
    spec = json.loads(row["spec"])
    if priority_class is not None:
        spec["priority_class"] = priority_class
    if priority is not None:
        spec["priority"] = priority
    con.execute("UPDATE tasks SET spec=?, priority=COALESCE(?, priority), updated_at=? WHERE id=?",
                (json.dumps(spec, sort_keys=True), priority, now, task_id))
    return True

def save_progress(con: sqlite3.Connection, items: Iterable[tuple[str, int, dict[str, Any]]]) -> None:
    con.executemany(
        "UPDATE tasks SET progress=? WHERE id=? AND epoch=? AND state='running'",
        [(json.dumps(p), tid, ep) for tid, ep, p in items],
    )

def set_checkpoint(con: sqlite3.Connection, task_id: str, checkpoint: dict[str, Any]) -> None:
    con.execute("UPDATE tasks SET last_checkpoint=? WHERE id=?", (json.dumps(checkpoint), task_id))

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
        "SELECT attempt, epoch, agent_id, gpus, started_at, ended_at, outcome, error, members, model_cached, start "
        "FROM attempts "
        "WHERE task_id=? ORDER BY attempt",
        (task_id,),
    )

async def active_tasks(db: Database) -> list[sqlite3.Row]:
    return await db.read(f"SELECT {TASK_COLUMNS} FROM tasks WHERE state IN ('queued', 'running')")
