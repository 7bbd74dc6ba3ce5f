"""The agent <-> coordinator wire protocol: typed models both sides import.

Readers are lenient (unknown fields are ignored, so a newer peer may add fields); writers build
these models, never hand-made dicts. See version.py for the compatibility rule.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mloc_shared.version import PROTOCOL_VERSION

# "blocked": waiting on other tasks (depends_on, the outputs it reads, a sweep's max_parallel); never leased
TaskState = Literal["blocked", "queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
# "preempted": the task stopped (having checkpointed) because the coordinator or its agent asked it to
# make room; the coordinator queues it again at once, and it is not a failed attempt
Outcome = Literal["succeeded", "failed", "cancelled", "preempted"]
# An integer the coordinator stores in a 64-bit SQLite column: a larger one is refused naming its field.
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Gpu(WireModel):
    """One GPU as the agent sees it (NVML) or as it was declared in config."""

    index: int
    uuid: str
    name: str
    memory_total_mb: int
    memory_free_mb: int | None = None
    compute_capability: str | None = None
    driver: str | None = None
    utilization_pct: float | None = None
    declared: bool = False

    @property
    def memory_gb(self) -> float:
        return self.memory_total_mb / 1024

    @property
    def cc(self) -> float:
        try:
            return float(self.compute_capability or 0)
        except ValueError:
            return 0.0


class HeldModel(WireModel):
    """A model or dataset an agent holds on disk (placement prefers an agent that holds a task's model).

    ``kind``: model | dataset. ``where``: hf-cache (its Hugging Face cache, which is also where tasks'
    hub downloads land), mirror (a copy fetched from the coordinator's mirror) or store (a folder under
    its data dir's ``models/`` or ``datasets/``). Plain strings, so a newer agent's value still reads."""

    id: str = Field(min_length=1, max_length=1024)
    kind: str = Field("model", max_length=32)
    bytes: int = Field(0, ge=0, le=2**63 - 1)
    where: str = Field("hf-cache", max_length=32)


MAX_HELD_MODELS = 4096


class Inventory(WireModel):
    hostname: str
    gpus: list[Gpu] = Field(default_factory=list)
    gpu_source: Literal["nvml", "declared", "none"] = "none"
    nvml_error: str | None = None
    cpu_count: int = 1
    memory_mb: int = 0
    disk_free_mb: int | None = None
    platform: str = ""
    # image: tasks: the container runtime this agent runs them with (None: it takes none), and the
    # images it holds (placement prefers an agent that has a task's image)
    container_runtime: str | None = None
    images: list[str] = Field(default_factory=list, max_length=4096)
    # what the agent can run beyond task types, for matching (docs/protocol.md, Matching): "deepspeed"
    # (importable where its training tasks run), "cuda-gpus" (NVML found GPUs). Optional on the wire:
    # an older agent reports none
    capabilities: list[str] = Field(default_factory=list, max_length=64)
    # the models and datasets it holds, and the free bytes of its data dir's disk (mloc_agent/model_cache.py);
    # refreshed by a poll when they change. Optional on the wire: an older agent reports none
    models: list[HeldModel] = Field(default_factory=list, max_length=MAX_HELD_MODELS)
    disk_free_bytes: Int64 | None = None


class Timings(WireModel):
    """Server-chosen intervals, handed to agents so the fleet is tuned in one place."""

    poll_hold_s: float
    heartbeat_s: float
    lease_ttl_s: float


class RegisterRequest(WireModel):
    protocol_version: int = PROTOCOL_VERSION
    agent_version: str
    name: str = Field(min_length=1, max_length=100)
    labels: dict[str, str] = Field(default_factory=dict)
    inventory: Inventory
    task_types: list[str]
    max_tasks: int = Field(1, ge=1, le=1024)
    # which agents can reach each other (a gang uses one network; docs/gangs.md): MLOC_NETWORK, or None
    # for the address the coordinator sees the agent's polls come from (boxes behind one NAT share it)
    network: str | None = Field(None, max_length=200)
    addresses: list[str] = Field(default_factory=list, max_length=64)  # its LAN IPv4 addresses


class RegisterResponse(WireModel):
    protocol_version: int = PROTOCOL_VERSION
    agent_id: str
    credential: str
    timings: Timings


class LeaseRef(WireModel):
    task_id: str
    epoch: int


class GpuStat(WireModel):
    index: int
    utilization_pct: float | None = None
    memory_used_mb: int | None = None


MAX_HEARTBEAT_POINTS = 100  # progress points one heartbeat or completion carries


class Completion(WireModel):
    epoch: int
    outcome: Outcome
    exit_code: Int64 | None = None
    result: dict[str, Any] | None = None
    error: str | None = Field(None, max_length=20000)
    # optional, so older agents and coordinators still talk: what kind of failure (the module's
    # error code), and False when another attempt would fail the same (an input error)
    error_code: str | None = Field(None, max_length=64)
    retryable: bool | None = None
    # the progress steps no heartbeat carried yet (HeartbeatRequest.points): the curve's last seconds
    points: list[Progress] | None = Field(None, max_length=MAX_HEARTBEAT_POINTS)
    # how its process started (docs/warm-starts.md): forked from a warm runtime's template, or exec'd;
    # None: it never started one (or an older agent)
    start: Literal["warm", "cold"] | None = None


class CompletionRef(Completion):
    """A completion sent inside a poll (finish one task and ask for the next in one call)."""

    task_id: str


class CompletionBatch(WireModel):
    """Several completions in one call (many short tasks finishing together)."""

    completions: list[CompletionRef] = Field(min_length=1, max_length=1000)


class CompletionResult(WireModel):
    task_id: str
    state: str | None = None
    error: str | None = None
    code: str | None = None


class CompletionResults(WireModel):
    results: list[CompletionResult]


class WarmRuntimeStat(WireModel):
    """One warm runtime's template on an agent (docs/warm-starts.md): its state and resident memory."""

    python: str = Field(max_length=4096)
    state: str = Field(max_length=32)  # starting | ready | dead
    pid: int | None = None
    rss_mb: float | None = None


class PollRequest(WireModel):
    poll_id: str = Field(min_length=8, max_length=64, description="agent-chosen; a retry returns the same leases")
    free_slots: int = Field(ge=0, le=1024)
    running: list[LeaseRef] = Field(default_factory=list)
    completions: list[CompletionRef] = Field(default_factory=list)
    draining: bool = False
    gpu_stats: list[GpuStat] | None = None
    # what the agent holds, sent when it changed since the last poll it had an answer to (None: unchanged);
    # the coordinator replaces the inventory's ``models`` and ``disk_free_bytes`` with them
    models: list[HeldModel] | None = Field(None, max_length=MAX_HELD_MODELS)
    disk_free_bytes: Int64 | None = None
    warm_runtimes: list[WarmRuntimeStat] | None = Field(None, max_length=64)  # None: warm starts off (or older)


class Checkpoint(WireModel):
    """The last checkpoint an earlier attempt uploaded; the next attempt resumes from it."""

    name: str
    step: int | None = None
    url: str
    size: int | None = None


class GangInfo(WireModel):
    """A lease that is one member of a gang (``resources.nodes`` > 1): its place among the others."""

    nodes: int
    node_rank: int
    members: list[str]  # agent names, by node rank
    network: str


class RendezvousPoint(WireModel):
    """Where a gang's ranks meet: node rank 0's LAN address and the free port it picked."""

    master_addr: str = Field(min_length=1, max_length=255)
    master_port: int = Field(ge=1, le=65535)


class Lease(WireModel):
    task_id: str
    epoch: int
    attempt: int
    task_type: str
    spec: dict[str, Any]
    gpus: list[int] = Field(default_factory=list)
    ttl_s: float
    resume: Checkpoint | None = None
    owner: str | None = None  # the task's user: what an agent keeps between tasks (RAG collections) is theirs
    gang: GangInfo | None = None  # set when the task spans several agents


class PreemptNotice(WireModel):
    """Checkpoint now and stop: the task's GPUs are wanted (docs/scheduling.md). The task has
    ``grace_s`` seconds from the agent's receipt to save and exit; then it is stopped."""

    grace_s: float = Field(ge=0, le=86400)
    reason: str = Field("", max_length=500)


class PollResponse(WireModel):
    leases: list[Lease] = Field(default_factory=list)
    cancel: list[str] = Field(default_factory=list)
    # task id -> notice: the same request the lease's next heartbeat carries, sooner (the held poll wakes)
    preempt: dict[str, PreemptNotice] = Field(default_factory=dict)
    lost: list[str] = Field(default_factory=list)
    drain: bool = False
    timings: Timings | None = None


class Progress(WireModel):
    step: int | None = None
    total: int | None = None
    percent: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    message: str | None = Field(None, max_length=500)
    metrics: dict[str, float] | None = None


class HeartbeatRequest(WireModel):
    epoch: int
    progress: Progress | None = None
    # the progress reports with a new step since the last renewal, oldest first (the loss curve between
    # heartbeats: docs/pages.md); ``progress`` is still the latest
    points: list[Progress] | None = Field(None, max_length=MAX_HEARTBEAT_POINTS)
    rendezvous: RendezvousPoint | None = None  # a gang's node rank 0 publishes where its ranks meet


class HeartbeatResponse(WireModel):
    cancel: bool = False
    ttl_s: float
    preempt: PreemptNotice | None = None
    rendezvous: RendezvousPoint | None = None  # every gang member, once rank 0 has published it


class LogChunk(WireModel):
    seq: int = Field(ge=0, le=2**63 - 1)
    stream: Literal["stdout", "stderr", "system"] = "stdout"
    data: str = Field(max_length=1_000_000)


class LogBatch(WireModel):
    epoch: int
    chunks: list[LogChunk] = Field(max_length=1000)


class UploadRequest(WireModel):
    epoch: int
    name: str = Field(min_length=1, max_length=512)
    size: int = Field(ge=0, le=2**63 - 1)
    kind: Literal["artifact", "checkpoint"] = "artifact"
    step: Int64 | None = None


class PartUrl(WireModel):
    part_number: int
    url: str


class UploadPlan(WireModel):
    """How to upload one file: a single PUT, or parts then a commit with their ETags."""

    upload_id: str
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    part_size: int | None = None
    parts: list[PartUrl] | None = None


class UploadedPart(WireModel):
    part_number: int = Field(ge=1, le=10_000)
    etag: str


class UploadCommit(WireModel):
    epoch: int
    upload_id: str
    parts: list[UploadedPart] | None = None


class SourcesRequest(WireModel):
    """Agent -> coordinator: the outputs of the finished tasks this lease's spec reads (chaining.py)."""

    epoch: int


class SourceArtifact(WireModel):
    name: str
    size: int | None = None
    url: str


class SourceTask(WireModel):
    """A finished task another task reads: its outputs (presigned downloads) and its model source."""

    task_id: str
    task_type: str
    model_source: dict[str, Any] | None = None
    artifacts: list[SourceArtifact] = Field(default_factory=list)


class SourcesResponse(WireModel):
    sources: list[SourceTask] = Field(default_factory=list)


class SecretsRequest(WireModel):
    """Agent -> coordinator: the values of the secrets a lease's spec names (never in the lease itself)."""

    epoch: int


class SecretsResponse(WireModel):
    secrets: dict[str, str] = Field(default_factory=dict)
