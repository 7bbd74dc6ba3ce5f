"""Start-up: rebuild the coordinator's in-memory mirror (agents, queue, live leases) from SQLite."""

from __future__ import annotations

import json
import logging

from mloc_server.clock import Clock
from mloc_server.services.fleet import Fleet, LeaseState
from mloc_server.services.leasing import Leasing
from mloc_server.services.queue import QueuedTask, TaskMeta
from mloc_server.services.scheduler import Requirement
from mloc_server.settings import CoordinatorSettings
from mloc_server.store import Store

log = logging.getLogger(__name__)


async def load_state(db: Store, fleet: Fleet, leasing: Leasing, settings: CoordinatorSettings,
                     clock: Clock) -> None:
    """Rebuild the in-memory mirror from SQLite. Every live lease gets the restart grace (at least
    a TTL, from now on this clock): its agent re-attaches with its next heartbeat or poll."""
    from mloc_server.services.agents import agent_from_row

    for row in await db.all_agents():
        fleet.add_agent(agent_from_row(row))
    now, mono = clock.time(), clock.monotonic()
    grace = max(settings.lease_ttl_s, settings.restart_grace_s)
    for row in await db.active_tasks():
        spec = json.loads(row.spec)
        req = Requirement.from_json(row.requirement)
        meta = TaskMeta.from_spec(spec, row.owner, settings.priority_classes, settings.default_priority_class,
                                  team=row.team or "")
        if row.state == "queued":
            fleet.queue.add(QueuedTask.make(row.id, req, meta, row.queued_at, row.not_before), now)
            continue
        gpus = tuple(json.loads(row.lease_gpus or "[]"))
        lease = LeaseState(
            task_id=row.id, agent_id=row.agent_id, epoch=row.epoch, attempt=row.attempts,
            gpus=gpus, expires_at=mono + grace, started_at=row.started_at or now, req=req, meta=meta,
            claim_id=row.claim_id, cancel_requested=row.cancel_requested,
            progress=json.loads(row.progress) if row.progress else None,
        )
        lease.offer = leasing.offer_for(lease, row.task_type, spec, row.last_checkpoint)
        fleet.add_lease(fleet.agents.get(lease.agent_id), lease)
        if row.gang and leasing.gangs is not None:  # a task on several agents: every member's lease
            leasing.gangs.restore(lease, row.gang, row.task_type, spec, row.last_checkpoint)
    await _load_usage(db, fleet, clock)
    log.info("loaded %d agents, %d queued tasks, %d live leases (grace %.0fs)",
             len(fleet.agents), len(fleet.queue), len(fleet.leases), grace)


async def _load_usage(db: Store, fleet: Fleet, clock: Clock) -> None:
    """Fair share's decayed usage, from the attempts of the last ten half-lives (older ones weigh
    under 0.1 %). Live leases were added above and count from now on; their past is added here."""
    if fleet.policy is None:
        return
    shares = fleet.policy.shares
    now = clock.time()
    for a in await db.attempt_usage(now - 10 * shares.settings.half_life_s):
        shares.add_past(a.owner, a.team or "", a.gpu_count, a.started_at, a.ended_at or now)
