"""The user API's answers: services return these models, handlers send them, and the OpenAPI
document (api/openapi.py) is generated from them, so each answer is described once.

The API fuzz test (tests/test_api_fuzz.py) checks every real answer against the document. Readers
stay lenient: a field added later does not break an older client, so no model forbids extra keys.
"""

from __future__ import annotations

from typing import Any, Literal

from mloc_shared.protocol import Gpu, HeldModel, TaskState, WarmRuntimeStat
from pydantic import BaseModel, Field

from mloc_server.store.records import StoredArtifact, StoredToken, Usage


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
    preempting: str | None = Field(None, description="asked to checkpoint and stop: the reason")


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
    model_cached: bool | None = Field(None, description="its agent already held the task's hub model "
                                                        "(model.source); null when the spec names none")
    start: str | None = Field(None, description="warm | cold: whether the attempt's process was forked from a warm "
                                                "runtime's template or started fresh (docs/warm-starts.md)")


class DependencyView(BaseModel):
    task: str
    condition: Literal["succeeded", "finished", "failed"]


class PipelineRef(BaseModel):
    id: str
    step: str | None
    index: int | None


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
    preemptions: int = Field(0, description="attempts that ended preempted (not counted against max_attempts)")
    failed_attempts: int | None = Field(None, description="on GET of one task: failed and lost attempts, "
                                                          "what retry.max_attempts counts")
    resources: dict[str, Any]
    spec: dict[str, Any] = Field(description="the validated task spec, as stored and handed to agents")
    lease: TaskLeaseView | None = Field(None, description="while running")
    agent: str | None = Field(None, description="the agent that ran the final attempt")
    last_checkpoint: CheckpointView | None = None
    pending_reason: str | None = Field(None, description="while queued: why it has not started, or that it is next "
                                                         "(fair share, quotas: docs/fairshare.md); while blocked: "
                                                         "the task it waits on")
    depends_on: list[DependencyView] | None = Field(None, description="on GET of one task: what it waits on, "
                                                    "its own depends_on and the tasks whose outputs it reads")
    pipeline: PipelineRef | None = Field(None, description="the pipeline or sweep it belongs to")
    values: dict[str, Any] | None = Field(None, description="a sweep's child: the values it was given")
    team: str | None = Field(None, description="the submitting token's team")
    warnings: list[str] | None = Field(None, description="on submit: accepted, but worth knowing")
    attempt_history: list[AttemptView] | None = Field(None, description="on GET of one task")


class QueueEntry(BaseModel):
    """One queued task at its place in the queue."""

    position: int = Field(description="1-based place in the order picks would take the queue in now")
    id: str
    user: str
    team: str | None
    priority_class: str
    priority: int
    gpus: int
    task_type: str
    queued_at: float
    reason: str = Field(description="why it is next, or what goes first (e.g. 'next: alice is below their share')")


class QueueListing(BaseModel):
    tasks: list[QueueEntry] = Field(description="in order; a user sees their own tasks only, at their places")
    total: int = Field(description="tasks queued in all")
    blocked: int = Field(0, description="tasks waiting on other tasks (depends_on), not queued yet: yours, or "
                                        "everyone's for an admin")


class PriorityChange(BaseModel):
    """An admin's change of a queued or running task's priority."""

    priority_class: str | None = Field(None, min_length=1, max_length=64)
    priority: int | None = Field(None, ge=-1000, le=1000)


class PriorityChanged(BaseModel):
    id: str
    state: str
    priority_class: str | None
    priority: int | None
    preemptible: bool | None = None


class TaskPage(BaseModel):
    tasks: list[TaskRecord]
    page: int
    page_size: int
    total: int
    pages: int


PipelineState = Literal["blocked", "queued", "running", "succeeded", "failed", "cancelled"]


class PipelineStep(BaseModel):
    """One task of a pipeline or sweep, with what a comparison needs."""

    name: str | None
    index: int | None
    task_id: str
    task_type: str
    state: TaskState
    values: dict[str, Any] | None = Field(None, description="a sweep's child: {dotted spec path: value}")
    final: dict[str, float] = Field(description="its last progress loss/metrics, then its result's metrics")
    started_at: float | None
    finished_at: float | None
    error: str | None
    progress: dict[str, Any] | None
    pending_reason: str | None = None


class RollupRow(BaseModel):
    name: str | None
    task_id: str
    state: TaskState
    values: dict[str, Any] | None = None
    final: dict[str, float]


class PipelineSummary(BaseModel):
    id: str
    name: str
    kind: Literal["pipeline", "sweep"]
    user: str
    state: PipelineState = Field(description="running if any step runs; queued, blocked while any waits; then "
                                             "succeeded when all did, failed when any failed, else cancelled")
    created_at: float
    max_parallel: int | None = Field(None, description="a sweep's: at most this many children queued or running")
    counts: dict[str, int] = Field(description="its tasks by state")


class PipelineRecord(PipelineSummary):
    steps: list[PipelineStep] = Field(description="in file order (a sweep's: by array index)")
    rollup: list[RollupRow] = Field(description="each step's values and final metrics, for a comparison table")
    metrics: list[str] = Field(description="every metric name some step reported")


class PipelinePage(BaseModel):
    pipelines: list[PipelineSummary]
    page: int
    page_size: int
    total: int
    pages: int


class PipelineCancelled(PipelineSummary):
    cancelled: list[str] = Field(description="tasks ended by this cancel")
    cancelling: list[str] = Field(description="running tasks whose agents were told to stop them")


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


class ProgressPointView(BaseModel):
    attempt: int
    step: int
    t: float = Field(description="when the coordinator received it (unix time); pass the last one back as since")
    loss: float | None = None
    learning_rate: float | None = None
    metrics: dict[str, float | None] | None = None


class ProgressHistory(BaseModel):
    task_id: str
    points: list[ProgressPointView] = Field(description="by attempt, then step; at most 2,000 per attempt "
                                                        "(older points thinned)")


class ComparedTask(BaseModel):
    id: str
    name: str | None
    task_type: str | None
    state: str | None
    step: int | None = Field(description="the last progress line's step")
    metrics: dict[str, float] = Field(description="the last progress line's loss, learning rate and metrics, "
                                                  "then the result's metrics (which win on the same name)")
    hyperparameters: dict[str, Any] = Field(description="the differing hyperparameters, by dotted path")


class Comparison(BaseModel):
    tasks: list[ComparedTask]
    hyperparameters: list[str] = Field(description="hyperparameter paths whose values differ between the tasks "
                                                   "(all of them for one task)")
    metrics: list[str]


class ArtifactView(BaseModel):
    name: str
    kind: Literal["artifact", "checkpoint"]
    step: int | None
    size: int | None
    attempt: int | None
    created_at: float
    url: str = Field(description="the download path (answers with a redirect to the object)")

    @classmethod
    def of(cls, art: StoredArtifact, url: str) -> ArtifactView:
        return cls(name=art.name, kind=art.kind, step=art.step, size=art.size, attempt=art.attempt,
                   created_at=art.created_at, url=url)


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


class WorkerGpu(Gpu):
    """A GPU as its agent reported it, its last sampled use, and the task leasing it. Fields the agent
    did not report are left out of the answer (handlers send it with ``exclude_unset``)."""

    memory_used_mb: int | None = None
    busy: bool = Field(False, description="leased to a task (whoever's: every user sees the capacity)")
    task_id: str | None = Field(description="the task leasing it, shown only to an admin and the task's owner")


class WorkerLease(BaseModel):
    """A lease on an agent. Every user sees which GPUs it holds; the task, its epoch, attempt and progress
    are shown only to an admin and the task's owner (left out of the answer for anyone else)."""

    task_id: str | None = None
    epoch: int | None = None
    attempt: int | None = None
    gpus: list[int]
    progress: dict[str, Any] | None = None


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
    model_count: int = Field(0, description="models and datasets it holds (hub cache, mirror copies, store)")
    model_bytes: int = Field(0, description="their size on disk, in bytes")
    disk_free_bytes: int | None = Field(None, description="free bytes on its data dir's disk, as last reported")
    models: list[HeldModel] | None = Field(None, description="what it holds (id, kind, bytes, where): shown to "
                                                             "admins only, as a private repo's name can be telling")
    warm_runtimes: list[WarmRuntimeStat] | None = Field(
        None, description="its warm runtimes' templates: state and resident memory (docs/warm-starts.md)")


class WorkerList(BaseModel):
    workers: list[Worker]
    total: int
    page: int | None = Field(None, description="when asked for a page (page, page_size, state or q)")
    page_size: int | None = None
    pages: int | None = None


class Stats(Usage):
    """Usage in a window (the store's ``Usage``) and the filter it was asked with."""

    user: str | None
    start_date: str | None
    end_date: str | None


class TokenCreated(BaseModel):
    id: str
    token: str = Field(description="the secret: shown once, only its hash is kept")
    kind: Literal["user", "join"]
    user: str
    role: Literal["user", "admin"]
    team: str | None = None


class TokenInfo(BaseModel):
    id: str
    kind: str
    user: str | None
    role: str | None
    created_at: float
    expires_at: float | None
    max_uses: int | None
    uses: int | None
    revoked: int = Field(description="1 when revoked, else 0")
    note: str | None
    team: str | None = None

    @classmethod
    def of(cls, t: StoredToken) -> TokenInfo:
        """Everything but the secret's hash."""
        return cls(id=t.id, kind=t.kind, user=t.user, role=t.role, created_at=t.created_at, expires_at=t.expires_at,
                   max_uses=t.max_uses, uses=t.uses, revoked=int(t.revoked), note=t.note, team=t.team)


class TokenList(BaseModel):
    tokens: list[TokenInfo]


class TokenRevoked(BaseModel):
    id: str
    revoked: bool


class BlobStored(BaseModel):
    size: int


class GpuCounts(BaseModel):
    used: int = Field(description="leased to a task")
    free: int = Field(description="on a connected agent that takes work, not leased")
    unavailable: int = Field(description="idle on an offline or draining agent")
    total: int


class Overview(BaseModel):
    """The status page's header: the fleet from the coordinator's memory, tasks from the store."""

    agents: dict[str, int] = Field(description="agents by state: active, draining, offline")
    agents_total: int
    gpus: GpuCounts
    leases: int
    queued: int
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
