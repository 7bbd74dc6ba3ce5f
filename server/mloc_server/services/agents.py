"""Agent identities and credentials, drain/cordon, and the fleet listing. Who may register what is
decided in services/registration.py; this module saves what it admits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from mloc_shared.errors import NotFound, Unauthorized
from mloc_shared.protocol import RegisterRequest, RegisterResponse

from mloc_server.clock import Clock
from mloc_server.schemas import Worker, WorkerGpu, WorkerLease
from mloc_server.services.auth import Auth, Principal, hash_secret, new_secret
from mloc_server.services.fleet import AgentState, Fleet, LeaseState
from mloc_server.services.leasing import lease_timings
from mloc_server.settings import CoordinatorSettings
from mloc_server.store import Store
from mloc_server.store.records import StoredAgent


def agent_from_row(row: StoredAgent) -> AgentState:
    """The in-memory agent for a stored one (at start; its leases are attached afterwards)."""
    return AgentState(
        id=row.id, name=row.name, credential_hash=row.credential_hash, labels=row.labels, inventory=row.inventory,
        task_types=frozenset(row.task_types), max_tasks=row.max_tasks, state=row.state, version=row.version,
        registered_at=row.registered_at, last_seen=row.last_seen,
        credential_used=row.last_seen > row.registered_at,  # it polled (or re-registered) since it registered
        network=row.network, addresses=list(row.addresses),
    )


def stored_agent(agent: AgentState) -> StoredAgent:
    return StoredAgent(
        id=agent.id, name=agent.name, credential_hash=agent.credential_hash, labels=agent.labels,
        inventory=agent.inventory, task_types=sorted(agent.task_types), max_tasks=agent.max_tasks,
        state=agent.state, version=agent.version, registered_at=agent.registered_at, last_seen=agent.last_seen,
        network=agent.network, addresses=list(agent.addresses),
    )


@dataclass(eq=False)
class Agents:
    db: Store
    fleet: Fleet
    settings: CoordinatorSettings
    clock: Clock

    def identity(self, req: RegisterRequest, existing: AgentState | None = None,
                 credential: str | None = None) -> tuple[AgentState, str]:
        """The agent a registration makes, and its credential: a new identity, or ``existing`` keeping
        its id, name, operator state and (once admitted) leases. The credential it presented is kept,
        so a re-registration whose answer was lost is answered the same when retried."""
        now = self.clock.time()
        credential = credential or new_secret("agent")
        agent = AgentState(
            id=existing.id if existing else uuid.uuid4().hex[:16], name=existing.name if existing else req.name,
            credential_hash=hash_secret(credential), labels=req.labels, inventory=req.inventory,
            task_types=frozenset(req.task_types), max_tasks=req.max_tasks,
            state=existing.state if existing else "active", version=req.agent_version,
            registered_at=existing.registered_at if existing else now, last_seen=now,
            credential_used=existing is not None,  # re-registered by its credential or an admin: a real one
            network=req.network, addresses=list(req.addresses),
            address=existing.address if existing else None,
        )
        return agent, credential

    async def register(self, req: RegisterRequest, existing: AgentState | None = None, *,
                       credential: str | None = None) -> RegisterResponse:
        """Save a registration already admitted (see ``identity``)."""
        agent, credential = self.identity(req, existing, credential)
        row = stored_agent(agent)
        await self.db.write(lambda tx: tx.save_agent(row))
        return self.admitted(agent, credential)

    def admitted(self, agent: AgentState, credential: str, replaced: AgentState | None = None) -> RegisterResponse:
        """After the commit: the fleet mirror takes the agent (instead of ``replaced``, a dropped identity)."""
        if replaced is not None:
            self.fleet.remove_agent(replaced)
        self.fleet.add_agent(agent)
        self.fleet.wake_for_queued()  # new capacity: wake it if work waits
        return RegisterResponse(agent_id=agent.id, credential=credential, timings=lease_timings(self.settings))

    def by_credential(self, authorization: str | None) -> AgentState | None:
        token = Auth.bearer(authorization)
        return self.fleet.by_credential.get(hash_secret(token)) if token else None

    def authenticate(self, authorization: str | None) -> AgentState:
        agent = self.by_credential(authorization)
        if agent is None:
            raise Unauthorized("unknown agent credential; register again with the join token")
        agent.credential_used = True
        return agent

    def find(self, key: str) -> AgentState:
        for agent in self.fleet.agents.values():
            if key in (agent.id, agent.name):
                return agent
        raise NotFound(f"no agent named {key!r}")

    async def set_state(self, key: str, state: str) -> AgentState:
        agent = self.find(key)
        await self.db.write(lambda tx: tx.set_agent_state(agent.id, state))
        agent.state = state
        agent.wake("state")
        if state == "active":
            self.fleet.wake_for_queued()
        return agent

    def describe(self, agent: AgentState, viewer: Principal) -> Worker:
        """The listing's view of an agent for ``viewer``; send it with ``exclude_unset`` (a GPU shows what was
        reported, a lease of someone else's task only its GPUs)."""
        hold = self.settings.poll_hold_s
        stats = {s.index: s for s in agent.gpu_stats or []}
        used = {g: lease for lease in agent.leases.values() for g in lease.gpus}
        gpus = []
        for gpu in agent.inventory.gpus:
            reported = gpu.model_dump(exclude_none=True)
            stat = stats.get(gpu.index)
            if stat is not None and stat.utilization_pct is not None:
                reported["utilization_pct"] = stat.utilization_pct
            if stat is not None and stat.memory_used_mb is not None:
                reported["memory_used_mb"] = stat.memory_used_mb
            lease = used.get(gpu.index)
            shown = lease is not None and _may_see(viewer, lease)
            gpus.append(WorkerGpu(**reported, busy=lease is not None, task_id=lease.task_id if shown else None))
        connected = agent.connected(hold, self.clock.time())
        held = agent.inventory.models
        shown_models = {"models": held} if viewer.is_admin else {}
        return Worker(
            id=agent.id, name=agent.name, labels=agent.labels, state=agent.state if connected else "offline",
            draining=agent.self_draining or agent.state == "draining", connected=connected, address=agent.address,
            version=agent.version, last_seen=agent.last_seen, registered_at=agent.registered_at,
            max_tasks=agent.max_tasks, task_types=sorted(agent.task_types), gpu_source=agent.inventory.gpu_source,
            hostname=agent.inventory.hostname, cpu_count=agent.inventory.cpu_count,
            memory_mb=agent.inventory.memory_mb, gpus=gpus,
            leases=[_lease_view(lease, viewer) for lease in agent.leases.values() if lease.epoch >= 0],
            model_count=len(held), model_bytes=sum(m.bytes for m in held),
            disk_free_bytes=agent.inventory.disk_free_bytes, **shown_models,
            warm_runtimes=agent.warm_runtimes,
        )

    def listing(self, viewer: Principal) -> list[Worker]:
        return [self.describe(a, viewer) for a in sorted(self.fleet.agents.values(), key=lambda a: a.name)]


def _may_see(viewer: Principal, lease: LeaseState) -> bool:
    """Which task runs where, and how far it is, belongs to its owner (and the admins)."""
    return viewer.is_admin or lease.meta.owner == viewer.user


def _lease_view(lease: LeaseState, viewer: Principal) -> WorkerLease:
    if not _may_see(viewer, lease):
        return WorkerLease(gpus=list(lease.gpus))  # the capacity it takes, not whose task it is
    return WorkerLease(task_id=lease.task_id, epoch=lease.epoch, attempt=lease.attempt, gpus=list(lease.gpus),
                       progress=lease.progress)
