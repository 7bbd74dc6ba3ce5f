"""Dependencies between tasks: ``depends_on``, the outputs a task reads, and a sweep's max_parallel.

A task that waits is ``blocked`` (never in the queue, never leased) with a reason naming what it
waits on. When a task reaches a final state, Leasing calls ``task_ended`` right after that commit;
one transaction then decides each blocked task that waits on it (or on a slot of its sweep): queued
when every condition holds, cancelled with the reason when one no longer can, still blocked
otherwise. No loop polls the blocked tasks: the only other pass is at start (``settle_all``), for
ends committed just before a crash.

Conditions: ``succeeded`` (the default; also every task whose outputs this one reads), ``failed``
(the parent failed; cancelled does not count) and ``finished`` (any end).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from mloc_shared.chaining import TASK_PREFIX, referenced_tasks
from mloc_shared.errors import ValidationFailed
from mloc_shared.protocol import FINAL_STATES
from mloc_shared.taskspec import TaskSpec

from mloc_server.clock import Clock
from mloc_server.services.fleet import Fleet
from mloc_server.services.leasing import Leasing
from mloc_server.services.preemption import Preempter
from mloc_server.services.queue import QueuedTask, TaskMeta
from mloc_server.services.scheduler import Requirement
from mloc_server.store import Store, StoreTx
from mloc_server.store.records import Dependency, DependencyState, StoredTask

log = logging.getLogger(__name__)
VERB = {"succeeded": "succeed", "failed": "fail", "finished": "finish"}


def holds(condition: str, state: str) -> bool | None:
    """True: met; False: can no longer be met; None: not yet (the parent has not ended)."""
    if state not in FINAL_STATES:
        return None
    return condition == "finished" or state == condition


def decide(deps: list[DependencyState]) -> tuple[str, str | None]:
    """("queued", None), ("blocked", what it waits on) or ("cancelled", why it never can run)."""
    waiting = None
    for d in deps:
        verdict = holds(d.condition, d.parent_state)
        label = f"task {d.parent_id}" + (f" ({d.parent_name})" if d.parent_name else "")
        if verdict is False:
            return "cancelled", f"{label} {d.parent_state}; this task needed it to {VERB[d.condition]}"
        if verdict is None and waiting is None:
            waiting = f"waits for {label} to {VERB[d.condition]}"
    return ("blocked", waiting) if waiting else ("queued", None)


def slot_reason(pipeline_id: str, limit: int) -> str:
    return f"sweep {pipeline_id} runs at most {limit} at once (max_parallel): waits for a child to end"


def _ref_field(wire: dict[str, Any], ref: str) -> str:
    """Which field of the spec names the task ``ref`` whose outputs it reads."""
    source = (wire.get("model") or {}).get("source") or {}
    if source.get("type") == "task" and source.get("identifier") == ref:
        return "model.source.identifier"
    hp = wire.get("hyperparameters") or {}
    if isinstance(hp.get("reward_model"), str) and hp["reward_model"] == f"{TASK_PREFIX}{ref}":
        return "hyperparameters.reward_model"
    return "hyperparameters.documents"


def resolve(tx: StoreTx, owner: str, spec: TaskSpec, wire: dict[str, Any],
            prefix: str = "") -> list[tuple[Dependency, DependencyState]]:
    """The task's dependencies as ids, checked against the owner's tasks (in the submit's transaction).
    Unknown ids or names, and conditions that can no longer hold, are refused (422 naming the field);
    ``wire``'s depends_on is rewritten to ids (what the task record shows)."""
    found: dict[str, tuple[Dependency, DependencyState]] = {}
    for i, d in enumerate(spec.depends_on):
        where = f"{prefix}depends_on.{i}"
        hit = tx.find_task_ref(owner, d.task)
        if hit is None:
            raise ValidationFailed(f"{where}: no task {d.task!r} of yours (give a task id or a task's name)",
                                   field=where)
        task_id, name, state = hit
        found.setdefault(task_id, (Dependency(task_id, d.condition, where),
                                   DependencyState(task_id, d.condition, name, state)))
    for ref in referenced_tasks(wire):
        where = prefix + _ref_field(wire, ref)
        hit = tx.find_task_ref(owner, ref)
        if hit is None or hit[0] != ref:
            raise ValidationFailed(f"{where}: no task {ref!r} of yours whose outputs this task could read",
                                   field=where)
        if ref in found and found[ref][0].condition != "succeeded":
            raise ValidationFailed(f"{found[ref][0].field}: this task reads task {ref}'s outputs, so it needs it "
                                   f"to succeed, not condition {found[ref][0].condition!r}", field=found[ref][0].field)
        found.setdefault(ref, (Dependency(ref, "succeeded", where), DependencyState(ref, "succeeded", hit[1], hit[2])))
    if spec.depends_on:
        wire["depends_on"] = [{"task": dep.parent_id, "condition": dep.condition}
                              for dep, _ in found.values() if dep.field.startswith(f"{prefix}depends_on.")]
    for dep, st in found.values():
        if holds(dep.condition, st.parent_state) is False:
            label = f"task {dep.parent_id}" + (f" ({st.parent_name})" if st.parent_name else "")
            raise ValidationFailed(f"{dep.field}: {label} already {st.parent_state}; this task needs it to "
                                   f"{VERB[dep.condition]}", field=dep.field)
    return list(found.values())


@dataclass(eq=False)
class Dependencies:
    db: Store
    fleet: Fleet
    leasing: Leasing
    clock: Clock
    _pending: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self.leasing.on_task_final.append(self.task_ended)

    def task_ended(self, task_id: str, _state: str) -> None:
        """Leasing's hook, right after a final state's commit: decide what waited on this task."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        job = loop.create_task(self._settle_after(task_id), name=f"mloc-deps-{task_id}")
        self._pending.add(job)
        job.add_done_callback(self._pending.discard)

    async def idle(self) -> None:
        """Wait until every decision started so far is written (tests on a ManualClock use it)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def _settle_after(self, task_id: str) -> None:
        try:
            now = self.clock.time()

            def write(tx: StoreTx) -> list[tuple[str, StoredTask]]:
                candidates = tx.blocked_dependents(task_id)
                slots = tx.pipeline_slots(task_id)
                if slots is not None:
                    candidates += [b for b in slots[3] if b not in candidates]
                return [c for c in (self._settle(tx, t, now) for t in candidates) if c is not None]

            self._apply(await self.db.write(write), now)
        except Exception:  # the next end in the pipeline, or the next start, decides again
            log.exception("deciding the tasks that wait on task %s failed", task_id)

    async def settle_all(self) -> None:
        """At start: decide every blocked task once (ends committed just before a stop)."""
        blocked = await self.db.blocked_tasks()
        if not blocked:
            return
        now = self.clock.time()

        def write(tx: StoreTx) -> list[tuple[str, StoredTask]]:
            return [c for c in (self._settle(tx, t, now) for t in blocked) if c is not None]

        changes = await self.db.write(write)
        self._apply(changes, now)
        log.info("%d blocked task(s) at start, %d of them moved on", len(blocked), len(changes))

    @staticmethod
    def _settle(tx: StoreTx, task_id: str, now: float) -> tuple[str, StoredTask] | None:
        """Decide one blocked task inside the transaction; the change, or None when it still waits."""
        state, reason = decide(tx.task_dependencies(task_id))
        if state == "queued":
            slots = tx.pipeline_slots(task_id)
            if slots is not None and slots[2] >= slots[1]:
                state, reason = "blocked", slot_reason(slots[0], slots[1])
        if state == "blocked":
            tx.set_blocked_reason(task_id, reason or "")
            return None
        changed = tx.unblock(task_id, now) if state == "queued" else tx.cancel_blocked(task_id, reason or "", now)
        row = tx.get_task(task_id) if changed else None
        return (state, row) if row is not None else None

    def _apply(self, changes: list[tuple[str, StoredTask]], now: float) -> None:
        """After the commit: queue what was released, announce what was cancelled (which cascades)."""
        settings = self.leasing.settings
        queued = False
        for state, row in changes:
            if state == "queued":
                meta = TaskMeta.from_spec(json.loads(row.spec), row.owner, settings.priority_classes,
                                          settings.default_priority_class, team=row.team or "")
                self.fleet.enqueue(QueuedTask.make(row.id, Requirement.from_json(row.requirement), meta, now), now)
                queued = True
            else:
                self.leasing.announce_final(row.id, state)
        if queued:
            Preempter(self.fleet, settings, self.clock).check()
