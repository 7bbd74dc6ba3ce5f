"""In-memory state of the fleet: the queue, agents, their leases and their waiting polls.

SQLite is the truth; this mirror is rebuilt from it at start (services/recovery.py) and updated
after each commit, so the hot paths (poll, heartbeat) answer without a query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mloc_shared.protocol import GpuStat, HeldModel, Inventory, Lease, PreemptNotice, WarmRuntimeStat

from mloc_server.services.queue import QueuedTask, TaskMeta, TaskQueue
from mloc_server.services.scheduler import AgentView, Requirement, pick_gpus
from mloc_server.services.waiting import Preference, WaitingPolls
from mloc_server.store.records import NewPoint

if TYPE_CHECKING:
    from mloc_server.services.fairshare import SharePolicy

# event counts kept in memory since start (api/metrics.py exports them)
COUNTERS = ("leases_granted", "handoffs", "leases_expired", "tasks_finished", "polls", "heartbeats",
            "preemptions_requested", "preemptions")


@dataclass
class LeaseState:
    task_id: str
    agent_id: str
    epoch: int
    attempt: int
    gpus: tuple[int, ...]
    expires_at: float  # clock.monotonic()
    started_at: float  # clock.time()
    req: Requirement
    meta: TaskMeta
    offer: Lease | None = None
    claim_id: str | None = None
    cancel_requested: bool = False
    cancel_sent: bool = False
    timed_out: bool = False
    closing: bool = False  # a completion or requeue is being committed
    progress: dict[str, Any] | None = None
    progress_dirty: bool = False
    points: list[NewPoint] = field(default_factory=list)  # progress history not written yet (services/history.py)
    last_point_step: int | None = None
    points_stored: int | None = None  # rows this attempt holds, as the last write said (None: not known)
    start: str | None = None  # how the agent started its process ("warm" | "cold"), from its completion
    delivered: bool = True  # False while a handed-off offer waits for a poll reply to carry it
    preempt: PreemptNotice | None = None  # asked to checkpoint and stop (services/preemption.py, a drain)
    preempt_sent: bool = False  # a poll reply carried it (heartbeat replies carry it until the end)
    nodes: int = 1  # a gang's member leases (services/gangs.py): how many, and this one's node rank
    node_rank: int = 0


@dataclass
class AgentState:
    id: str
    name: str
    credential_hash: str
    labels: dict[str, str]
    inventory: Inventory
    task_types: frozenset[str]
    max_tasks: int
    state: str = "active"  # active | draining (cordoned by an operator)
    version: str = ""
    registered_at: float = 0.0
    last_seen: float = 0.0
    address: str | None = None  # where its last poll came from (behind NAT: the NAT's address)
    network: str | None = None  # the network it declared (gangs); None: ``address`` stands for it
    addresses: list[str] = field(default_factory=list)  # its LAN addresses, as it reported them
    self_draining: bool = False  # the agent itself is shutting down (SIGTERM)
    leases: dict[str, LeaseState] = field(default_factory=dict)
    waiter: asyncio.Future[str] | None = None
    # whether the connection of its held poll is still open (a killed agent's poll is not read)
    peer_alive: Callable[[], bool] = field(default=lambda: True, repr=False)
    freed_since_poll: int = 0
    poll_id: str | None = None  # the held poll's id, and how many tasks it can take (for handoffs)
    poll_free: int = 0
    reserved: int = 0  # handoffs reserved for the held poll, not yet committed
    gpu_stats: list[GpuStat] | None = None
    warm_runtimes: list[WarmRuntimeStat] | None = None
    seen_dirty: bool = False
    # it made a call with its credential since it was registered: someone holds it (a join token may
    # then never take its name; before that, its registration's answer may just have been lost)
    credential_used: bool = False
    image_set: frozenset[str] = field(default=frozenset(), init=False, repr=False)
    capability_set: frozenset[str] = field(default=frozenset(), init=False, repr=False)
    model_set: frozenset[str] = field(default=frozenset(), init=False, repr=False)  # hub ids of held models
    held_keys: frozenset[str] = field(default=frozenset(), init=False, repr=False)  # "image:…", "model:…"
    inventory_dirty: bool = False  # its held models changed since the last flush (services/reaper.py)

    def __post_init__(self) -> None:
        # once: view() is on every poll's path
        self.image_set = frozenset(self.inventory.images)
        self._held(_model_ids(self.inventory.models))
        # an agent from before capabilities were reported still says where its GPUs came from
        cuda = {"cuda-gpus"} if self.inventory.gpu_source == "nvml" else set()
        self.capability_set = frozenset(self.inventory.capabilities) | cuda

    def set_models(self, models: list[HeldModel], disk_free_bytes: int | None) -> None:
        """What a poll reported it holds now (mloc_agent/model_cache.py); the reaper writes it down."""
        update: dict[str, Any] = {"models": models}
        if disk_free_bytes is not None:
            update["disk_free_bytes"] = disk_free_bytes
        self.inventory = self.inventory.model_copy(update=update)
        self._held(_model_ids(models))
        self.inventory_dirty = True

    def _held(self, models: frozenset[str]) -> None:
        self.model_set = models
        self.held_keys = frozenset({image_key(i) for i in self.image_set} | {model_key(m) for m in models})

    def holds_model(self, model: str | None) -> bool | None:
        """Whether it holds the hub model ``model``; None when there is no model to hold."""
        return None if model is None else model in self.model_set

    @property
    def accepting(self) -> bool:
        return self.state == "active" and not self.self_draining

    def used_gpus(self) -> set[int]:
        used: set[int] = set()
        for lease in self.leases.values():
            used.update(lease.gpus)
        return used

    def view(self, free_slots: int | None = None) -> AgentView:
        slots = self.max_tasks - len(self.leases)
        return AgentView(
            name=self.name,
            gpus=self.inventory.gpus,
            labels=self.labels,
            task_types=self.task_types,
            used_gpus=self.used_gpus(),
            free_slots=max(0, min(slots, slots if free_slots is None else free_slots)),
            accepting=self.accepting,
            container_runtime=self.inventory.container_runtime,
            images=self.image_set,
            capabilities=self.capability_set,
        )

    def wake(self, reason: str) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(reason)

    @property
    def network_name(self) -> str:
        """Which agents can reach each other: the declared network, else the address polls come from."""
        return self.network or self.address or "unknown"

    def connected(self, hold_s: float, now: float) -> bool:
        return now - self.last_seen < hold_s + 30


def _model_ids(models: list[HeldModel]) -> frozenset[str]:
    """The hub ids an agent can load without a download: its hub cache and mirror copies (a folder of its
    store is not found by a hub id), models only (a dataset of the same name is not the model)."""
    return frozenset(m.id for m in models if m.kind == "model" and m.where in ("hf-cache", "mirror"))


def image_key(image: str) -> str:
    """An image's key among what an agent holds; a reference without a tag means ``:latest``."""
    return "image:" + (image if ":" in image.rsplit("/", 1)[-1] else f"{image}:latest")


def model_key(hub_id: str) -> str:
    return "model:" + hub_id


def prefers(req: Requirement) -> Preference | None:
    """Which waiting agents a task goes to first: those already holding its image or its hub model, the
    ones holding both before the others (services/waiting.py). None: nothing to prefer."""
    keys = ([image_key(req.image)] if req.image is not None else []) + ([model_key(req.model)] if req.model else [])
    return Preference(tuple(keys)) if keys else None


class Fleet:
    """The queue, the agents, their leases and their held polls: what every hot path reads.

    Pure state, no I/O and no clock: leasing commits first and then updates this, so a failed
    write leaves the mirror as it was. One object, so the parts of the coordinator that change it
    (leasing, the long poll, registration, the reaper) are handed the same one explicitly.
    """

    def __init__(self, policy: SharePolicy | None = None) -> None:
        self.policy = policy  # fair share and quotas (services/fairshare.py): counts every lease
        self.queue = TaskQueue(policy)
        self.agents: dict[str, AgentState] = {}
        self.by_credential: dict[str, AgentState] = {}
        self.by_name: dict[str, AgentState] = {}
        self.leases: dict[str, LeaseState] = {}
        self.waiting = WaitingPolls()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        # task id -> when it was preempted (the anti-thrash window; in memory: a restart forgets it)
        self.preempted_at: dict[str, list[float]] = {}
        # requirement -> why the queue's head of that shape waits instead of preempting (the last check)
        self.preempt_reasons: dict[Requirement, str] = {}

    def add_agent(self, agent: AgentState) -> None:
        """Register an agent, or replace the one with its id (re-registered): it keeps the leases."""
        old = self.agents.get(agent.id)
        if old is not None:
            self.by_credential.pop(old.credential_hash, None)
            self.by_name.pop(old.name, None)
            agent.leases = old.leases
            old.wake("superseded")
        self.agents[agent.id] = agent
        self.by_credential[agent.credential_hash] = agent
        self.by_name[agent.name] = agent

    def remove_agent(self, agent: AgentState) -> None:
        """Forget an agent identity (replaced by a new one under its name); it holds no lease."""
        self.agents.pop(agent.id, None)
        if self.by_credential.get(agent.credential_hash) is agent:
            del self.by_credential[agent.credential_hash]
        if self.by_name.get(agent.name) is agent:
            del self.by_name[agent.name]
        agent.wake("superseded")

    def agent_named(self, name: str) -> AgentState | None:
        return self.by_name.get(name)

    def agent_name(self, agent_id: str) -> str:
        """The agent's name for messages; its id when it is not registered (any more)."""
        agent = self.agents.get(agent_id)
        return agent.name if agent is not None else agent_id

    def wake_agent(self, agent_id: str, reason: str) -> None:
        agent = self.agents.get(agent_id)
        if agent is not None:
            agent.wake(reason)

    def add_lease(self, agent: AgentState | None, lease: LeaseState) -> None:
        """Track a lease, and hold its GPUs on ``agent`` (None: an agent no longer registered)."""
        if self.policy is not None and lease.task_id not in self.leases:
            self.policy.started(lease.meta.owner, lease.meta.team, len(lease.gpus))
        self.leases[lease.task_id] = lease
        if agent is not None:
            agent.leases[lease.task_id] = lease

    def drop_lease(self, lease: LeaseState, *, freed: bool = False) -> None:
        """Forget a lease; ``freed`` tells the agent's held poll that it can take one more task."""
        capped = False
        if self.leases.pop(lease.task_id, None) is not None and self.policy is not None:
            capped = self.policy.stopped(lease.meta.owner, lease.meta.team, len(lease.gpus))
        agent = self.agents.get(lease.agent_id)
        if agent is not None and agent.leases.pop(lease.task_id, None) is not None and freed:
            agent.freed_since_poll += 1
            agent.wake("slot")
        if capped:  # the owner was perhaps at a GPU quota: its queued tasks may fit idle agents now
            self.wake_for_queued()

    def enqueue(self, task: QueuedTask, now: float) -> None:
        if self.queue.add(task, now):
            self.wake_for(task.req)

    def wake_for(self, req: Requirement) -> None:
        """Wake one waiting agent that could take a task of this shape now (no thundering herd)."""
        for agent in self.waiting.pop_fitting(lambda view: pick_gpus(req, view) is not None, prefers(req)):
            agent.wake("task")
            if agent.peer_alive():  # a hung-up poll claims nothing: wake another one
                return

    def wake_for_queued(self) -> None:
        """New capacity (an agent registered or was uncordoned): wake a poll for each queued shape."""
        for req in self.queue.requirements():
            self.wake_for(req)
