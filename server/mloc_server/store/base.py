"""The store: every read and write of the coordinator's durable state, as one small named method set.

SQLite implements it today (store/sqlite.py); a second backend (PostgreSQL is planned) implements
the same two classes and passes the same contract tests (tests/test_store_contract.py). Services
hold a ``Store`` and never see SQL, a connection or a backend's row type.

Writes go through ``Store.write(fn)``: ``fn`` receives a ``StoreTx`` and runs inside one
transaction, so a submit can insert a task, store its secrets and claim it for a waiting agent in
one commit. ``fn`` runs on the backend's writer (a thread, for SQLite): it must be quick and must
not await. Writes that check a row (a claim, a finish, a requeue) are compare-and-set: they report
whether they won instead of raising, and a lost one changes nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from mloc_shared.protocol import Inventory

from mloc_server.store.records import (
    AttemptUsage,
    Claim,
    Claimed,
    DependencyState,
    FinishedTask,
    GangMember,
    NewTask,
    PendingUpload,
    PointBatch,
    ProgressPoint,
    StoredAgent,
    StoredArtifact,
    StoredAttempt,
    StoredLogChunk,
    StoredMirror,
    StoredPipeline,
    StoredTask,
    StoredToken,
    Usage,
)

T = TypeVar("T")


class StoreTx(ABC):
    """The writes, inside one transaction opened by ``Store.write``."""

    # -- tasks ----------------------------------------------------------------------------------

    @abstractmethod
    def insert_task(self, task: NewTask) -> tuple[str, bool]:
        """Insert a queued task; returns (task id, created). A reused idempotency key returns the task
        it first created (created False); the same key with another body raises Conflict."""

    @abstractmethod
    def get_task(self, task_id: str) -> StoredTask | None:
        """The task as this transaction sees it (a submit answers with what it just wrote)."""

    @abstractmethod
    def claim_tasks(self, agent_id: str, claims: Sequence[Claim], claim_id: str, now: float) -> list[Claimed]:
        """Lease each task still queued to ``agent_id``: bump its epoch and attempt, open an attempt.
        Tasks no longer queued (cancelled meanwhile) are left out of the answer."""

    @abstractmethod
    def claim_gang(self, task_id: str, members: Sequence[GangMember], network: str, claim_id: str,
                   now: float) -> Claimed | None:
        """Lease a queued task to several agents at once (a gang: ``members[i]`` is node
        rank i): one compare-and-set, one epoch, one attempt naming every member; None if it is no
        longer queued. Node rank 0's agent is the task's ``agent_id``, the members are in ``gang``."""

    @abstractmethod
    def finish_task(self, task_id: str, epoch: int, state: str, now: float, *, result: dict[str, Any] | None = None,
                    error: str | None = None, exit_code: int | None = None,
                    progress: dict[str, Any] | None = None, start: str | None = None) -> bool:
        """Move a task running at ``epoch`` to a final state and close its attempt; False when the
        epoch is stale or the task is not running (its lease was lost meanwhile)."""

    @abstractmethod
    def requeue_task(self, task_id: str, epoch: int, reason: str, not_before: float, now: float, *,
                     preempted: bool = False, start: str | None = None) -> str | None:
        """A lease was lost: close the attempt and queue the task again after ``not_before``, or end it
        (cancelled when a cancel was asked, failed when out of attempts). Returns the new state, or
        None when the epoch is stale."""

    @abstractmethod
    def cancel_queued(self, task_id: str, now: float) -> bool:
        """Cancel a task that has not started; False when it is no longer queued."""

    @abstractmethod
    def request_cancel(self, task_id: str, now: float) -> bool:
        """Mark a running task for cancelling (its agent stops it); False when it is not running."""

    @abstractmethod
    def set_priority(self, task_id: str, priority_class: str | None, priority: int | None, now: float) -> bool:
        """An admin's change of a queued or running task's priority class and/or priority (None: unchanged),
        kept in its spec; False when the task is not queued or running."""

    @abstractmethod
    def save_progress(self, items: Iterable[tuple[str, int, dict[str, Any]]]) -> None:
        """(task id, epoch, progress) of running tasks, from heartbeats gathered in memory; a stale
        epoch is skipped."""

    @abstractmethod
    def add_progress_points(self, batches: Iterable[PointBatch]) -> dict[tuple[str, int], int]:
        """Append to task attempts' progress history (a step sent again replaces its point), thinning an
        attempt's older points past a bound; returns the rows each (task id, attempt) holds now."""
    # -- dependencies and pipelines (services/dependencies.py) -----------------------------------

    @abstractmethod
    def keyed_task(self, idempotency_key: str) -> str | None:
        """The id of the task an idempotency key already created, if any."""

    @abstractmethod
    def find_task_ref(self, owner: str, ref: str) -> tuple[str, str, str] | None:
        """(id, name, state) of ``owner``'s task with id ``ref``, else of the newest one named ``ref``."""

    @abstractmethod
    def task_dependencies(self, task_id: str) -> list[DependencyState]:
        """What a task waits on, with each parent's current state (a parent gone reads as cancelled)."""

    @abstractmethod
    def blocked_dependents(self, parent_id: str) -> list[str]:
        """The blocked tasks that wait on ``parent_id``, oldest first."""

    @abstractmethod
    def pipeline_slots(self, task_id: str) -> tuple[str, int, int, list[str]] | None:
        """For a task of a pipeline with max_parallel: (pipeline id, max_parallel, children queued or
        running, blocked children in order); None for any other task."""

    @abstractmethod
    def unblock(self, task_id: str, now: float) -> bool:
        """A blocked task becomes queued; False when it is no longer blocked."""

    @abstractmethod
    def set_blocked_reason(self, task_id: str, reason: str) -> None:
        """What a blocked task now waits on."""

    @abstractmethod
    def cancel_blocked(self, task_id: str, reason: str, now: float) -> bool:
        """End a blocked task as cancelled with ``reason``; False when it is no longer blocked."""

    @abstractmethod
    def insert_pipeline(self, pipeline: StoredPipeline) -> None:
        """A new pipeline or sweep (its tasks are inserted in the same transaction)."""

    # -- agents ---------------------------------------------------------------------------------

    @abstractmethod
    def save_agent(self, agent: StoredAgent) -> None:
        """Register an agent, or update a known one (same id): inventory, labels, task types, limits,
        version, credential and last seen. Its name, operator state and registration time stay."""

    @abstractmethod
    def touch_agents(self, seen: Iterable[tuple[float, str]]) -> None:
        """(last seen, agent id) pairs gathered in memory since the last flush."""

    @abstractmethod
    def save_inventories(self, inventories: Iterable[tuple[Inventory, str]]) -> None:
        """(inventory, agent id) pairs whose held models a poll changed since the last flush."""

    @abstractmethod
    def set_agent_state(self, agent_id: str, state: str) -> bool:
        """An operator's drain or undrain (active | draining); False for an unknown agent."""

    @abstractmethod
    def delete_agent(self, agent_id: str) -> bool:
        """Forget an agent identity (its credential stops working; the attempts it ran keep its id);
        False for an unknown agent."""

    # -- tokens ---------------------------------------------------------------------------------

    @abstractmethod
    def insert_token(self, token: StoredToken) -> None:
        """Store a new token (its uses and revoked flag start at 0 and false)."""

    @abstractmethod
    def use_join_token(self, token_hash: str, now: float) -> bool:
        """Count one use of a join token if it is valid now (not revoked, expired or used up)."""

    @abstractmethod
    def revoke_token(self, token_id: str) -> bool:
        """False for an unknown token id."""

    # -- artifacts ------------------------------------------------------------------------------

    @abstractmethod
    def insert_upload(self, upload: PendingUpload) -> None:
        """Remember a presigned upload until the agent commits it."""

    @abstractmethod
    def commit_upload(self, upload_id: str, now: float) -> PendingUpload | None:
        """Turn a pending upload into the task's artifact of that name (replacing an older one); a
        checkpoint also becomes the task's resume point. None when it was already committed."""

    # -- logs -----------------------------------------------------------------------------------

    @abstractmethod
    def insert_logs(self, task_id: str, attempt: int, chunks: Iterable[tuple[int, str, str]], now: float) -> None:
        """(seq, stream, data) chunks of an attempt; a chunk resent with a known seq is ignored."""

    # -- task secrets ---------------------------------------------------------------------------

    @abstractmethod
    def insert_secrets(self, task_id: str, ciphertext: str, now: float) -> None:
        """A task's sealed secrets (services/secrets.py encrypts them), replacing earlier ones."""

    @abstractmethod
    def delete_secrets(self, task_ids: Iterable[str]) -> None:
        """Forget the secrets of tasks that ended."""

    # -- the model and dataset mirror -----------------------------------------------------------

    @abstractmethod
    def insert_mirror_push(self, push: StoredMirror) -> None:
        """A push of a hub snapshot whose files are being uploaded (not listed until committed)."""

    @abstractmethod
    def commit_mirror_push(self, push_id: str, now: float) -> StoredMirror | None:
        """The push's snapshot becomes the mirrored one of its (kind, hub id, revision), replacing an
        earlier one; None when the push is unknown or was committed already."""


class Store(ABC):
    """The coordinator's durable state: reads, and ``write`` for a transaction of ``StoreTx`` writes."""

    # -- life cycle and health -----------------------------------------------------------------

    @property
    @abstractmethod
    def healthy(self) -> bool:
        """False after a failed write (full or read-only disk) until a write or ``probe`` succeeds."""

    @property
    @abstractmethod
    def last_error(self) -> str | None:
        """What the last failed write met; /health shows it."""

    @abstractmethod
    async def open(self) -> None:
        """Create or migrate the schema and start the writer; raises Unavailable, saying why, when the
        database cannot be written."""

    @abstractmethod
    async def close(self) -> None:
        """Finish the writes in flight and release the database."""

    @abstractmethod
    async def write(self, fn: Callable[[StoreTx], T]) -> T:
        """Run ``fn`` in one transaction; returns its value after the commit. An exception ``fn``
        raises undoes its writes only (MlocErrors pass through, backend errors become Unavailable)."""

    @abstractmethod
    async def probe(self) -> bool:
        """After a failed write: whether writes work again, found with no user write."""

    # -- tasks ----------------------------------------------------------------------------------

    @abstractmethod
    async def get_task(self, task_id: str) -> StoredTask | None:
        """One task by id."""

    @abstractmethod
    async def list_tasks(self, *, state: str | Sequence[str] | None, owner: str | None, task_type: str | None,
                         page: int, page_size: int) -> tuple[list[StoredTask], int]:
        """One page of the matching tasks, newest first, and how many match in all."""

    @abstractmethod
    async def active_tasks(self) -> list[StoredTask]:
        """Every queued or running task (rebuilding the in-memory mirror at start)."""

    @abstractmethod
    async def task_attempts(self, task_id: str) -> list[StoredAttempt]:
        """A task's attempts, first first."""

    @abstractmethod
    async def count_tasks_by_state(self, owner: str | None = None) -> dict[str, int]:
        """How many tasks are in each state (an owner's only, when given); absent states are left out."""

    @abstractmethod
    async def attempt_usage(self, after: float) -> list[AttemptUsage]:
        """Attempts still open or ended after ``after``, with their task's owner and team (fair share)."""

    @abstractmethod
    async def finished_since(self, after: float, limit: int = 10_000) -> list[FinishedTask]:
        """Tasks that reached a final state after ``after`` (wall clock), oldest first."""

    @abstractmethod
    async def usage(self, owner: str | None, start: float | None, end: float | None, now: float) -> Usage:
        """Tasks created in [start, end) by state, type and owner, with their GPU-hours (an attempt
        still running counts until ``now``) and average queue wait."""

    @abstractmethod
    async def progress_points(self, task_id: str, since: float | None = None,
                              limit: int = 10_000) -> list[ProgressPoint]:
        """A task's progress history received after ``since`` (every point without it), by attempt, then step."""

    @abstractmethod
    async def blocked_tasks(self) -> list[str]:
        """Every blocked task's id, oldest first (re-decided at start)."""

    @abstractmethod
    async def dependencies_of(self, task_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Each of these tasks' dependencies as the API shows them: [{task, condition}]."""

    @abstractmethod
    async def get_pipeline(self, pipeline_id: str) -> StoredPipeline | None:
        """One pipeline or sweep by id."""

    @abstractmethod
    async def list_pipelines(self, owner: str | None, page: int, page_size: int) -> tuple[list[StoredPipeline], int]:
        """One page of pipelines (an owner's only, when given), newest first, and how many in all."""

    @abstractmethod
    async def pipeline_tasks(self, pipeline_ids: list[str]) -> list[StoredTask]:
        """The tasks of these pipelines, in step order."""

    # -- agents and tokens ----------------------------------------------------------------------

    @abstractmethod
    async def all_agents(self) -> list[StoredAgent]:
        """Every registered agent."""

    @abstractmethod
    async def active_user_tokens(self, now: float) -> list[StoredToken]:
        """User tokens neither revoked nor expired at ``now`` (the auth cache is built from them)."""

    @abstractmethod
    async def token_by_hash(self, token_hash: str) -> StoredToken | None:
        """Any token, valid or not, by the hash of its secret."""

    @abstractmethod
    async def list_tokens(self) -> list[StoredToken]:
        """Every token, oldest first."""

    # -- artifacts, logs, secrets ---------------------------------------------------------------

    @abstractmethod
    async def pending_upload(self, upload_id: str, task_id: str) -> PendingUpload | None:
        """A presigned upload of this task not committed yet."""

    @abstractmethod
    async def task_artifacts(self, task_id: str) -> list[StoredArtifact]:
        """A task's artifacts and checkpoints, oldest first (then by name)."""

    @abstractmethod
    async def artifact(self, task_id: str, name: str) -> StoredArtifact | None:
        """One artifact of a task, by name."""

    @abstractmethod
    async def task_logs(self, task_id: str, attempt: int | None, after: tuple[int, int],
                        limit: int = 1000) -> list[StoredLogChunk]:
        """Chunks after the (attempt, seq) cursor in order; with ``attempt``, that attempt's only."""

    @abstractmethod
    async def mirror_push(self, push_id: str) -> StoredMirror | None:
        """A push not committed yet."""

    @abstractmethod
    async def mirrored(self, kind: str | None = None, hub_id: str | None = None) -> list[StoredMirror]:
        """The committed snapshots (by kind and hub id, the newest first per id)."""

    @abstractmethod
    async def secrets_ciphertext(self, task_id: str) -> str | None:
        """A task's sealed secrets, if it has any."""

    @abstractmethod
    async def tasks_with_secrets(self) -> list[tuple[str, str]]:
        """(task id, state) of every task with stored secrets; the state is 'gone' for a deleted task."""
