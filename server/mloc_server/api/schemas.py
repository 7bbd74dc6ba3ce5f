"""Typed shapes of the user API's answers, for the OpenAPI document.

The handlers build these answers in services; these models state the contract they must keep, and the
API fuzz test (tests/test_api_fuzz.py) checks every real answer against them. Readers stay lenient:
a field added later does not break an older client, so no model forbids extra keys.
"""

from __future__ import annotations

from typing import Any, Literal

from mloc_shared.protocol import TaskState
from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. validation_failed, lease_lost")
    message: str = Field(description="what is wrong, naming the field or header")
    field: str | None = Field(None, description="dotted path of the offending field, header or parameter")
    line: int | None = Field(None, description="1-based line in the submitted YAML, where there is one")
    hint: str | None = Field(None, description="how to fix it")
    details: list[dict[str, Any]] | None = Field(None, description="every validation error, not only the first")


class ErrorEnvelope(BaseModel):
    """Every error answer: 4xx and 5xx alike."""

    error: ErrorBody


class TaskLeaseView(BaseModel):
    agent: str | None
    agent_id: str | None
    epoch: int | None
    gpus: list[int]


class CheckpointView(BaseModel):
    name: str
    step: int | None = None


class AttemptView(BaseModel):
    attempt: int
    epoch: int
    agent: str | None
    gpus: list[int]
    started_at: float | None
    ended_at: float | None
    outcome: str | None
    error: str | None


class TaskRecord(BaseModel):
    """A task as users see it: state, attempts, live lease and progress, result."""

    id: str
    name: str
    task_type: str
    user: str
    state: TaskState
    priority: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    max_attempts: int
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None
    exit_code: int | None
    cancel_requested: bool
    resources: dict[str, Any]
    spec: dict[str, Any] = Field(description="the validated task spec, as stored and handed to agents")
    lease: TaskLeaseView | None = Field(None, description="while running")
    agent: str | None = Field(None, description="the agent that ran the final attempt")
    last_checkpoint: CheckpointView | None = None
    pending_reason: str | None = Field(None, description="while queued: why it has not started")
    warnings: list[str] | None = Field(None, description="on submit: accepted, but worth knowing")
    attempt_history: list[AttemptView] | None = Field(None, description="on GET of one task")


class TaskPage(BaseModel):
    tasks: list[TaskRecord]
    page: int
    page_size: int
    total: int
    pages: int


class TaskAccepted(BaseModel):
    id: str
    state: TaskState


class BulkAccepted(BaseModel):
    tasks: list[TaskAccepted]


class TaskCancelled(BaseModel):
    id: str
    state: str = Field(description="cancelled, or cancelling while the agent stops the process")


class LogLine(BaseModel):
    attempt: int
    seq: int
    stream: Literal["stdout", "stderr", "system"]
    data: str


class LogCursor(BaseModel):
    after_attempt: int
    after_seq: int


class LogPage(BaseModel):
    chunks: list[LogLine]
    next: LogCursor = Field(description="pass back as after_attempt/after_seq for the next page")


class ArtifactView(BaseModel):
    name: str
    kind: Literal["artifact", "checkpoint"]
    step: int | None
    size: int | None
    attempt: int | None
    created_at: float
    url: str


class ArtifactList(BaseModel):
    artifacts: list[ArtifactView]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    protocol_version: int
    uptime_s: float
    database: str | None
    queued: int
    running: int
    agents: int


class WorkerGpu(BaseModel):
    index: int
    uuid: str
    name: str
    memory_total_mb: int
    task_id: str | None


class WorkerLease(BaseModel):
    task_id: str
    epoch: int
    attempt: int
    gpus: list[int]
    progress: dict[str, Any] | None


class Worker(BaseModel):
    id: str
    name: str
    labels: dict[str, str]
    state: str = Field(description="active, draining or offline")
    draining: bool
    connected: bool
    address: str | None
    version: str
    last_seen: float
    registered_at: float
    max_tasks: int
    task_types: list[str]
    gpu_source: str
    hostname: str
    cpu_count: int
    memory_mb: int
    gpus: list[WorkerGpu]
    leases: list[WorkerLease]


class WorkerList(BaseModel):
    workers: list[Worker]
    total: int
    page: int | None = Field(None, description="when asked for a page (page, page_size, state or q)")
    page_size: int | None = None
    pages: int | None = None


class UserUsage(BaseModel):
    user: str
    tasks: int
    gpu_hours: float
    avg_queue_wait_s: float | None


class Stats(BaseModel):
    tasks_by_state: dict[str, int]
    tasks_by_type: dict[str, int]
    users: list[UserUsage]
    gpu_hours: float
    total_tasks: int
    user: str | None
    start_date: str | None
    end_date: str | None


class TokenCreated(BaseModel):
    id: str
    token: str = Field(description="the secret: shown once, only its hash is kept")
    kind: Literal["user", "join"]
    user: str
    role: Literal["user", "admin"]


class TokenInfo(BaseModel):
    id: str
    kind: str
    user: str | None
    role: str | None
    created_at: float
    expires_at: float | None
    max_uses: int | None
    uses: int | None
    revoked: int
    note: str | None


class TokenList(BaseModel):
    tokens: list[TokenInfo]


class TokenRevoked(BaseModel):
    id: str
    revoked: bool


class BlobStored(BaseModel):
    size: int


class Overview(BaseModel):
    """The status page's header; the fleet counts beside these fields may grow."""

    tasks: dict[str, int] = Field(description="tasks by state (a user's own only)")
    user: str
    role: str
    version: str
    server_time: float
    poll_hold_s: float


class CompletionState(BaseModel):
    state: str = Field(description="the task's final state (or queued when a failure is retried)")


class LogsAccepted(BaseModel):
    accepted: int


class UploadCommitted(BaseModel):
    name: str
    kind: Literal["artifact", "checkpoint"]
    size: int | None
    step: int | None
