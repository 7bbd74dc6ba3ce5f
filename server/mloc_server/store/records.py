"""What the store hands back and takes in: typed records, the same for every backend.

Services read these, never a backend's row type (``sqlite3.Row``): a second backend returns the same
records and the services above it do not change. Task columns that hold JSON stay JSON text here
(``spec``, ``requirement``, ``progress``…): each service decodes what it reads, and the text is what
a claim hands to an agent unchanged. The API's answers are described apart, in mloc_server/schemas.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from mloc_shared.protocol import Inventory
from pydantic import BaseModel, Field


class StoredTask(BaseModel):
    """A task row: its spec, its state and its current (or last) lease."""

    id: str
    name: str
    task_type: str
    owner: str
    spec: str = Field(description="JSON text of the validated spec")
    state: str
    priority: int
    created_at: float
    updated_at: float
    queued_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    max_attempts: int
    not_before: float
    gpus_required: int
    requirement: str = Field(description="JSON text of the scheduler's Requirement")
    agent_id: str | None
    epoch: int = Field(description="fencing token: bumped by every claim")
    lease_gpus: str = Field(description="JSON list of the leased GPU indexes")
    claim_id: str | None
    progress: str | None
    result: str | None
    error: str | None
    exit_code: int | None
    cancel_requested: bool
    idempotency_key: str | None
    last_checkpoint: str | None = Field(description="JSON: name, step, size, storage_key")
    preemptions: int | None = Field(None, description="attempts that ended preempted (not failed ones)")
    team: str | None = None
    gang: str | None = Field(None, description="JSON: a running gang's members by node rank and network")
    pipeline_id: str | None = None
    step: str | None = None
    step_index: int | None = None
    sweep_values: str | None = Field(None, description="JSON: a sweep child's {dotted path: value}")
    blocked_reason: str | None = None


class StoredAttempt(BaseModel):
    """One run of a task on an agent (a claim opens it, a finish or requeue closes it)."""

    attempt: int
    epoch: int
    agent_id: str
    gpus: str = Field(description="JSON list of GPU indexes")
    started_at: float
    ended_at: float | None
    outcome: str | None
    error: str | None
    members: str | None = Field(None, description="JSON list of a gang attempt's agent ids, by node rank")
    model_cached: bool | None = Field(None, description="its agent held the task's hub model when it was leased")
    start: str | None = Field(None, description="warm | cold: how the agent started the attempt's process")


@dataclass
class NewTask:
    """A task to insert (queued, epoch 0); ``body_hash`` guards a reused idempotency key."""

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
    team: str | None = None
    state: str = "queued"  # or "blocked": it waits on ``depends`` (services/dependencies.py)
    depends: list[Dependency] | None = None
    pipeline_id: str | None = None
    step: str | None = None
    step_index: int | None = None
    sweep_values: str | None = None
    blocked_reason: str | None = None


@dataclass(frozen=True)
class Dependency:
    """The task waits until ``parent_id`` ends in a way ``condition`` accepts."""

    parent_id: str
    condition: str = "succeeded"  # succeeded | finished | failed
    field: str = "depends_on"


@dataclass(frozen=True)
class DependencyState:
    """A dependency with its parent's current name and state (what deciding a blocked task reads)."""

    parent_id: str
    condition: str
    parent_name: str
    parent_state: str


class StoredPipeline(BaseModel):
    id: str
    name: str
    kind: str
    owner: str
    team: str | None
    created_at: float
    max_parallel: int | None


@dataclass
class Claim:
    """Ask for a queued task on these GPUs (compare-and-set: lost if it is no longer queued)."""

    task_id: str
    gpus: tuple[int, ...]
    model_cached: bool | None = None  # the agent held the task's hub model (None: the spec names none)


@dataclass
class GangMember:
    """One agent of a gang's claim (node rank = its place in the list) and the GPUs it gives."""

    agent_id: str
    gpus: tuple[int, ...]


@dataclass
class Claimed:
    """A claim that won: what the lease offer needs."""

    task_id: str
    epoch: int
    attempt: int
    task_type: str
    spec: str
    last_checkpoint: str | None
    started_at: float


class AttemptUsage(BaseModel):
    """What one attempt held, for fair share's decayed usage (rebuilt at start)."""

    owner: str
    team: str | None
    gpu_count: int
    started_at: float
    ended_at: float | None


class FinishedTask(BaseModel):
    """A task that reached a final state (for task-duration metrics)."""

    task_type: str
    state: str
    started_at: float | None
    finished_at: float


class StoredAgent(BaseModel):
    """A registered agent; ``credential_hash`` is a SHA-256 of its credential."""

    id: str
    name: str
    credential_hash: str
    labels: dict[str, str]
    inventory: Inventory
    task_types: list[str]
    max_tasks: int
    state: str = Field(description="active | draining (set by an operator)")
    version: str
    registered_at: float
    last_seen: float
    network: str | None = None
    addresses: list[str] = Field(default_factory=list)


class StoredToken(BaseModel):
    """A user API token or an agent join token; only the secret's hash is kept."""

    id: str
    kind: str = Field(description="user | join")
    token_hash: str
    user: str
    role: str
    created_at: float
    expires_at: float | None
    max_uses: int | None
    uses: int
    revoked: bool
    note: str
    team: str | None = None


class PendingUpload(BaseModel):
    """An upload the coordinator presigned and the agent has not committed yet."""

    id: str
    task_id: str
    epoch: int
    attempt: int
    name: str
    kind: str = Field(description="artifact | checkpoint")
    step: int | None
    size: int
    storage_key: str
    multipart_id: str | None
    created_at: float


class StoredArtifact(BaseModel):
    """A committed artifact or checkpoint; one per (task, name): a re-upload replaces it."""

    name: str
    kind: str
    step: int | None
    size: int
    attempt: int
    storage_key: str
    created_at: float


class StoredMirror(BaseModel):
    """A mirrored snapshot, or a push of one not committed yet (``ready`` false)."""

    id: str
    kind: str
    hub_id: str
    revision: str
    files: list[dict[str, Any]]
    bytes: int
    uploads: dict[str, str]
    created_at: float
    pushed_by: str
    ready: bool


class StoredLogChunk(BaseModel):
    """One numbered chunk of a task's output; (task, attempt, seq) is its identity."""

    attempt: int
    seq: int
    stream: str
    data: str


class ProgressPoint(BaseModel):
    """One point of a task's progress history: what a heartbeat carried at ``step``, received at ``t``."""

    attempt: int
    step: int
    t: float
    loss: float | None = None
    learning_rate: float | None = None
    metrics: dict[str, float] | None = None


class NewPoint(NamedTuple):
    """A progress point on its way to the store (a tuple: a heartbeat makes one, cheaply)."""

    step: int
    t: float
    loss: float | None
    learning_rate: float | None
    metrics: dict[str, float] | None


@dataclass(frozen=True)
class PointBatch:
    """Progress points of one task attempt to store; ``stored``: how many rows it held after the last
    write, as that write answered (None: not known yet, the store counts)."""

    task_id: str
    attempt: int
    points: list[NewPoint]
    stored: int | None = None


class UserUsage(BaseModel):
    user: str
    tasks: int
    gpu_hours: float
    avg_queue_wait_s: float | None


class Usage(BaseModel):
    """Tasks created in a window, by state, type and owner, and the GPU-hours their attempts held."""

    tasks_by_state: dict[str, int]
    tasks_by_type: dict[str, int]
    users: list[UserUsage]
    gpu_hours: float
    total_tasks: int
