"""Leases: the long poll that hands out work, heartbeats that renew, completions, and the reaper.

Rules (the protocol's contract, also in docs/protocol.md):
- A claim is a compare-and-set on ``state='queued'`` and bumps the task's epoch (fencing token).
- Every agent call about a task carries the epoch; a stale epoch or another agent's task is 409.
- An agent keeps a lease in its poll's ``running`` list until its completion is acknowledged. A
  lease missing from that list was lost by the agent (it restarted): it is requeued at once,
  unless it was claimed for this very poll id — then the reply was lost and it is offered again.
- Lease expiry lives in memory: heartbeats write nothing. After a restart every live lease gets
  ``restart_grace_s`` before it can expire, so a coordinator blip never requeues healthy work.
- Finished states are final.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from mloc_shared.errors import Conflict, LeaseLost, MlocError, NotFound
from mloc_shared.protocol import (
    FINAL_STATES,
    Checkpoint,
    Completion,
    HeartbeatRequest,
    HeartbeatResponse,
    Lease,
    PollRequest,
    PollResponse,
    Timings,
)

from mloc_server.services.fleet import AgentState, LeaseState
from mloc_server.services.queue import QueuedTask, TaskMeta, TaskQueue
from mloc_server.services.scheduler import Requirement, pick_gpus
from mloc_server.services.waiting import WaitingPolls
from mloc_server.settings import CoordinatorSettings
from mloc_server.store import repo
from mloc_server.store.database import Database

log = logging.getLogger(__name__)


class Leasing:
    def __init__(
        self,
        db: Database,
        settings: CoordinatorSettings,
        resume_url: Callable[[str], str] | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.resume_url = resume_url
        self.queue = TaskQueue()
        self.agents: dict[str, AgentState] = {}
        self.by_credential: dict[str, AgentState] = {}
        self.by_name: dict[str, AgentState] = {}
        self.leases: dict[str, LeaseState] = {}
        self.waiting = WaitingPolls()
        self.on_task_final: list[Callable[[str, str], None]] = []
        self.shutting_down = False
        self.counters: dict[str, int] = {
            "leases_granted": 0, "handoffs": 0, "leases_expired": 0, "tasks_finished": 0, "polls": 0, "heartbeats": 0,
        }

    @property
    def timings(self) -> Timings:
        s = self.settings
        return Timings(poll_hold_s=s.poll_hold_s, heartbeat_s=s.heartbeat_s, lease_ttl_s=s.lease_ttl_s)

    def add_agent(self, agent: AgentState) -> None:
        old = self.agents.get(agent.id)
        if old is not None:
            self.by_credential.pop(old.credential_hash, None)
            self.by_name.pop(old.name, None)
            agent.leases = old.leases
            old.wake("superseded")
        self.agents[agent.id] = agent
        self.by_credential[agent.credential_hash] = agent
        self.by_name[agent.name] = agent

    def agent_named(self, name: str) -> AgentState | None:
        return self.by_name.get(name)

    # -- queueing -----------------------------------------------------------------------------

    def enqueue(self, task_id: str, req: Requirement, meta: TaskMeta, queued_at: float, not_before: float = 0.0):
        if self.queue.add(QueuedTask.make(task_id, req, meta, queued_at, not_before), time.time()):
            self.wake_for(req)

    def wake_for(self, req: Requirement) -> None:
        """Wake one waiting agent that could take a task of this shape now (no thundering herd)."""
        for agent in self.waiting.pop_fitting(lambda view: pick_gpus(req, view) is not None):
            agent.wake("task")
            if agent.peer_alive():  # a hung-up poll claims nothing: wake another one
                return

    # -- the long poll ------------------------------------------------------------------------

    async def poll(self, agent: AgentState, req: PollRequest,
                   peer_alive: Callable[[], bool] | None = None) -> PollResponse:
        """``peer_alive`` says whether the agent still waits for this answer (its connection is open):
        a killed agent's held poll must not claim tasks that would then wait out a lease TTL."""
        self.counters["polls"] += 1
        agent.peer_alive = peer_alive or (lambda: True)
        agent.last_seen = time.time()
        agent.seen_dirty = True
        agent.self_draining = req.draining
        if req.gpu_stats is not None:
            agent.gpu_stats = req.gpu_stats
        agent.wake("superseded")  # an older poll of this agent still held: answer it empty
        lost: list[str] = []
        if req.completions:
            done_now = await self.complete_many(agent, [(c.task_id, c) for c in req.completions])
            lost = [c.task_id for c, o in zip(req.completions, done_now, strict=True) if isinstance(o, LeaseLost)]
        reported = {r.task_id: r.epoch for r in req.running}
        done = {c.task_id for c in req.completions}
        reoffer: list[Lease] = []
        for lease in list(agent.leases.values()):
            if lease.task_id in reported or lease.task_id in done or lease.closing or lease.epoch < 0:
                continue  # (epoch < 0: a claim or handoff being committed)
            if not lease.delivered:
                continue  # a handoff no reply has carried yet: the loop below delivers it
            if lease.claim_id == req.poll_id and lease.offer is not None:
                reoffer.append(lease.offer.model_copy(update={"ttl_s": self.settings.lease_ttl_s}))
            else:
                await self.expire(lease, f"agent {agent.name} no longer runs it (it restarted or lost the offer)")
        for task_id, epoch in reported.items():
            lease = agent.leases.get(task_id)
            if lease is None or lease.epoch != epoch:
                lost.append(task_id)
        agent.freed_since_poll = 0
        # each hold ends between 50 % and 100 % of poll_hold_s: a fleet that connected at once (a coordinator
        # restart, a bulk dispatch) would otherwise renew every poll in the same instant, round after round
        deadline = time.monotonic() + self.settings.poll_hold_s * random.uniform(0.5, 1.0)
        loop = asyncio.get_running_loop()
        while True:
            if not agent.peer_alive():
                return PollResponse(drain=not agent.accepting)
            resp = PollResponse(lost=lost, drain=not agent.accepting, leases=reoffer)
            for lease in agent.leases.values():
                if lease.cancel_requested and not lease.cancel_sent:
                    lease.cancel_sent = True
                    resp.cancel.append(lease.task_id)
                if not lease.delivered and lease.offer is not None:  # handed off (services/handoff.py)
                    lease.delivered, lease.claim_id = True, req.poll_id
                    resp.leases.append(lease.offer)
            free = min(req.free_slots + agent.freed_since_poll - agent.reserved, agent.max_tasks - len(agent.leases))
            if not resp.leases and free > 0 and agent.accepting:
                resp.leases = await self._claim(agent, free, req.poll_id)
            if resp.leases or resp.cancel or resp.lost:
                return resp
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.shutting_down:
                return resp
            waiter = loop.create_future()
            agent.waiter = waiter
            agent.poll_id, agent.poll_free = req.poll_id, free
            if free > 0 and agent.accepting:  # a poll that can take nothing must not absorb a submit's wake
                self.waiting.add(agent)
            # a timer rather than asyncio.wait_for: a wake resumes this poll in one loop step, not three
            timer = loop.call_later(remaining, _resolve_once, waiter, "timeout")
            try:
                reason = await waiter
            finally:
                timer.cancel()
                if agent.waiter is waiter:
                    agent.waiter = None
                    self.waiting.discard(agent)
            if reason == "timeout":
                return resp
            if reason == "superseded":
                return PollResponse(drain=not agent.accepting)

    async def _claim(self, agent: AgentState, free: int, poll_id: str) -> list[Lease]:
        picks = self.queue.pick(agent.view(free), free)
        if not picks:
            return []
        now = time.time()
        # reserve the GPUs before the await
        provisional = {qt.id: self.reserve_lease(agent, qt.id, gpus, qt.req, qt.meta, poll_id) for qt, gpus in picks}
        claims = [repo.Claim(qt.id, gpus) for qt, gpus in picks]
        try:
            claimed = await self.db.write(lambda con: repo.claim_tasks(con, agent.id, claims, poll_id, now))
        except Exception:
            for qt, _ in picks:
                self.forget(provisional[qt.id])
                self.queue.add(qt, now)
            raise
        got = {c.task_id: c for c in claimed}
        offers: list[Lease] = []
        for qt, _gpus in picks:
            lease = provisional[qt.id]
            c = got.get(qt.id)
            if c is None:  # changed under us (cancelled): nothing to run
                self.forget(lease)
                continue
            offers.append(self.grant(lease, c))
        return offers

    def reserve_lease(self, agent: AgentState, task_id: str, gpus: tuple[int, ...], req: Requirement,
                      meta: TaskMeta, claim_id: str, *, delivered: bool = True) -> LeaseState:
        """A provisional lease (epoch -1) holding the agent's GPUs while its claim is committed."""
        lease = LeaseState(
            task_id=task_id, agent_id=agent.id, epoch=-1, attempt=0, gpus=gpus,
            expires_at=time.monotonic() + self.settings.lease_ttl_s, started_at=time.time(), req=req, meta=meta,
            claim_id=claim_id, delivered=delivered,
        )
        agent.leases[task_id] = lease
        self.leases[task_id] = lease
        return lease

    def grant(self, lease: LeaseState, c: repo.Claimed) -> Lease:
        """After the claim's commit: the provisional lease becomes real, with its offer."""
        lease.epoch, lease.attempt = c.epoch, c.attempt
        lease.offer = self.offer_for(lease, c.task_type, json.loads(c.spec), c.last_checkpoint)
        self.counters["leases_granted"] += 1
        return lease.offer

    def offer_for(self, lease: LeaseState, task_type: str, spec: dict[str, Any], checkpoint: str | None) -> Lease:
        resume = None
        if checkpoint and self.resume_url is not None:
            ck = json.loads(checkpoint)
            resume = Checkpoint(name=ck["name"], step=ck.get("step"), size=ck.get("size"),
                                url=self.resume_url(ck["storage_key"]))
        return Lease(
            task_id=lease.task_id, epoch=lease.epoch, attempt=lease.attempt, task_type=task_type, spec=spec,
            gpus=list(lease.gpus), ttl_s=self.settings.lease_ttl_s, resume=resume,
        )

    # -- renew / finish -----------------------------------------------------------------------

    def own_lease(self, agent: AgentState, task_id: str, epoch: int) -> LeaseState:
        lease = self.leases.get(task_id)
        if lease is None or lease.agent_id != agent.id or lease.epoch != epoch or lease.epoch < 0:
            raise LeaseLost(
                f"task {task_id} is not leased to agent {agent.name} at epoch {epoch}",
                hint="stop the task's process; the coordinator gave the task to another attempt or it ended",
            )
        return lease

    def heartbeat(self, agent: AgentState, task_id: str, req: HeartbeatRequest) -> HeartbeatResponse:
        """Renew a lease. In memory only: progress is flushed to SQLite by the reaper in batches."""
        self.counters["heartbeats"] += 1
        lease = self.own_lease(agent, task_id, req.epoch)
        lease.expires_at = time.monotonic() + self.settings.lease_ttl_s
        agent.last_seen = time.time()
        agent.seen_dirty = True
        if req.progress is not None:
            lease.progress = req.progress.model_dump(exclude_none=True)
            lease.progress_dirty = True
        return HeartbeatResponse(cancel=lease.cancel_requested, ttl_s=self.settings.lease_ttl_s)

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
            lease = self.leases.get(task_id)
            if lease is None or lease.agent_id != agent.id or lease.epoch != c.epoch or lease.closing:
                outcomes[i] = await self._late_completion(agent, task_id, c)
                continue
            state, error = c.outcome, c.error
            if lease.timed_out:
                state, error = "failed", f"timed out after {lease.meta.timeout_s:g}s (timeout_s)"
            elif lease.cancel_requested and c.outcome != "succeeded":
                state = "cancelled"
            elif c.outcome == "failed" and lease.meta.retry_on_failure:
                await self.expire(lease, f"failed: {c.error or 'exit code ' + str(c.exit_code)}", lost=False)
                outcomes[i] = "queued"
                continue
            lease.closing = True
            batch.append((i, lease, c, state, error))
        if batch:
            now = time.time()

            def write(con) -> list[bool]:
                return [repo.finish_task(con, lease.task_id, c.epoch, state, now, result=c.result, error=error,
                                         exit_code=c.exit_code, progress=lease.progress)
                        for _, lease, c, state, error in batch]

            try:
                written = await self.db.write(write)
            except Exception:
                for _, lease, *_rest in batch:
                    lease.closing = False
                raise
            for (i, lease, _c, state, _error), ok in zip(batch, written, strict=True):
                self.forget(lease, freed=True)
                if ok:
                    self.counters["tasks_finished"] += 1
                    self._notify_final(lease.task_id, state)
                    outcomes[i] = state
                else:
                    outcomes[i] = LeaseLost(f"task {lease.task_id} changed state before its completion arrived")
        return [o if o is not None else LeaseLost("no outcome") for o in outcomes]

    async def _late_completion(self, agent: AgentState, task_id: str, c: Completion) -> str | MlocError:
        """A completion for a lease we no longer hold: the same answer if it already committed."""
        row = await repo.get_task(self.db, task_id)
        if row is not None and row["agent_id"] == agent.id and row["epoch"] == c.epoch \
                and row["state"] in FINAL_STATES:
            return row["state"]
        return LeaseLost(f"task {task_id} is not leased to agent {agent.name} at epoch {c.epoch}",
                         hint="the task was requeued or finished elsewhere; its result is discarded")

    async def expire(self, lease: LeaseState, reason: str, *, lost: bool = True) -> str | None:
        """Give up a lease: queue the task again after a backoff, or fail it when out of attempts."""
        if lease.closing:
            return None
        lease.closing = True
        m = lease.meta
        backoff = min(m.backoff_s * 2 ** max(0, lease.attempt - 1), m.backoff_max_s) * random.uniform(0.8, 1.2)
        now = time.time()
        try:
            state = await self.db.write(
                lambda con: repo.requeue_task(con, lease.task_id, lease.epoch, reason, now + backoff, now))
        except Exception:
            lease.closing = False
            raise
        # a lost lease frees no slot for the agent's held poll: a silent (dead, cut off) agent would
        # claim work it never reads; its next poll says what it can take
        self.forget(lease, freed=not lost)
        if lost:
            self.counters["leases_expired"] += 1
        log.warning("task %s attempt %d: %s -> %s", lease.task_id, lease.attempt, reason, state)
        if state == "queued":
            self.enqueue(lease.task_id, lease.req, m, now, now + backoff)
        elif state in FINAL_STATES:
            self._notify_final(lease.task_id, state)
        return state

    def forget(self, lease: LeaseState, freed: bool = False) -> None:
        self.leases.pop(lease.task_id, None)
        agent = self.agents.get(lease.agent_id)
        if agent is not None and agent.leases.pop(lease.task_id, None) is not None and freed:
            agent.freed_since_poll += 1
            agent.wake("slot")

    def _notify_final(self, task_id: str, state: str) -> None:
        for callback in self.on_task_final:
            callback(task_id, state)

    # -- cancel -------------------------------------------------------------------------------

    async def cancel(self, task_id: str) -> str:
        now = time.time()
        queued = self.queue.get(task_id)
        if queued is not None:
            self.queue.remove(task_id)
            try:
                ok = await self.db.write(lambda con: repo.cancel_queued(con, task_id, now))
            except Exception:
                self.queue.add(queued, now)
                raise
            if ok:
                self._notify_final(task_id, "cancelled")
                return "cancelled"
        lease = self.leases.get(task_id)
        if lease is not None:
            await self.db.write(lambda con: repo.request_cancel(con, task_id, now))
            lease.cancel_requested = True
            agent = self.agents.get(lease.agent_id)
            if agent is not None:
                agent.wake("cancel")
            return "cancelling"
        row = await repo.get_task(self.db, task_id)
        if row is None:
            raise NotFound(f"no task {task_id}")
        if row["state"] in FINAL_STATES:
            raise Conflict(f"task {task_id} already {row['state']}; finished states are final")
        raise Conflict(f"task {task_id} is {row['state']}; try again")

    def release_polls(self) -> None:
        """Answer every held poll now (shutting down): agents poll again and find the new process."""
        self.shutting_down = True
        for agent in self.agents.values():
            agent.wake("superseded")


def _resolve_once(fut: asyncio.Future[str], value: str) -> None:
    if not fut.done():
        fut.set_result(value)
