"""Direct handoff: a task submitted while an agent's poll is held goes straight to that agent.

Without it a submit costs two commits in a row: the insert, then (after waking the agent's poll)
the claim. With it the submit's own transaction inserts the task *and* claims it for the waiting
agent, and the poll is woken with the lease ready: one commit and no queue round trip on the
path every idle fleet takes (submit-to-start latency).

It is only taken when it cannot change who runs what: the agent's poll is held and its peer still
connected, the task fits it now, and no queued task would have gone to that agent first. A
handoff that the agent's poll cannot deliver (the poll ended in the meantime) is delivered by the
agent's next poll; an agent that never polls again loses it to lease expiry, like any lease.
"""

from __future__ import annotations

from dataclasses import dataclass

from mloc_server.services.fleet import AgentState, Fleet, LeaseState, prefers
from mloc_server.services.leasing import Leasing
from mloc_server.services.queue import TaskMeta
from mloc_server.services.scheduler import Requirement, pick_gpus
from mloc_server.store import StoreTx
from mloc_server.store.records import Claim, Claimed


@dataclass
class Handoff:
    fleet: Fleet
    leasing: Leasing
    agent: AgentState
    lease: LeaseState
    poll_id: str

    def claim(self, tx: StoreTx, task_id: str, now: float) -> list[Claimed]:
        """Inside the submit's transaction: claim the new task for the reserved agent."""
        claim = Claim(task_id, self.lease.gpus, self.agent.holds_model(self.lease.req.model))
        return tx.claim_tasks(self.agent.id, [claim], self.poll_id, now)

    def settle(self, claimed: list[Claimed]) -> bool:
        """After the commit: hand the lease to the agent's poll, or undo the reservation (the
        insert found an existing task, or failed). Returns whether the task was handed over."""
        agent, lease = self.agent, self.lease
        agent.reserved = max(0, agent.reserved - 1)
        if not claimed:
            self.fleet.drop_lease(lease)
            agent.wake("task")  # it was taken off the waiting list: let it look again
            return False
        self.leasing.grant(lease, claimed[0])
        self.fleet.counters["handoffs"] += 1
        agent.wake("task")
        return True


def reserve(fleet: Fleet, leasing: Leasing, task_id: str, req: Requirement, meta: TaskMeta) -> Handoff | None:
    """Pick a held poll for a task about to be inserted, and reserve its GPUs; None when there is
    no such poll (the task is queued as usual)."""
    if req.nodes > 1:  # a gang is leased to all its agents together (services/gangs.py)
        return None
    if fleet.queue.blocked_meta(meta, req) is not None:
        return None  # its owner is at a GPU quota: it waits in the queue, which says why
    for agent in fleet.waiting.pop_fitting(lambda view: pick_gpus(req, view) is not None, prefers(req)):
        view = agent.view(agent.poll_free - agent.reserved)
        gpus = pick_gpus(req, view) if agent.peer_alive() and agent.poll_id else None
        if gpus is None or fleet.queue.first_fitting(view) is not None:
            agent.wake("task")  # let its own poll decide (claim from the queue, or end if gone)
            return None
        lease = leasing.reserve_lease(agent, task_id, gpus, req, meta, agent.poll_id, delivered=False)
        agent.reserved += 1
        fleet.waiting.add(agent)  # still waiting (for this very lease): a cancel or drain can still wake it
        return Handoff(fleet, leasing, agent, lease, agent.poll_id)
    return None
