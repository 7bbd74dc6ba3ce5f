"""Leasing proper: claim, renew, complete, requeue and cancel, each a commit to SQLite first and
then the matching change to the in-memory fleet.

Rules (the protocol's contract, also in docs/protocol.md):
- A claim is a compare-and-set on ``state='queued'`` and bumps the task's epoch (fencing token).
- Every agent call about a task carries the epoch; a stale epoch or another agent's task is 409.
- Lease expiry lives in memory: heartbeats write nothing. After a restart every live lease gets
  ``restart_grace_s`` before it can expire, so a coordinator blip never requeues healthy work.
- Finished states are final.
The long poll that hands the leases out is services/polling.py; the reaper that expires them is
services/reaper.py.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from mloc_shared.errors import Conflict, LeaseLost, MlocError, NotFound
from mloc_shared.hyperparams import STALLED
from mloc_shared.protocol import (
    FINAL_STATES,
    Checkpoint,
    Completion,
    HeartbeatRequest,
    HeartbeatResponse,
    Lease,
    PreemptNotice,
    Timings,
)

from mloc_server.clock import Clock
from mloc_server.services.fleet import AgentState, Fleet, LeaseState
from mloc_server.services.history import keep_point, restore_points, take_points
from mloc_server.services.queue import QueuedTask, TaskMeta
from mloc_server.services.scheduler import Requirement
from mloc_server.settings import CoordinatorSettings
from mloc_server.store import Store, StoreTx
from mloc_server.store.records import Claim, Claimed

if TYPE_CHECKING:  # gangs.py builds on this module
    from mloc_server.services.gangs import Gangs

log = logging.getLogger(__name__)


def lease_timings(settings: CoordinatorSettings) -> Timings:
    """The timings an agent is told at registration (how long polls hold, how often to renew)."""
    return Timings(poll_hold_s=settings.poll_hold_s, heartbeat_s=settings.heartbeat_s, lease_ttl_s=settings.lease_ttl_s)


class Leasing:
    def __init__(
        self,
        db: Store,
        fleet: Fleet,
        settings: CoordinatorSettings,
        clock: Clock,
        resume_url: Callable[[str], str] | None = None,
    ) -> None:
        self._db = db
        self.fleet = fleet
        self.settings = settings
        self.clock = clock
        self.resume_url = resume_url
        # called with (task_id, state) once a task reaches a final state (secrets, log followers)
        self.on_task_final: list[Callable[[str, str], None]] = []
        self.gangs: Gangs | None = None  # tasks on several agents (services/gangs.py sets itself here)

    # -- claim --------------------------------------------------------------------------------

    async def claim(self, agent: AgentState, free: int, poll_id: str) -> list[Lease]:
        """Take up to ``free`` queued tasks that fit the agent, in one commit; their offers."""
        if self.gangs is not None:  # a gang forming in its network reserves it first
            offers, free = await self.gangs.claim(agent, free, poll_id)
            if offers or free <= 0:
                return offers
        picks = self.fleet.queue.pick(agent.view(free), free)
        if not picks:
            return []
        now = self.clock.time()
        # reserve the GPUs before the await
        provisional = {qt.id: self.reserve_lease(agent, qt.id, gpus, qt.req, qt.meta, poll_id) for qt, gpus in picks}
        claims = [Claim(qt.id, gpus, agent.holds_model(qt.req.model)) for qt, gpus in picks]
        try:
            claimed = await self._db.write(lambda tx: tx.claim_tasks(agent.id, claims, poll_id, now))
        except Exception:
            for qt, _ in picks:
                self.fleet.drop_lease(provisional[qt.id])
                self.fleet.queue.add(qt, now)
            raise
        got = {c.task_id: c for c in claimed}
        offers: list[Lease] = []
        for qt, _gpus in picks:
            lease = provisional[qt.id]
            c = got.get(qt.id)
            if c is None:  # changed under us (cancelled): nothing to run
                self.fleet.drop_lease(lease)
                continue
            offers.append(self.grant(lease, c))
        return offers

    def reserve_lease(self, agent: AgentState, task_id: str, gpus: tuple[int, ...], req: Requirement,
                      meta: TaskMeta, claim_id: str, *, delivered: bool = True) -> LeaseState:
        """A provisional lease (epoch -1) holding the agent's GPUs while its claim is committed."""
        lease = LeaseState(
            task_id=task_id, agent_id=agent.id, epoch=-1, attempt=0, gpus=gpus,
            expires_at=self.clock.monotonic() + self.settings.lease_ttl_s, started_at=self.clock.time(),
            req=req, meta=meta, claim_id=claim_id, delivered=delivered,
        )
        self.fleet.add_lease(agent, lease)
        return lease

    def grant(self, lease: LeaseState, c: Claimed) -> Lease:
        """After the claim's commit: the provisional lease becomes real, with its offer."""
        lease.epoch, lease.attempt = c.epoch, c.attempt
        lease.offer = self.offer_for(lease, c.task_type, json.loads(c.spec), c.last_checkpoint)
        self.fleet.counters["leases_granted"] += 1
        return lease.offer

    def offer_for(self, lease: LeaseState, task_type: str, spec: dict[str, Any], checkpoint: str | None) -> Lease:
        resume = None
        if checkpoint and self.resume_url is not None:
            ck = json.loads(checkpoint)
            resume = Checkpoint(name=ck["name"], step=ck.get("step"), size=ck.get("size"),
                                url=self.resume_url(ck["storage_key"]))
        return Lease(
            task_id=lease.task_id, epoch=lease.epoch, attempt=lease.attempt, task_type=task_type, spec=spec,
            gpus=list(lease.gpus), ttl_s=self.settings.lease_ttl_s, resume=resume, owner=lease.meta.owner or None,
        )

    # -- renew / finish -----------------------------------------------------------------------

    def own_lease(self, agent: AgentState, task_id: str, epoch: int) -> LeaseState:
        lease = self.fleet.leases.get(task_id)
        if lease is None or lease.agent_id != agent.id:
            lease = agent.leases.get(task_id)  # a gang member's own lease (services/gangs.py)
        if lease is None or lease.agent_id != agent.id or lease.epoch != epoch or lease.epoch < 0:
            raise LeaseLost(
                f"task {task_id} is not leased to agent {agent.name} at epoch {epoch}",
                hint="stop the task's process; the coordinator gave the task to another attempt or it ended",
            )
        return lease

    def heartbeat(self, agent: AgentState, task_id: str, req: HeartbeatRequest) -> HeartbeatResponse:
        """Renew a lease. In memory only: progress is flushed to SQLite by the reaper in batches."""
        self.fleet.counters["heartbeats"] += 1
        lease = self.own_lease(agent, task_id, req.epoch)
        lease.expires_at = self.clock.monotonic() + self.settings.lease_ttl_s
        agent.last_seen = now = self.clock.time()
        agent.seen_dirty = True
        for point in req.points or ():
            keep_point(lease, point, now)
        if (p := req.progress) is not None:
            lease.progress = p.model_dump(exclude_none=True)
            lease.progress_dirty = True
            keep_point(lease, p, now)
        return HeartbeatResponse(cancel=lease.cancel_requested, ttl_s=self.settings.lease_ttl_s, preempt=lease.preempt,
                                 rendezvous=self.gangs.heartbeat(lease, req) if self.gangs is not None else None)

    async def complete(self, agent: AgentState, task_id: str, c: Completion) -> str:
        """Record a task's end; a retried completion that already committed answers the same."""
        (outcome,) = await self.complete_many(agent, [(task_id, c)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def complete_many(
        self, agent: AgentState, items: list[tuple[str, Completion]]
    ) -> list[str | MlocError]:
        """Record several tasks' ends in one transaction, then free their GPUs at once (so the
        agent's held poll hands out the freed slots together). Each item answers on its own."""
        outcomes: list[str | MlocError | None] = [None] * len(items)
        batch: list[tuple[int, LeaseState, Completion, str, str | None]] = []
        for i, (task_id, c) in enumerate(items):
            if self.gangs is not None and (member := await self.gangs.completion(agent, task_id, c)) is not None:
                outcomes[i] = member  # a gang member's outcome (node rank 0's is the task's, below)
                continue
            lease = self.fleet.leases.get(task_id)
            if lease is None or lease.agent_id != agent.id or lease.epoch != c.epoch or lease.closing:
                outcomes[i] = await self._late_completion(agent, task_id, c)
                continue
            state, error = c.outcome, c.error
            lease.start = c.start or lease.start
            if lease.timed_out:
                state, error = "failed", f"timed out after {lease.meta.timeout_s:g}s (timeout_s)"
            elif lease.cancel_requested and c.outcome != "succeeded":
                state = "cancelled"
            elif c.outcome == "preempted":  # checkpointed on request: queued again at once, not a failure
                outcomes[i] = await self.release_preempted(lease, c.error or "preempted")
                continue
            # an input error (retryable False) fails at once: another attempt reads the same spec; a stall (the
            # agent's watchdog stopped a hung task) is retried like a lost box, whatever retry.on_failure says
            elif c.outcome == "failed" and c.retryable is not False and (
                    lease.meta.retry_on_failure or c.error_code == STALLED):
                await self.expire(lease, f"failed: {c.error or 'exit code ' + str(c.exit_code)}", lost=False)
                outcomes[i] = "queued"
                continue
            lease.closing = True
            batch.append((i, lease, c, state, error))
        if batch:
            now = self.clock.time()
            for _, lease, c, *_rest in batch:
                for point in c.points or ():
                    keep_point(lease, point, now)
            points = take_points(lease for _, lease, *_rest in batch)

            def write(tx: StoreTx) -> list[bool]:
                if points:  # the curve's last points land with the end
                    tx.add_progress_points(b for _, b in points)
                return [tx.finish_task(lease.task_id, c.epoch, state, now, result=c.result, error=error,
                                       exit_code=c.exit_code, progress=lease.progress, start=lease.start)
                        for _, lease, c, state, error in batch]

            try:
                written = await self._db.write(write)
            except Exception:
                restore_points(points)
                for _, lease, *_rest in batch:
                    lease.closing = False
                raise
            for (i, lease, _c, state, _error), ok in zip(batch, written, strict=True):
                self.fleet.drop_lease(lease, freed=True)
                if ok:
                    self.fleet.counters["tasks_finished"] += 1
                    self._notify_final(lease.task_id, state)
                    outcomes[i] = state
                else:
                    outcomes[i] = LeaseLost(f"task {lease.task_id} changed state before its completion arrived")
        return [o if o is not None else LeaseLost("no outcome") for o in outcomes]

    async def _late_completion(self, agent: AgentState, task_id: str, c: Completion) -> str | MlocError:
        """A completion for a lease we no longer hold: the same answer if it already committed."""
        row = await self._db.get_task(task_id)
        if row is not None and row.agent_id == agent.id and row.epoch == c.epoch and row.state in FINAL_STATES:
            return row.state
        return LeaseLost(f"task {task_id} is not leased to agent {agent.name} at epoch {c.epoch}",
                         hint="the task was requeued or finished elsewhere; its result is discarded")

    async def expire(self, lease: LeaseState, reason: str, *, lost: bool = True) -> str | None:
        """Give up a lease: queue the task again after a backoff, or fail it when out of attempts."""
        if self.gangs is not None and self.gangs.gang_of(lease) is not None:  # every member at once
            return await self.gangs.expire(lease, reason, lost=lost)
        if lease.closing:
            return None
        lease.closing = True
        m = lease.meta
        backoff = min(m.backoff_s * 2 ** max(0, lease.attempt - 1), m.backoff_max_s) * random.uniform(0.8, 1.2)
        now = self.clock.time()
        points = take_points([lease])

        def write(tx: StoreTx) -> str | None:
            if points:
                tx.add_progress_points(b for _, b in points)
            return tx.requeue_task(lease.task_id, lease.epoch, reason, now + backoff, now, start=lease.start)

        try:
            state = await self._db.write(write)
        except Exception:
            restore_points(points)
            lease.closing = False
            raise
        # a lost lease frees no slot for the agent's held poll: a silent (dead, cut off) agent would
        # claim work it never reads; its next poll says what it can take
        self.fleet.drop_lease(lease, freed=not lost)
        if lost:
            self.fleet.counters["leases_expired"] += 1
        log.warning("task %s attempt %d: %s -> %s", lease.task_id, lease.attempt, reason, state)
        if state == "queued":
            self.fleet.enqueue(QueuedTask.make(lease.task_id, lease.req, m, now, now + backoff), self.clock.time())
        elif state in FINAL_STATES:
            self._notify_final(lease.task_id, state)
        return state

    async def release_preempted(self, lease: LeaseState, reason: str) -> str | MlocError:
        """A task stopped for preemption (or its agent's drain with a deadline): queue it again now, with
        no backoff; the attempt's outcome is ``preempted`` and it does not count against max_attempts."""
        if lease.closing:
            return LeaseLost(f"task {lease.task_id} is already being requeued")
        lease.closing = True
        now = self.clock.time()
        try:
            state = await self._db.write(
                lambda tx: tx.requeue_task(lease.task_id, lease.epoch, reason, now, now, preempted=True,
                                           start=lease.start))
        except Exception:
            lease.closing = False
            raise
        self.fleet.drop_lease(lease, freed=True)
        if state is None:
            return LeaseLost(f"task {lease.task_id} changed state before its completion arrived")
        self.fleet.counters["preemptions"] += 1
        log.info("task %s attempt %d preempted (%s) -> %s", lease.task_id, lease.attempt, reason, state)
        if state == "queued":
            self.fleet.enqueue(QueuedTask.make(lease.task_id, lease.req, lease.meta, now), now)
        elif state in FINAL_STATES:
            self._notify_final(lease.task_id, state)
        return state

    def request_preempt(self, lease: LeaseState, grace_s: float, reason: str) -> None:
        """Ask a running task to checkpoint now and stop (an operator's drain with a deadline)."""
        if lease.preempt is None and not lease.closing and lease.epoch >= 0:
            lease.preempt = PreemptNotice(grace_s=grace_s, reason=reason)
            self.fleet.counters["preemptions_requested"] += 1
            self.fleet.wake_agent(lease.agent_id, "preempt")

    def _notify_final(self, task_id: str, state: str) -> None:
        for callback in self.on_task_final:
            callback(task_id, state)

    def announce_final(self, task_id: str, state: str) -> None:
        """A task another service ended (a blocked one cancelled): the same hooks as any end."""
        self._notify_final(task_id, state)

    # -- cancel -------------------------------------------------------------------------------

    async def cancel(self, task_id: str) -> str:
        now = self.clock.time()
        queued = self.fleet.queue.get(task_id)
        if queued is not None:
            self.fleet.queue.remove(task_id)
            try:
                ok = await self._db.write(lambda tx: tx.cancel_queued(task_id, now))
            except Exception:
                self.fleet.queue.add(queued, now)
                raise
            if ok:
                self._notify_final(task_id, "cancelled")
                return "cancelled"
        lease = self.fleet.leases.get(task_id)
        if lease is not None:
            await self._db.write(lambda tx: tx.request_cancel(task_id, now))
            lease.cancel_requested = True
            self.fleet.wake_agent(lease.agent_id, "cancel")
            return "cancelling"
        if await self._db.write(lambda tx: tx.cancel_blocked(task_id, "cancelled before it started", now)):
            self._notify_final(task_id, "cancelled")  # it waited on other tasks (services/dependencies.py)
            return "cancelled"
        await self.raise_not_active(task_id)

    async def raise_not_active(self, task_id: str) -> NoReturn:
        """A change that needs a queued or running task found neither: 404, or 409 saying its state."""
        row = await self._db.get_task(task_id)
        if row is None:
            raise NotFound(f"no task {task_id}")
        if row.state in FINAL_STATES:
            raise Conflict(f"task {task_id} already {row.state}; finished states are final")
        raise Conflict(f"task {task_id} is {row.state}; try again")
