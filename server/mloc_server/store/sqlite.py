"""The SQLite backend of the store: the seam's methods over store/repo's statements and database.py's
group-committed writer. Rows become records here, so nothing above sees a ``sqlite3.Row``."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from mloc_shared.protocol import Inventory

from mloc_server.store import records as rec
from mloc_server.store import repo
from mloc_server.store.base import Store, StoreTx
from mloc_server.store.database import Database
from mloc_server.store.repo import pipelines as prepo

T = TypeVar("T")


def _task(row: sqlite3.Row | None) -> rec.StoredTask | None:
    return rec.StoredTask.model_validate(dict(row)) if row is not None else None


class SqliteTx(StoreTx):
    """The writes of one group-committed transaction, on the writer thread's connection."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def insert_task(self, task: rec.NewTask) -> tuple[str, bool]:
        return repo.insert_task(self.con, task)

    def get_task(self, task_id: str) -> rec.StoredTask | None:
        return _task(repo.task_row(self.con, task_id))

    def claim_tasks(self, agent_id: str, claims: Sequence[rec.Claim], claim_id: str, now: float) -> list[rec.Claimed]:
        return repo.claim_tasks(self.con, agent_id, claims, claim_id, now)

    def claim_gang(self, task_id: str, members: Sequence[rec.GangMember], network: str, claim_id: str,
                   now: float) -> rec.Claimed | None:
        return repo.claim_gang(self.con, task_id, members, network, claim_id, now)

    def finish_task(self, task_id: str, epoch: int, state: str, now: float, *, result: dict[str, Any] | None = None,
                    error: str | None = None, exit_code: int | None = None,
                    progress: dict[str, Any] | None = None, start: str | None = None) -> bool:
        return repo.finish_task(self.con, task_id, epoch, state, now, result=result, error=error,
                                exit_code=exit_code, progress=progress, start=start)

    def requeue_task(self, task_id: str, epoch: int, reason: str, not_before: float, now: float, *,
                     preempted: bool = False, start: str | None = None) -> str | None:
        return repo.requeue_task(self.con, task_id, epoch, reason, not_before, now, preempted=preempted, start=start)

    def cancel_queued(self, task_id: str, now: float) -> bool:
        return repo.cancel_queued(self.con, task_id, now)

    def request_cancel(self, task_id: str, now: float) -> bool:
        return repo.request_cancel(self.con, task_id, now)

    def set_priority(self, task_id: str, priority_class: str | None, priority: int | None, now: float) -> bool:
        return repo.set_priority(self.con, task_id, priority_class, priority, now)

    def save_progress(self, items: Iterable[tuple[str, int, dict[str, Any]]]) -> None:
        repo.save_progress(self.con, items)

    def add_progress_points(self, batches: Iterable[rec.PointBatch]) -> dict[tuple[str, int], int]:
        return repo.add_progress_points(self.con, batches)

    def keyed_task(self, idempotency_key: str) -> str | None:
        return prepo.keyed_task(self.con, idempotency_key)

    def find_task_ref(self, owner: str, ref: str) -> tuple[str, str, str] | None:
        row = prepo.find_task_ref(self.con, owner, ref)
        return (row["id"], row["name"], row["state"]) if row is not None else None

    def task_dependencies(self, task_id: str) -> list[rec.DependencyState]:
        return prepo.task_dependencies(self.con, task_id)

    def blocked_dependents(self, parent_id: str) -> list[str]:
        return prepo.blocked_dependents(self.con, parent_id)

    def pipeline_slots(self, task_id: str) -> tuple[str, int, int, list[str]] | None:
        return prepo.pipeline_slots(self.con, task_id)

    def unblock(self, task_id: str, now: float) -> bool:
        return prepo.unblock(self.con, task_id, now)

    def set_blocked_reason(self, task_id: str, reason: str) -> None:
        prepo.set_blocked_reason(self.con, task_id, reason)

    def cancel_blocked(self, task_id: str, reason: str, now: float) -> bool:
        return prepo.cancel_blocked(self.con, task_id, reason, now)

    def insert_pipeline(self, pipeline: rec.StoredPipeline) -> None:
        prepo.insert_pipeline(self.con, pipeline)

    def save_agent(self, agent: rec.StoredAgent) -> None:
        repo.save_agent(self.con, agent)

    def touch_agents(self, seen: Iterable[tuple[float, str]]) -> None:
        repo.touch_agents(self.con, seen)

    def save_inventories(self, inventories: Iterable[tuple[Inventory, str]]) -> None:
        repo.save_inventories(self.con, inventories)

    def delete_agent(self, agent_id: str) -> bool:
        return repo.delete_agent(self.con, agent_id)

    def set_agent_state(self, agent_id: str, state: str) -> bool:
        return repo.set_agent_state(self.con, agent_id, state)

    def insert_token(self, token: rec.StoredToken) -> None:
        repo.insert_token(self.con, token)

    def use_join_token(self, token_hash: str, now: float) -> bool:
        return repo.use_join_token(self.con, token_hash, now)

    def revoke_token(self, token_id: str) -> bool:
        return repo.revoke_token(self.con, token_id)

    def insert_upload(self, upload: rec.PendingUpload) -> None:
        repo.insert_upload(self.con, upload)

    def commit_upload(self, upload_id: str, now: float) -> rec.PendingUpload | None:
        return repo.commit_upload(self.con, upload_id, now)

    def insert_logs(self, task_id: str, attempt: int, chunks: Iterable[tuple[int, str, str]], now: float) -> None:
        repo.insert_logs(self.con, task_id, attempt, chunks, now)

    def insert_secrets(self, task_id: str, ciphertext: str, now: float) -> None:
        repo.insert_secrets(self.con, task_id, ciphertext, now)

    def delete_secrets(self, task_ids: Iterable[str]) -> None:
        repo.delete_secrets(self.con, task_ids)

    def insert_mirror_push(self, push: rec.StoredMirror) -> None:
        repo.insert_mirror_push(self.con, push)

    def commit_mirror_push(self, push_id: str, now: float) -> rec.StoredMirror | None:
        return repo.commit_mirror_push(self.con, push_id, now)


class SqliteStore(Store):
    """The store in one SQLite file (WAL): one writer thread with group commit, one async reader."""

    def __init__(self, database: Database) -> None:
        self.database = database

    @classmethod
    def at(cls, path: str, synchronous: str = "normal") -> SqliteStore:
        """A store for the SQLite file at ``path`` (created on open)."""
        return cls(Database(path, synchronous))

    @property
    def healthy(self) -> bool:
        return self.database.healthy

    @property
    def last_error(self) -> str | None:
        return self.database.last_error

    async def open(self) -> None:
        await self.database.open()

    async def close(self) -> None:
        await self.database.close()

    async def write(self, fn: Callable[[StoreTx], T]) -> T:
        return await self.database.write(lambda con: fn(SqliteTx(con)))

    async def probe(self) -> bool:
        return await self.database.probe()

    async def get_task(self, task_id: str) -> rec.StoredTask | None:
        return _task(await repo.get_task(self.database, task_id))

    async def list_tasks(self, *, state: str | Sequence[str] | None, owner: str | None, task_type: str | None,
                         page: int, page_size: int) -> tuple[list[rec.StoredTask], int]:
        rows, total = await repo.list_tasks(self.database, state=state, owner=owner, task_type=task_type,
                                            page=page, page_size=page_size)
        return [rec.StoredTask.model_validate(dict(r)) for r in rows], total

    async def active_tasks(self) -> list[rec.StoredTask]:
        return [rec.StoredTask.model_validate(dict(r)) for r in await repo.active_tasks(self.database)]

    async def task_attempts(self, task_id: str) -> list[rec.StoredAttempt]:
        return [rec.StoredAttempt.model_validate(dict(r)) for r in await repo.task_attempts(self.database, task_id)]

    async def count_tasks_by_state(self, owner: str | None = None) -> dict[str, int]:
        return await repo.count_tasks_by_state(self.database, owner)

    async def attempt_usage(self, after: float) -> list[rec.AttemptUsage]:
        return await repo.attempt_usage(self.database, after)

    async def finished_since(self, after: float, limit: int = 10_000) -> list[rec.FinishedTask]:
        return await repo.finished_since(self.database, after, limit)

    async def usage(self, owner: str | None, start: float | None, end: float | None, now: float) -> rec.Usage:
        return await repo.usage(self.database, owner, start, end, now)

    async def progress_points(self, task_id: str, since: float | None = None,
                              limit: int = 10_000) -> list[rec.ProgressPoint]:
        return await repo.progress_points(self.database, task_id, since, limit)

    async def blocked_tasks(self) -> list[str]:
        return await prepo.blocked_tasks(self.database)

    async def dependencies_of(self, task_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        return await prepo.dependencies_of(self.database, task_ids)

    async def get_pipeline(self, pipeline_id: str) -> rec.StoredPipeline | None:
        return await prepo.get_pipeline(self.database, pipeline_id)

    async def list_pipelines(self, owner: str | None, page: int,
                             page_size: int) -> tuple[list[rec.StoredPipeline], int]:
        return await prepo.list_pipelines(self.database, owner, page, page_size)

    async def pipeline_tasks(self, pipeline_ids: list[str]) -> list[rec.StoredTask]:
        return [rec.StoredTask.model_validate(dict(r)) for r in await prepo.pipeline_tasks(self.database, pipeline_ids)]

    async def all_agents(self) -> list[rec.StoredAgent]:
        return await repo.all_agents(self.database)

    async def active_user_tokens(self, now: float) -> list[rec.StoredToken]:
        return await repo.active_user_tokens(self.database, now)

    async def token_by_hash(self, token_hash: str) -> rec.StoredToken | None:
        return await repo.token_by_hash(self.database, token_hash)

    async def list_tokens(self) -> list[rec.StoredToken]:
        return await repo.list_tokens(self.database)

    async def pending_upload(self, upload_id: str, task_id: str) -> rec.PendingUpload | None:
        return await repo.pending_upload(self.database, upload_id, task_id)

    async def task_artifacts(self, task_id: str) -> list[rec.StoredArtifact]:
        return await repo.task_artifacts(self.database, task_id)

    async def artifact(self, task_id: str, name: str) -> rec.StoredArtifact | None:
        return await repo.artifact(self.database, task_id, name)

    async def task_logs(self, task_id: str, attempt: int | None, after: tuple[int, int],
                        limit: int = 1000) -> list[rec.StoredLogChunk]:
        return await repo.task_logs(self.database, task_id, attempt, after, limit)

    async def mirror_push(self, push_id: str) -> rec.StoredMirror | None:
        return await repo.mirror_push(self.database, push_id)

    async def mirrored(self, kind: str | None = None, hub_id: str | None = None) -> list[rec.StoredMirror]:
        return await repo.mirrored(self.database, kind, hub_id)

    async def secrets_ciphertext(self, task_id: str) -> str | None:
        return await repo.secrets_ciphertext(self.database, task_id)

    async def tasks_with_secrets(self) -> list[tuple[str, str]]:
        return await repo.tasks_with_secrets(self.database)
