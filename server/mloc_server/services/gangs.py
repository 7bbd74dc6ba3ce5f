"""Gangs: one task leased to several agents at once (``resources.nodes: M``), all or none.

The policy (docs/gangs.md has the why):
- Per network at most one gang *forms* at a time: the first ready gang task in queue order (priority
  class, priority, age) that fits the polling agent and that its network could hold (M agents that
  could run it idle). A single task ahead of it in that order goes first.
- While it forms, every agent of that network that fits it and has room is *reserved*: a provisional
  lease (epoch -1) holds the GPUs the gang needs, so they take no new work. Agents the gang cannot use,
  and the reserved agents' other GPUs and slots, keep taking small tasks (backfill).
- The M-th reservation claims the task for all of them in one transaction (one epoch, one attempt
  naming every member) and each member's poll carries its lease (``Lease.gang``: node rank, members).
- A window (``gang_reserve_s``) bounds how long a forming gang holds agents. When it ends unfilled the
  reservations are released and the gang pauses as long (small tasks run), then forms again with a
  window twice as long (up to 16 times): a gang is delayed but not starved by tasks that end, and a
  half-built gang never holds GPUs indefinitely. One forming gang per network cannot deadlock with
  another: no two gangs ever hold parts of one pool.

Fate sharing: a member's lease lost (expired, the agent restarted, a rank failed) requeues the task
once, as one task, at the gang's epoch; every other member's lease is dropped, so its next heartbeat
answers 409 and it stops its ranks within a heartbeat interval. Later reports of the same attempt are
stale and change nothing, so one lost peer costs one attempt of ``retry.max_attempts``.
Node rank 0's completion is the task's; the others' free their slots.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from mloc_shared.errors import MlocError
from mloc_shared.protocol import Completion, GangInfo, HeartbeatRequest, Lease, RendezvousPoint

from mloc_server.clock import Clock
from mloc_server.services.fleet import AgentState, Fleet, LeaseState
from mloc_server.services.leasing import Leasing
from mloc_server.services.queue import QueuedTask
from mloc_server.services.scheduler import Requirement, pick_gpus, static_mismatch
from mloc_server.settings import CoordinatorSettings
from mloc_server.store import Store
from mloc_server.store.records import GangMember

log = logging.getLogger(__name__)
MAX_WINDOW_FACTOR = 16


@dataclass(eq=False)
class Forming:
    """A gang reserving agents in one network."""

    task: QueuedTask
    network: str
    deadline: float  # clock.monotonic()
    window: float
    reserved: dict[str, LeaseState] = field(default_factory=dict)  # agent id -> provisional lease, in order


@dataclass(eq=False)
class Gang:
    """A gang task running on its members at one epoch."""

    task_id: str
    epoch: int
    network: str
    members: list[str]  # agent ids, by node rank
    leases: dict[str, LeaseState] = field(default_factory=dict)  # agent id -> its lease (rank 0's is the fleet's)
    rendezvous: RendezvousPoint | None = None
    final: str | None = None  # the task's final state, once node rank 0 ended it


class Gangs:
    def __init__(self, db: Store, fleet: Fleet, leasing: Leasing, settings: CoordinatorSettings,
                 clock: Clock) -> None:
        self.db, self.fleet, self.leasing, self.settings, self.clock = db, fleet, leasing, settings, clock
        self.forming: dict[str, Forming] = {}  # network -> the gang forming there
        self.live: dict[str, Gang] = {}  # task id -> its running gang
        self.paused: dict[str, tuple[float, float]] = {}  # task id -> (forms again after (monotonic), next window)
        leasing.gangs = self
        leasing.on_task_final.append(self._task_final)

    # -- scheduling ---------------------------------------------------------------------------

    async def claim(self, agent: AgentState, free: int, poll_id: str) -> tuple[list[Lease], int]:
        """An agent's poll has ``free`` slots: reserve it for the gang forming in its network (or start
        one). Returns the leases of a gang it completed and the slots left for single tasks."""
        if free <= 0 or not agent.accepting:
            return [], free
        forming = self.forming.get(agent.network_name)
        if forming is not None and forming.task.id not in self.fleet.queue:  # cancelled meanwhile
            self._release(forming, pause=False)
            forming = None
        if forming is None:
            forming = self._start(agent, free)
        if forming is None or agent.id in forming.reserved:
            return [], free
        gpus = pick_gpus(forming.task.req, agent.view(free))
        if gpus is None:  # it cannot give the gang what it needs now: backfill
            return [], free
        forming.reserved[agent.id] = self._reserve(agent, forming.task, gpus, poll_id)
        if len(forming.reserved) < forming.task.req.nodes:
            self._wake_fitting(forming)
            return [], free - 1
        return await self._launch(forming, agent), free - 1

    def _start(self, agent: AgentState, free: int) -> Forming | None:
        """The gang this agent's network should form now, if any (see the module's policy)."""
        candidates = self.fleet.queue.gangs(self.clock.time())
        if not candidates:  # every poll passes here: no cost without gangs
            return None
        view, mono = agent.view(free), self.clock.monotonic()
        single = self.fleet.queue.first_fitting(view)
        busy = {f.task.id for f in self.forming.values()}
        for qt in candidates:
            paused = self.paused.get(qt.id)
            if qt.id in busy or (paused is not None and paused[0] > mono):
                continue
            if single is not None and single.sort_key < qt.sort_key:
                return None  # a single task ahead of every remaining gang in queue order
            if pick_gpus(qt.req, view) is None or self.capacity(qt.req, agent.network_name) < qt.req.nodes:
                continue
            window = paused[1] if paused is not None else self.settings.gang_reserve_s
            forming = Forming(qt, agent.network_name, mono + window, window)
            self.forming[forming.network] = forming
            log.info("gang %s forms in network %s (window %.0fs)", qt.id, forming.network, window)
            return forming
        return None

    def capacity(self, req: Requirement, network: str) -> int:
        """How many agents of ``network`` could run one member of the gang when idle."""
        return sum(1 for a in self.fleet.agents.values()
                   if a.network_name == network and a.accepting and static_mismatch(req, a.view()) is None)

    def _wake_fitting(self, forming: Forming) -> None:
        """Wake the held polls of the network's agents that fit, so they reserve themselves now."""
        for a in list(self.fleet.agents.values()):
            if (a.id not in forming.reserved and a.waiter is not None and a.network_name == forming.network
                    and pick_gpus(forming.task.req, a.view()) is not None):
                a.wake("task")

    async def _launch(self, forming: Forming, last: AgentState) -> list[Lease]:
        """Every member is reserved: claim the task for all of them in one commit."""
        task = forming.task
        for agent_id in list(forming.reserved):
            agent = self.fleet.agents.get(agent_id)
            if agent is None or not agent.accepting or (agent.waiter is not None and not agent.peer_alive()):
                self._unreserve(forming.reserved.pop(agent_id))  # gone meanwhile: wait for another
        if len(forming.reserved) < task.req.nodes:
            return []
        del self.forming[forming.network]
        members = list(forming.reserved.values())
        self.fleet.queue.remove(task.id)
        claims = [GangMember(lease.agent_id, lease.gpus) for lease in members]
        now = self.clock.time()
        poll_id = members[-1].claim_id or ""
        try:
            claimed = await self.db.write(lambda tx: tx.claim_gang(task.id, claims, forming.network, poll_id, now))
        except Exception:
            for lease in members:
                self._unreserve(lease)
            self.fleet.queue.add(task, now)
            raise
        if claimed is None:  # cancelled under us
            for lease in members:
                self._unreserve(lease)
            return []
        gang = Gang(task.id, claimed.epoch, forming.network, [lease.agent_id for lease in members])
        spec = json.loads(claimed.spec)
        for rank, lease in enumerate(members):
            lease.epoch, lease.attempt, lease.started_at = claimed.epoch, claimed.attempt, now
            lease.expires_at = self.clock.monotonic() + self.settings.lease_ttl_s
            self._join(gang, rank, lease, claimed.task_type, spec, claimed.last_checkpoint)
            if lease.agent_id != last.id:
                lease.delivered = False  # the member's poll carries it (services/polling.py)
                self.fleet.wake_agent(lease.agent_id, "task")
        self.paused.pop(task.id, None)
        self.fleet.counters["leases_granted"] += len(members)
        log.info("gang %s starts on %s (epoch %d)", task.id,
                 ", ".join(self.fleet.agent_name(a) for a in gang.members), gang.epoch)
        offer = gang.leases[last.id].offer
        return [offer] if offer is not None else []

    def _join(self, gang: Gang, rank: int, lease: LeaseState, task_type: str, spec: dict[str, Any],
              checkpoint: str | None) -> None:
        """Make ``lease`` node rank ``rank`` of ``gang``, with its offer (every member gets the resume point)."""
        lease.nodes, lease.node_rank = len(gang.members), rank
        info = GangInfo(nodes=len(gang.members), node_rank=rank, network=gang.network,
                        members=[self.fleet.agent_name(a) for a in gang.members])
        lease.offer = self.leasing.offer_for(lease, task_type, spec, checkpoint).model_copy(update={"gang": info})
        gang.leases[lease.agent_id] = lease
        if rank == 0:
            self.fleet.leases[gang.task_id] = lease
        self.live[gang.task_id] = gang

    def _reserve(self, agent: AgentState, task: QueuedTask, gpus: tuple[int, ...], poll_id: str) -> LeaseState:
        """A provisional lease (epoch -1, on the agent only) holding the GPUs the gang needs of it."""
        lease = LeaseState(task_id=task.id, agent_id=agent.id, epoch=-1, attempt=0, gpus=gpus,
                           expires_at=self.clock.monotonic() + self.settings.lease_ttl_s,
                           started_at=self.clock.time(), req=task.req, meta=task.meta, claim_id=poll_id)
        agent.leases[task.id] = lease
        return lease

    def _unreserve(self, lease: LeaseState) -> None:
        agent = self.fleet.agents.get(lease.agent_id)
        if agent is not None and agent.leases.get(lease.task_id) is lease:
            del agent.leases[lease.task_id]
            agent.freed_since_poll += 1
            agent.wake("slot")

    def _release(self, forming: Forming, *, pause: bool) -> None:
        """Let a forming gang's agents go; ``pause``: its window ended, it forms again later, longer."""
        self.forming.pop(forming.network, None)
        for lease in forming.reserved.values():
            self._unreserve(lease)
        if pause:
            limit = self.settings.gang_reserve_s * MAX_WINDOW_FACTOR
            self.paused[forming.task.id] = (self.clock.monotonic() + forming.window,
                                            min(forming.window * 2, limit))
            log.info("gang %s: %d of %d agents reserved in network %s when its window ended; released",
                     forming.task.id, len(forming.reserved), forming.task.req.nodes, forming.network)
        else:
            self.paused.pop(forming.task.id, None)

    # -- a running gang -----------------------------------------------------------------------

    def gang_of(self, lease: LeaseState) -> Gang | None:
        """The running gang ``lease`` is a member of (None: a single-agent lease)."""
        gang = self.live.get(lease.task_id)
        return gang if gang is not None and gang.leases.get(lease.agent_id) is lease else None

    def heartbeat(self, lease: LeaseState, req: HeartbeatRequest) -> RendezvousPoint | None:
        """Node rank 0 publishes the rendezvous; every member learns it from its heartbeat replies."""
        gang = self.gang_of(lease)
        if gang is None:
            return None
        if req.rendezvous is not None and lease.node_rank == 0:
            gang.rendezvous = req.rendezvous
        return gang.rendezvous

    async def expire(self, lease: LeaseState, reason: str, *, lost: bool) -> str | None:
        """A member's lease is lost: the whole gang goes back to the queue, once."""
        gang = self.gang_of(lease)
        if gang is None:
            return None
        if gang.final is not None:  # the task is over: this member only frees its slot
            self._leave(gang, lease, freed=not lost)
            return gang.final
        who = f"node rank {lease.node_rank} on agent {self.fleet.agent_name(lease.agent_id)}"
        return await self._fate_share(gang, f"gang member {who}: {reason}", lost=lost)

    async def _fate_share(self, gang: Gang, reason: str, *, lost: bool) -> str | None:
        rank0 = gang.leases.get(gang.members[0])
        del self.live[gang.task_id]  # from here on node rank 0's lease is requeued as a single one
        try:
            state = await self.leasing.expire(rank0, reason, lost=lost) if rank0 is not None else None
        except Exception:
            self.live[gang.task_id] = gang
            raise
        for agent_id, lease in list(gang.leases.items()):
            if agent_id != gang.members[0]:
                self._leave(gang, lease, freed=False)  # its next heartbeat answers 409: it stops its ranks
        log.warning("gang %s epoch %d stopped on every member: %s -> %s", gang.task_id, gang.epoch, reason, state)
        return state

    def _leave(self, gang: Gang, lease: LeaseState, *, freed: bool) -> None:
        """Forget a member's lease (never through ``fleet.drop_lease``: the task's lease is node rank 0's)."""
        gang.leases.pop(lease.agent_id, None)
        agent = self.fleet.agents.get(lease.agent_id)
        if agent is not None and agent.leases.get(lease.task_id) is lease:
            del agent.leases[lease.task_id]
            if freed:
                agent.freed_since_poll += 1
                agent.wake("slot")
        if gang.final is not None and not gang.leases and self.live.get(gang.task_id) is gang:
            del self.live[gang.task_id]

    async def completion(self, agent: AgentState, task_id: str, c: Completion) -> str | MlocError | None:
        """A member's outcome; None: node rank 0's to record as the task's (leasing's usual path)."""
        lease = agent.leases.get(task_id)
        gang = self.gang_of(lease) if lease is not None else None
        if gang is None or lease is None or lease.epoch != c.epoch or lease.closing:
            return None
        if gang.final is not None:
            self._leave(gang, lease, freed=True)
            return gang.final
        rank0 = gang.leases.get(gang.members[0])
        stopping = rank0 is not None and (rank0.cancel_requested or rank0.timed_out)
        if c.outcome == "failed" and not stopping:
            why = c.error or f"exit code {c.exit_code}"
            if c.retryable is False:  # an input error fails the task at once, from whichever rank
                if lease.node_rank == 0 or rank0 is None:
                    return None
                owner = self.fleet.agents.get(rank0.agent_id)
                self._leave(gang, lease, freed=True)
                if owner is None:
                    return "running"
                failed = c.model_copy(update={"epoch": rank0.epoch,
                                              "error": f"node rank {lease.node_rank} ({agent.name}): {why}"})
                return (await self.leasing.complete_many(owner, [(task_id, failed)]))[0]
            # a failed rank cannot be told from one whose peer vanished: the gang is retried, once
            if lease.node_rank != 0:
                self._leave(gang, lease, freed=True)
            return await self._fate_share(gang, f"node rank {lease.node_rank} on agent {agent.name} failed: {why}",
                                          lost=False)
        if lease.node_rank == 0:
            return None
        self._leave(gang, lease, freed=True)
        return "running"

    def _task_final(self, task_id: str, state: str) -> None:
        """Node rank 0 ended the task: the members still running are asked to stop."""
        gang = self.live.get(task_id)
        if gang is None:
            return
        gang.final = state
        gang.leases.pop(gang.members[0], None)
        for agent_id, lease in gang.leases.items():
            lease.cancel_requested = True
            self.fleet.wake_agent(agent_id, "cancel")
        if not gang.leases:
            del self.live[task_id]

    async def tick(self) -> None:
        """The reaper's pass: members' expiry, cancels passed on, reservation windows ended."""
        mono = self.clock.monotonic()
        for gang in list(self.live.values()):
            rank0 = gang.leases.get(gang.members[0])
            for agent_id, lease in list(gang.leases.items()):
                if agent_id == gang.members[0] or lease.closing or self.live.get(gang.task_id) is not gang:
                    continue
                if rank0 is not None and rank0.cancel_requested and not lease.cancel_requested:
                    lease.cancel_requested = True
                    self.fleet.wake_agent(agent_id, "cancel")
                if lease.expires_at < mono:
                    await self.expire(lease, f"lease expired: no heartbeat within {self.settings.lease_ttl_s:g}s",
                                      lost=True)
        for task_id, (until, window) in list(self.paused.items()):
            queued = self.fleet.queue.get(task_id)
            if queued is None:
                del self.paused[task_id]
            elif until <= mono and until != float("-inf"):
                self.paused[task_id] = (float("-inf"), window)  # over (its next window is kept): woken once
                self.fleet.wake_for(queued.req)  # an agent that fits starts it forming
        for forming in list(self.forming.values()):
            if forming.task.id not in self.fleet.queue:
                self._release(forming, pause=False)
            elif forming.deadline < mono:
                self._release(forming, pause=True)

    # -- after a restart, and for the task's record ---------------------------------------------

    def restore(self, rank0: LeaseState, gang_json: str, task_type: str, spec: dict[str, Any],
                checkpoint: str | None) -> None:
        """Rebuild a running gang from its task row (recovery.py): every member gets the restart grace."""
        stored = json.loads(gang_json)
        members = stored["members"]
        gang = Gang(rank0.task_id, rank0.epoch, stored["network"], [m["agent_id"] for m in members])
        for rank, m in enumerate(members):
            lease = rank0 if rank == 0 else LeaseState(
                task_id=rank0.task_id, agent_id=m["agent_id"], epoch=rank0.epoch, attempt=rank0.attempt,
                gpus=tuple(m["gpus"]), expires_at=rank0.expires_at, started_at=rank0.started_at, req=rank0.req,
                meta=rank0.meta, cancel_requested=rank0.cancel_requested)
            self._join(gang, rank, lease, task_type, spec, checkpoint)
            agent = self.fleet.agents.get(lease.agent_id)
            if rank > 0 and agent is not None:
                agent.leases[lease.task_id] = lease

    def pending_reason(self, task_id: str, req: Requirement) -> str:
        """What a queued gang waits for."""
        mono = self.clock.monotonic()
        for forming in self.forming.values():
            if forming.task.id == task_id:
                return (f"gang: {len(forming.reserved)} of {req.nodes} agents reserved in network "
                        f"{forming.network} (released in {max(0.0, forming.deadline - mono):.0f}s "
                        "if not all come free)")
        paused = self.paused.get(task_id)
        if paused is not None and paused[0] > mono:
            return (f"gang: too few agents came free in its last reservation window; other tasks run for "
                    f"{paused[0] - mono:.0f}s, then it reserves again for {paused[1]:.0f}s")
        networks = {a.network_name for a in self.fleet.agents.values()}
        best = max(((self.capacity(req, n), n) for n in networks), default=(0, "none"))
        if best[0] < req.nodes:
            return (f"gang: needs {req.nodes} agents in one network that fit ({req.describe()}); "
                    f"the best network ({best[1]}) has {best[0]}")
        return f"gang: waiting for {req.nodes} fitting agents of one network to have free GPUs"
