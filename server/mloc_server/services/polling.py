"""The long poll: an agent's one call that reports what it runs, and gets work, cancels and lost leases.

A poll is held until there is something to answer or its hold ends. What it reconciles (rules in
docs/protocol.md):
- A lease missing from the poll's ``running`` list was lost by the agent (it restarted): it is
  requeued at once, unless it was claimed for this very poll id: then the reply was lost and the
  same lease is offered again.
- A task the agent reports but no longer holds at that epoch is answered ``lost``.
- A handoff (services/handoff.py) reserved for an earlier poll that ended first is delivered here.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from mloc_shared.errors import LeaseLost
from mloc_shared.protocol import Lease, PollRequest, PollResponse

from mloc_server.clock import Clock
from mloc_server.services.fleet import AgentState, Fleet
from mloc_server.services.leasing import Leasing
from mloc_server.settings import CoordinatorSettings


@dataclass(eq=False)
class Polling:
    fleet: Fleet
    leasing: Leasing
    settings: CoordinatorSettings
    clock: Clock
    shutting_down: bool = field(default=False, init=False)

    async def poll(self, agent: AgentState, req: PollRequest,
                   peer_alive: Callable[[], bool] | None = None) -> PollResponse:
        """``peer_alive`` says whether the agent still waits for this answer (its connection is open):
        a killed agent's held poll must not claim tasks that would then wait out a lease TTL."""
        self.fleet.counters["polls"] += 1
        agent.peer_alive = peer_alive or (lambda: True)
        agent.last_seen = self.clock.time()
        agent.seen_dirty = True
        agent.self_draining = req.draining
        if req.gpu_stats is not None:
            agent.gpu_stats = req.gpu_stats
        if req.models is not None:  # only when they changed: written by the reaper's next flush
            agent.set_models(req.models, req.disk_free_bytes)
        agent.warm_runtimes = req.warm_runtimes
        agent.wake("superseded")  # an older poll of this agent still held: answer it empty
        lost, reoffer = await self._reconcile(agent, req)
        agent.freed_since_poll = 0
        # each hold ends between 50 % and 100 % of poll_hold_s: a fleet that connected at once (a coordinator
        # restart, a bulk dispatch) would otherwise renew every poll in the same instant, round after round
        deadline = self.clock.monotonic() + self.settings.poll_hold_s * random.uniform(0.5, 1.0)
        loop = asyncio.get_running_loop()
        while True:
            if not agent.peer_alive():
                return PollResponse(drain=not agent.accepting)
            resp = PollResponse(lost=lost, drain=not agent.accepting, leases=reoffer)
            for lease in agent.leases.values():
                if lease.cancel_requested and not lease.cancel_sent:
                    lease.cancel_sent = True
                    resp.cancel.append(lease.task_id)
                if lease.preempt is not None and not lease.preempt_sent:  # sooner than its next heartbeat
                    lease.preempt_sent = True
                    resp.preempt[lease.task_id] = lease.preempt
                if not lease.delivered and lease.offer is not None:  # handed off (services/handoff.py)
                    lease.delivered, lease.claim_id = True, req.poll_id
                    resp.leases.append(lease.offer)
            free = min(req.free_slots + agent.freed_since_poll - agent.reserved, agent.max_tasks - len(agent.leases))
            if not resp.leases and free > 0 and agent.accepting:
                resp.leases = await self.leasing.claim(agent, free, req.poll_id)
            if resp.leases or resp.cancel or resp.lost or resp.preempt:
                return resp
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0 or self.shutting_down:
                return resp
            waiter = loop.create_future()
            agent.waiter = waiter
            agent.poll_id, agent.poll_free = req.poll_id, free
            if free > 0 and agent.accepting:  # a poll that can take nothing must not absorb a submit's wake
                self.fleet.waiting.add(agent)
            # a timer rather than asyncio.wait_for: a wake resumes this poll in one loop step, not three;
            # on the injected clock, so that a test ends a hold by moving the clock
            timer = self.clock.call_later(remaining, _resolve_once, waiter, "timeout")
            try:
                reason = await waiter
            finally:
                timer.cancel()
                if agent.waiter is waiter:
                    agent.waiter = None
                    self.fleet.waiting.discard(agent)
            if reason == "timeout":
                return resp
            if reason == "superseded":
                return PollResponse(drain=not agent.accepting)

    async def _reconcile(self, agent: AgentState, req: PollRequest) -> tuple[list[str], list[Lease]]:
        """Record the poll's completions and compare its ``running`` list with the agent's leases:
        returns the tasks to answer ``lost`` and the leases to offer again."""
        lost: list[str] = []
        if req.completions:
            done_now = await self.leasing.complete_many(agent, [(c.task_id, c) for c in req.completions])
            lost = [c.task_id for c, o in zip(req.completions, done_now, strict=True) if isinstance(o, LeaseLost)]
        reported = {r.task_id: r.epoch for r in req.running}
        done = {c.task_id for c in req.completions}
        reoffer: list[Lease] = []
        for lease in list(agent.leases.values()):
            if lease.task_id in reported or lease.task_id in done or lease.closing or lease.epoch < 0:
                continue  # (epoch < 0: a claim or handoff being committed)
            if not lease.delivered:
                continue  # a handoff no reply has carried yet: the poll's loop delivers it
            if lease.claim_id == req.poll_id and lease.offer is not None:
                reoffer.append(lease.offer.model_copy(update={"ttl_s": self.settings.lease_ttl_s}))
            else:
                await self.leasing.expire(
                    lease, f"agent {agent.name} no longer runs it (it restarted or lost the offer)")
        for task_id, epoch in reported.items():
            lease = agent.leases.get(task_id)
            if lease is None or lease.epoch != epoch:
                lost.append(task_id)
        return lost, reoffer

    def release(self) -> None:
        """Answer every held poll now (shutting down): agents poll again and find the new process."""
        self.shutting_down = True
        for agent in self.fleet.agents.values():
            agent.wake("superseded")


def _resolve_once(fut: asyncio.Future[str], value: str) -> None:
    if not fut.done():
        fut.set_result(value)
