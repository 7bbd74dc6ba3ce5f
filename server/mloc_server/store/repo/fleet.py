"""Agents and tokens (only hashes of secrets are stored)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from mloc_server.store.database import Database


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

async def all_agents(db: Database) -> list[sqlite3.Row]:
    return await db.read("SELECT * FROM agents")

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

async def token_by_hash(db: Database, token_hash: str) -> sqlite3.Row | None:
    return await db.read_one("SELECT * FROM tokens WHERE token_hash=?", (token_hash,))

async def list_tokens(db: Database) -> list[sqlite3.Row]:
    return await db.read(
        "SELECT id, kind, user, role, created_at, expires_at, max_uses, uses, revoked, note FROM tokens "
        "ORDER BY created_at"
    )
