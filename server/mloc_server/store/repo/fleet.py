"""Agents and tokens (only hashes of secrets are stored)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from mloc_shared.protocol import Inventory

from mloc_server.store.database import Database
from mloc_server.store.records import StoredAgent, StoredToken


def save_agent(con: sqlite3.Connection, a: StoredAgent) -> None:
    con.execute(
        "INSERT INTO agents(id, name, credential_hash, labels, inventory, task_types, max_tasks, state, "
        "version, registered_at, last_seen, network, addresses) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT(id) DO UPDATE SET "
        "credential_hash=excluded.credential_hash, labels=excluded.labels, inventory=excluded.inventory, "
        "task_types=excluded.task_types, max_tasks=excluded.max_tasks, version=excluded.version, "
        "last_seen=excluded.last_seen, network=excluded.network, addresses=excluded.addresses",
        (a.id, a.name, a.credential_hash, json.dumps(a.labels), a.inventory.model_dump_json(),
         json.dumps(sorted(a.task_types)), a.max_tasks, a.state, a.version, a.registered_at, a.last_seen,
         a.network, json.dumps(a.addresses)),
    )


def touch_agents(con: sqlite3.Connection, seen: Iterable[tuple[float, str]]) -> None:
    con.executemany("UPDATE agents SET last_seen=? WHERE id=?", list(seen))


def save_inventories(con: sqlite3.Connection, inventories: Iterable[tuple[Inventory, str]]) -> None:
    con.executemany("UPDATE agents SET inventory=? WHERE id=?",
                    [(inv.model_dump_json(), agent_id) for inv, agent_id in inventories])


def set_agent_state(con: sqlite3.Connection, agent_id: str, state: str) -> bool:
    return con.execute("UPDATE agents SET state=? WHERE id=?", (state, agent_id)).rowcount == 1


def delete_agent(con: sqlite3.Connection, agent_id: str) -> bool:
    return con.execute("DELETE FROM agents WHERE id=?", (agent_id,)).rowcount == 1


async def all_agents(db: Database) -> list[StoredAgent]:
    return [
        StoredAgent(
            id=r["id"], name=r["name"], credential_hash=r["credential_hash"], labels=json.loads(r["labels"]),
            inventory=Inventory.model_validate_json(r["inventory"]), task_types=json.loads(r["task_types"]),
            max_tasks=r["max_tasks"], state=r["state"], version=r["version"], registered_at=r["registered_at"],
            last_seen=r["last_seen"], network=r["network"], addresses=json.loads(r["addresses"] or "[]"),
        )
        for r in await db.read("SELECT * FROM agents")
    ]


def insert_token(con: sqlite3.Connection, t: StoredToken) -> None:
    con.execute(
        "INSERT INTO tokens(id, kind, token_hash, user, role, created_at, expires_at, max_uses, uses, revoked, note, "
        "team) "
        "VALUES(?,?,?,?,?,?,?,?,0,0,?,?)",
        (t.id, t.kind, t.token_hash, t.user, t.role, t.created_at, t.expires_at, t.max_uses, t.note, t.team or None),
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


def _token(row: sqlite3.Row) -> StoredToken:
    return StoredToken.model_validate(dict(row))


async def active_user_tokens(db: Database, now: float) -> list[StoredToken]:
    rows = await db.read(
        "SELECT * FROM tokens WHERE kind='user' AND revoked=0 AND (expires_at IS NULL OR expires_at > ?)", (now,)
    )
    return [_token(r) for r in rows]


async def token_by_hash(db: Database, token_hash: str) -> StoredToken | None:
    row = await db.read_one("SELECT * FROM tokens WHERE token_hash=?", (token_hash,))
    return _token(row) if row is not None else None


async def list_tokens(db: Database) -> list[StoredToken]:
    return [_token(r) for r in await db.read("SELECT * FROM tokens ORDER BY created_at")]
