"""Submitting, reading and cancelling tasks (the user side of the coordinator)."""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mloc_shared import comparison
from mloc_shared.chaining import referenced_tasks
from mloc_shared.errors import Forbidden, NotFound, ValidationFailed
from mloc_shared.protocol import FINAL_STATES
from mloc_shared.taskspec import BUILTIN_TASK_TYPES, TaskSpec

from mloc_server.clock import Clock
from mloc_server.services import handoff
from mloc_server.services.auth import Principal
from mloc_server.services.dependencies import decide, resolve
from mloc_server.services.fairshare import ReasonContext, queue_reason
from mloc_server.services.fleet import Fleet
from mloc_server.services.leasing import Leasing
from mloc_server.services.preemption import Preempter
from mloc_server.services.queue import QueuedTask, TaskMeta
from mloc_server.services.quotas import owner_keys
from mloc_server.services.scheduler import Requirement, unplaceable_reason
from mloc_server.services.secrets import TaskSecrets, split_secrets
from mloc_server.store import Store, StoreTx
from mloc_server.store.records import Claimed, NewTask, StoredTask


def new_task_id(now: float) -> str:
    """Time-ordered and random: sorts by submission, unguessable."""
    return f"{int(now * 1000):011x}{uuid.uuid4().hex[:13]}"


@dataclass(eq=False)
class Tasks:
    db: Store
    fleet: Fleet
    leasing: Leasing
    secrets: TaskSecrets
    clock: Clock
    # submits between their max_queued check and their enqueue, per ("user"|"team", name)
    _inflight: Counter[tuple[str, str]] = field(default_factory=Counter, init=False)

    @contextmanager
    def _queued_quota(self, adding: Counter[tuple[str, str]]) -> Iterator[None]:
        """Refuse a submit over max_queued (429); hold its count while it is being written."""
        policy = self.fleet.policy
        if policy is not None:
            for (owner, team), n in adding.items():
                policy.quotas.check_queued(owner, team, n,
                                           lambda key: self.fleet.queue.queued(key) + self._inflight[key])
        keys = Counter({k: n for (owner, team), n in adding.items() for k in owner_keys(owner, team)})
        self._inflight.update(keys)
        try:
            yield
        finally:
            self._inflight.subtract(keys)

    @property
    def preempter(self) -> Preempter:
        return Preempter(self.fleet, self.leasing.settings, self.clock)

    def _meta(self, wire: dict[str, Any], owner: str, team: str = "") -> TaskMeta:
        """The task's scheduling facts; an unknown priority class is refused (422) naming the classes."""
        s = self.leasing.settings
        name = wire.get("priority_class")
        if name is not None and name not in s.priority_classes:
            raise ValidationFailed(
                f"priority_class {name!r} is not a class of this coordinator; use one of: "
                f"{', '.join(sorted(s.priority_classes))}", field="priority_class")
        return TaskMeta.from_spec(wire, owner, s.priority_classes, s.default_priority_class, team=team)

    async def submit(
        self, spec: TaskSpec, principal: Principal, idempotency_key: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Store a validated task and queue it; returns (the task's record, created)."""
        owner = principal.user
        if spec.user and spec.user != principal.user:
            if not principal.is_admin:
                raise Forbidden(f"you cannot submit tasks as user {spec.user!r}", field="user")
            owner = spec.user
        team = principal.team if owner == principal.user else ""
        wire, secret_values = split_secrets(spec.wire())
        sealed = self.secrets.seal(secret_values) if secret_values else None
        body = json.dumps(wire, sort_keys=True)
        req = Requirement.from_spec(spec)
        now = self.clock.time()
        new = NewTask(
            id=new_task_id(now), name=spec.display_name(), task_type=spec.task_type, owner=owner, spec=body,
            priority=spec.priority, created_at=now, max_attempts=spec.retry.max_attempts,
            gpus_required=req.gpus, requirement=req.to_json(),
            idempotency_key=f"{owner}:{idempotency_key}" if idempotency_key else None,
            body_hash=hashlib.sha256(body.encode()).hexdigest(), team=team,
        )
        meta = self._meta(wire, owner, team)
        waits = bool(spec.depends_on or referenced_tasks(wire))  # it may be blocked: decided in the transaction
        # an agent's poll is waiting: claim it now
        hand = None if waits else handoff.reserve(self.fleet, self.leasing, new.id, req, meta)

        def write(tx: StoreTx) -> tuple[StoredTask, bool, list[Claimed]]:
            # a retried submit (its key already used) answers with the first task, whatever its parents did since
            if waits and not (new.idempotency_key and tx.keyed_task(new.idempotency_key)):
                self._wait_on(tx, new, spec, wire)
            task_id, created = tx.insert_task(new)
            if created and sealed:
                self.secrets.insert(tx, task_id, sealed, now)
            claimed = hand.claim(tx, task_id, now) if created and hand is not None else []
            row = tx.get_task(task_id)
            assert row is not None  # inserted or found in this very transaction
            return row, created, claimed

        try:
            with self._queued_quota(Counter({(owner, team): 1})):
                row, created, claimed = await self.db.write(write)
        except BaseException:
            if hand is not None:
                hand.settle([])
            raise
        if created and sealed:
            self.secrets.stored(row.id)
        handed = hand.settle(claimed) if hand is not None else False
        if handed:  # let the woken poll send the lease before this reply is built: the agent is waiting on it
            await asyncio.sleep(0)
        if created and row.state == "queued":
            if not handed:
                self.fleet.enqueue(QueuedTask.make(row.id, req, meta, now), self.clock.time())
                self.preempter.check()  # it may fit nowhere: make room from a lower, preemptible class
            record = self.record(row)  # a new task has no attempts yet: no second read
        else:
            record = await self.get(row.id, principal)
        warnings = []
        if spec.task_type not in BUILTIN_TASK_TYPES:
            close = difflib.get_close_matches(spec.task_type, BUILTIN_TASK_TYPES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            warnings.append(f"taskType {spec.task_type!r} is not a built-in type{hint}")
        if record["state"] == "queued":
            unplaceable = unplaceable_reason(req, (a.view() for a in self.fleet.agents.values()))
            if unplaceable:
                warnings.append(unplaceable)
        if warnings:
            record["warnings"] = warnings
        return record, created

    @staticmethod
    def _wait_on(tx: StoreTx, new: NewTask, spec: TaskSpec, wire: dict[str, Any]) -> None:
        """Resolve the new task's dependencies in its submit's transaction: blocked until they hold."""
        found = resolve(tx, new.owner, spec, wire)
        new.spec = json.dumps(wire, sort_keys=True)  # depends_on as ids
        new.depends = [dep for dep, _ in found]
        state, reason = decide([st for _, st in found])
        new.state, new.blocked_reason = ("blocked", reason) if state == "blocked" else ("queued", None)

    async def submit_many(self, specs: list[TaskSpec], principal: Principal) -> list[dict[str, Any]]:
        """Bulk submit: one transaction for all tasks (the fast path for many small tasks)."""
        now = self.clock.time()
        rows, shapes, sealed, waiting = [], [], {}, {}
        for spec in specs:
            if spec.user and spec.user != principal.user and not principal.is_admin:
                raise Forbidden(f"you cannot submit tasks as user {spec.user!r}", field="user")
            wire, secret_values = split_secrets(spec.wire())
            req = Requirement.from_spec(spec)
            if secret_values:
                sealed[len(rows)] = self.secrets.seal(secret_values)
            owner = spec.user or principal.user
            team = principal.team if owner == principal.user else ""
            rows.append(NewTask(
                id=new_task_id(now), name=spec.display_name(), task_type=spec.task_type,
                owner=owner, spec=json.dumps(wire, sort_keys=True), priority=spec.priority,
                created_at=now, max_attempts=spec.retry.max_attempts, gpus_required=req.gpus,
                requirement=req.to_json(), idempotency_key=None, body_hash=None, team=team))
            shapes.append((req, self._meta(wire, owner, team)))
            if spec.depends_on or referenced_tasks(wire):
                waiting[len(rows) - 1] = (spec, wire)

        def write(tx: StoreTx) -> list[str]:
            for i, (spec, wire) in waiting.items():
                try:
                    self._wait_on(tx, rows[i], spec, wire)
                except ValidationFailed as exc:
                    exc.field = f"tasks[{i}].{exc.field}" if exc.field else f"tasks[{i}]"
                    exc.message = f"tasks[{i}]: {exc.message}"
                    raise
            ids = [tx.insert_task(r)[0] for r in rows]
            for i, blob in sealed.items():
                self.secrets.insert(tx, ids[i], blob, now)
            return ids

        with self._queued_quota(Counter((m.owner, m.team) for _, m in shapes)):
            ids = await self.db.write(write)
        for i in sealed:
            self.secrets.stored(ids[i])
        for task_id, row, (req, meta) in zip(ids, rows, shapes, strict=True):
            if row.state == "queued":
                self.fleet.enqueue(QueuedTask.make(task_id, req, meta, now), self.clock.time())
        self.preempter.check()
        return [{"id": task_id, "state": row.state} for task_id, row in zip(ids, rows, strict=True)]

    def _visible(self, row: StoredTask | None, principal: Principal, task_id: str) -> StoredTask:
        if row is None or (not principal.is_admin and row.owner != principal.user):
            raise NotFound(f"no task {task_id}")
        return row

    async def get(self, task_id: str, principal: Principal) -> dict[str, Any]:
        row = self._visible(await self.db.get_task(task_id), principal, task_id)
        record = self.record(row)
        record["attempt_history"] = [
            {"attempt": a.attempt, "epoch": a.epoch, "agent": self._agent_name(a.agent_id),
             "gpus": json.loads(a.gpus), "started_at": a.started_at, "ended_at": a.ended_at,
             "outcome": a.outcome or ("running" if a.ended_at is None else None), "error": a.error,
             "model_cached": a.model_cached,
             "start": a.start,
             **({"members": [self._agent_name(m) for m in json.loads(a.members)]} if a.members else {})}
            for a in await self.db.task_attempts(task_id)
        ]
        # what retry.max_attempts counts: preempted attempts are not among them
        record["depends_on"] = (await self.db.dependencies_of([task_id])).get(task_id, [])
        record["failed_attempts"] = sum(1 for a in record["attempt_history"] if a["outcome"] in ("failed", "lost"))
        return record

    async def progress(self, task_id: str, principal: Principal, since: float | None) -> dict[str, Any]:
        """A task's progress history after ``since``: the points written so far, then those still in
        memory (gathered since the reaper's last write), so a live curve lags no flush behind."""
        self._visible(await self.db.get_task(task_id), principal, task_id)
        points = [p.model_dump() for p in await self.db.progress_points(task_id, since)]
        lease = self.fleet.leases.get(task_id)
        if lease is not None:
            points += [{"attempt": lease.attempt, "step": step, "t": t, "loss": loss, "learning_rate": lr,
                        "metrics": m} for step, t, loss, lr, m in lease.points if since is None or t > since]
        return {"task_id": task_id, "points": points}

    async def compare(self, ids: list[str], principal: Principal) -> dict[str, Any]:
        """The comparison table of tasks the caller may see (mloc_shared/comparison.py); an unknown or
        hidden id is a 404 naming it."""
        rows = []
        for task_id in ids:
            rows.append(self.record(self._visible(await self.db.get_task(task_id), principal, task_id)))
        return comparison.compare(rows)

    def _agent_name(self, agent_id: str | None) -> str | None:
        return self.fleet.agent_name(agent_id) if agent_id else agent_id

    def record(self, row: StoredTask, reasons: dict[str, str | None] | None = None,
               ctx: ReasonContext | None = None) -> dict[str, Any]:
        """The public view of a task row, merged with live lease state (progress, cancel)."""
        task_id = row.id
        lease = self.fleet.leases.get(task_id)
        progress = lease.progress if lease is not None and lease.progress else (
            json.loads(row.progress) if row.progress else None)
        record: dict[str, Any] = {
            "id": task_id, "name": row.name, "task_type": row.task_type, "user": row.owner,
            "state": row.state, "priority": row.priority, "created_at": row.created_at,
            "started_at": row.started_at, "finished_at": row.finished_at, "attempts": row.attempts,
            "max_attempts": row.max_attempts, "progress": progress,
            "result": json.loads(row.result) if row.result else None, "error": row.error,
            "exit_code": row.exit_code, "cancel_requested": bool(row.cancel_requested),
            "preemptions": row.preemptions or 0,
            "resources": json.loads(row.requirement),
            "spec": json.loads(row.spec),
        }
        if row.team:
            record["team"] = row.team
        if row.state == "running":
            record["lease"] = {
                "agent": self._agent_name(row.agent_id), "agent_id": row.agent_id, "epoch": row.epoch,
                "gpus": json.loads(row.lease_gpus or "[]"),
            }
            if lease is not None and lease.preempt is not None:
                record["lease"]["preempting"] = lease.preempt.reason
        elif row.state in FINAL_STATES and row.agent_id:
            record["agent"] = self._agent_name(row.agent_id)
        if row.last_checkpoint:
            ck = json.loads(row.last_checkpoint)
            record["last_checkpoint"] = {"name": ck["name"], "step": ck.get("step")}
        if row.state == "queued":
            record["pending_reason"] = self.pending_reason(row, reasons, ctx)
        elif row.state == "blocked":
            record["pending_reason"] = row.blocked_reason
        if row.pipeline_id:
            record["pipeline"] = {"id": row.pipeline_id, "step": row.step, "index": row.step_index}
        if row.sweep_values:
            record["values"] = json.loads(row.sweep_values)
        return record

    def pending_reason(self, row: StoredTask, reasons: dict[str, str | None] | None = None,
                       ctx: ReasonContext | None = None) -> str | None:
        """Why a queued task waits. ``reasons`` caches the fleet-wide part per requirement for a listing:
        with a thousand agents it is the costly part, and a page of tasks has few distinct shapes."""
        key = row.requirement
        if reasons is not None and key in reasons:
            reason = reasons[key]
        else:
            reason = unplaceable_reason(Requirement.from_json(key), (a.view() for a in self.fleet.agents.values()))
            if reasons is not None:
                reasons[key] = reason
        if reason:
            return reason
        queued = self.fleet.queue.get(row.id)
        preempt = self.fleet.preempt_reasons.get(queued.req) if queued is not None else None
        if preempt:
            return preempt
        wait = queued.not_before - self.clock.time() if queued is not None else 0.0
        if wait > 0:
            return f"retry backoff: eligible again in {wait:.0f}s"
        req = Requirement.from_json(key)
        if req.nodes > 1 and self.leasing.gangs is not None:
            return self.leasing.gangs.pending_reason(row.id, req)
        if queued is not None:
            return queue_reason(self.fleet, queued, ctx)
        return "waiting for a fitting agent to have free GPUs"

    async def list(self, principal: Principal, *, state: str | tuple[str, ...] | None, user: str | None,
                   task_type: str | None, page: int, page_size: int) -> dict[str, Any]:
        owner = user if principal.is_admin else principal.user
        rows, total = await self.db.list_tasks(state=state, owner=owner, task_type=task_type,
                                               page=page, page_size=page_size)
        reasons: dict[str, str | None] = {}
        ctx = ReasonContext.of(self.fleet) if any(r.state == "queued" for r in rows) else None  # once a page
        return {"tasks": [self.record(r, reasons, ctx) for r in rows], "page": page, "page_size": page_size,
                "total": total, "pages": (total + page_size - 1) // page_size}

    async def cancel(self, task_id: str, principal: Principal) -> dict[str, Any]:
        self._visible(await self.db.get_task(task_id), principal, task_id)
        state = await self.leasing.cancel(task_id)
        return {"id": task_id, "state": state}
