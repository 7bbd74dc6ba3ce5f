"""Tables, as SQLModel models. JSON-shaped columns are TEXT holding JSON.

The schema is created and migrated on start (store/migrations.py). Bump SCHEMA_VERSION and add a
step there when a change is more than a new nullable column.
"""

from __future__ import annotations

from sqlmodel import Field, SQLModel


class TaskRow(SQLModel, table=True):
    __tablename__ = "tasks"

    id: str = Field(primary_key=True)
    name: str
    task_type: str = Field(index=True)
    owner: str = Field(index=True)
    spec: str
    state: str = Field(index=True)
    priority: int = 0
    created_at: float = Field(index=True)
    updated_at: float
    queued_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    max_attempts: int = 3
    not_before: float = 0.0
    gpus_required: int = 0
    requirement: str = "{}"
    agent_id: str | None = Field(default=None, index=True)
    epoch: int = 0
    lease_gpus: str = "[]"
    claim_id: str | None = None
    progress: str | None = None
    result: str | None = None
    error: str | None = None
    exit_code: int | None = None
    cancel_requested: bool = False
    idempotency_key: str | None = Field(default=None, unique=True)
    body_hash: str | None = None
    last_checkpoint: str | None = None
    preemptions: int | None = None  # attempts that ended preempted (they do not count as failed ones)
    team: str | None = None  # the submitting token's team (fair share and quotas)
    # a gang's members (JSON: [{"agent_id", "gpus"}] by node rank, "network"), while it runs on several agents
    gang: str | None = None
    # dependencies and pipelines (services/dependencies.py, services/pipelines.py)
    pipeline_id: str | None = Field(default=None, index=True)
    step: str | None = None  # its step name in the pipeline
    step_index: int | None = None  # its place in the pipeline (a sweep child's array index)
    sweep_values: str | None = None  # JSON: a sweep child's {dotted path: value}
    blocked_reason: str | None = None  # while blocked: what it waits on


class TaskDepRow(SQLModel, table=True):
    """One edge "task waits on parent": ``condition`` is succeeded | finished | failed."""

    __tablename__ = "task_deps"

    task_id: str = Field(primary_key=True)
    parent_id: str = Field(primary_key=True, index=True)
    condition: str = "succeeded"
    field: str = "depends_on"  # the spec field that named it (for messages)


class PipelineRow(SQLModel, table=True):
    """A pipeline file's or a sweep's tasks under one id; its state is rolled up from theirs."""

    __tablename__ = "pipelines"

    id: str = Field(primary_key=True)
    name: str
    kind: str = "pipeline"  # pipeline | sweep
    owner: str = Field(index=True)
    team: str | None = None
    created_at: float = Field(index=True)
    max_parallel: int | None = None  # a sweep's: at most this many children queued or running


class AttemptRow(SQLModel, table=True):
    __tablename__ = "attempts"

    id: int | None = Field(default=None, primary_key=True)
    task_id: str = Field(index=True)
    attempt: int
    epoch: int
    agent_id: str
    gpus: str = "[]"
    gpu_count: int = 0
    started_at: float
    ended_at: float | None = None
    outcome: str | None = None
    error: str | None = None
    members: str | None = None  # a gang's attempt: JSON list of agent ids, by node rank
    model_cached: bool | None = None  # its agent held the task's hub model (None: the spec names none)
    start: str | None = None  # "warm" | "cold": how the agent started its process (docs/warm-starts.md)


class AgentRow(SQLModel, table=True):
    __tablename__ = "agents"

    id: str = Field(primary_key=True)
    name: str = Field(index=True)
    credential_hash: str = Field(unique=True)
    labels: str = "{}"
    inventory: str = "{}"
    task_types: str = "[]"
    max_tasks: int = 1
    state: str = "active"
    version: str = ""
    registered_at: float
    last_seen: float
    network: str | None = None  # the network it declared (gangs); None: the address its polls come from
    addresses: str | None = None  # JSON list of its LAN addresses


class LogRow(SQLModel, table=True):
    __tablename__ = "logs"

    task_id: str = Field(primary_key=True)
    attempt: int = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    stream: str = "stdout"
    data: str
    created_at: float


class ProgressPointRow(SQLModel, table=True):
    """One point of a task attempt's progress history (the loss curve): one row per distinct step,
    thinned to a bound per attempt (store/repo/progress.py)."""

    __tablename__ = "progress_points"

    task_id: str = Field(primary_key=True)
    attempt: int = Field(primary_key=True)
    step: int = Field(primary_key=True)
    t: float
    loss: float | None = None
    learning_rate: float | None = None
    metrics: str | None = None  # JSON object of the progress line's metrics


class ArtifactRow(SQLModel, table=True):
    __tablename__ = "artifacts"

    id: int | None = Field(default=None, primary_key=True)
    task_id: str = Field(index=True)
    attempt: int
    name: str
    kind: str = "artifact"
    step: int | None = None
    size: int = 0
    storage_key: str
    created_at: float


class UploadRow(SQLModel, table=True):
    """An upload the coordinator presigned but the agent has not committed yet."""

    __tablename__ = "uploads"

    id: str = Field(primary_key=True)
    task_id: str = Field(index=True)
    epoch: int
    attempt: int
    name: str
    kind: str
    step: int | None = None
    size: int
    storage_key: str
    multipart_id: str | None = None
    created_at: float


class TokenRow(SQLModel, table=True):
    """User API tokens and agent join tokens; only a SHA-256 of each secret is stored."""

    __tablename__ = "tokens"

    id: str = Field(primary_key=True)
    kind: str = Field(index=True)
    token_hash: str = Field(unique=True)
    user: str = ""
    role: str = "user"
    created_at: float
    expires_at: float | None = None
    max_uses: int | None = None
    uses: int = 0
    revoked: bool = False
    note: str = ""
    team: str | None = None  # user tokens: the team its tasks count against (fair share, quotas)


class TaskSecretRow(SQLModel, table=True):
    """A task's secrets, encrypted (services/secrets.py), apart from its spec; deleted when it ends."""

    __tablename__ = "task_secrets"

    task_id: str = Field(primary_key=True)
    ciphertext: str
    created_at: float


class MirrorRow(SQLModel, table=True):
    """A mirrored hub snapshot (docs/models.md), or one being pushed (``ready`` false until its commit).
    One ready row per (kind, hub id, revision): a commit replaces the earlier one."""

    __tablename__ = "mirror"

    id: str = Field(primary_key=True)  # the push id
    kind: str = Field(index=True)  # model | dataset
    hub_id: str = Field(index=True)
    revision: str
    files: str  # JSON: [{"path", "size", "sha256"}]
    bytes: int
    uploads: str = "{}"  # JSON: path -> multipart upload id, for the files that go up in parts
    created_at: float
    pushed_by: str
    ready: bool = False


class MetaRow(SQLModel, table=True):
    __tablename__ = "meta"

    key: str = Field(primary_key=True)
    value: str
