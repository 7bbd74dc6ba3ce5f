"""Pipelines and sweeps: many tasks submitted as one, read and cancelled under one id.

The document is expanded and every step validated first (mloc_shared.pipelines); then one transaction
inserts the pipeline and all of its tasks, parents before children, each blocked on what it waits for
(services/dependencies.py): all or nothing. A pipeline's state is rolled up from its tasks' on every
read, so there is no second copy of it to keep right.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import yaml
from mloc_shared.errors import Conflict, NotFound, ValidationFailed
from mloc_shared.pipelines import Plan, Step, bind, plan_document
from mloc_shared.protocol import FINAL_STATES
from mloc_shared.spec_parsing import with_line
from mloc_shared.taskspec import TaskSpec

from mloc_server.services.auth import Principal
from mloc_server.services.dependencies import decide, resolve, slot_reason
from mloc_server.services.queue import QueuedTask
from mloc_server.services.scheduler import Requirement
from mloc_server.services.secrets import split_secrets
from mloc_server.services.tasks import Tasks, new_task_id
from mloc_server.store import StoreTx
from mloc_server.store.records import NewTask, StoredPipeline, StoredTask

ACTIVE = ("running", "queued", "blocked")


def rollup_state(states: list[str]) -> str:
    """running if any runs; else queued, else blocked while any waits; then succeeded when all did,
    failed when any failed, else cancelled."""
    for state in ACTIVE:
        if state in states:
            return state
    if states and all(s == "succeeded" for s in states):
        return "succeeded"
    return "failed" if "failed" in states else "cancelled"


def final_metrics(record: dict[str, Any]) -> dict[str, float]:
    """A task's last reported figures: its progress's loss and metrics, then its result's metrics."""
    out: dict[str, float] = {}
    progress = record.get("progress") or {}
    for key in ("loss", "learning_rate"):
        if isinstance(progress.get(key), int | float):
            out[key] = progress[key]
    out.update({k: v for k, v in (progress.get("metrics") or {}).items() if isinstance(v, int | float)})
    result = record.get("result")
    metrics = result.get("metrics") if isinstance(result, dict) else None
    if isinstance(metrics, dict):
        out.update({k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)})
    return out


def _order(steps: list[Step]) -> list[Step]:
    """Parents before children (the plan refused cycles), else in file order."""
    by_name, done, out = {s.name: s for s in steps}, set(), []

    def visit(s: Step) -> None:
        if s.name in done:
            return
        done.add(s.name)
        for need in s.needs:
            visit(by_name[need])
        out.append(s)

    for s in steps:
        visit(s)
    return out


@dataclass(eq=False)
class Pipelines:
    tasks: Tasks

    async def submit(self, data: dict[str, Any], node: yaml.Node | None, principal: Principal) -> dict[str, Any]:
        """Create a pipeline (or a sweep) and all of its tasks in one transaction; its record."""
        t = self.tasks
        plan = plan_document(data, node)
        now = t.clock.time()
        owner, team = principal.user, principal.team
        ids = {s.name: new_task_id(now) for s in plan.steps}
        pipeline = StoredPipeline(id=f"p{new_task_id(now)}", name=plan.name, kind=plan.kind, owner=owner,
                                  team=team or None, created_at=now, max_parallel=plan.max_parallel)
        prepared = [self._prepare(plan, s, ids, pipeline, principal, now) for s in _order(plan.steps)]

        def write(tx: StoreTx) -> None:
            tx.insert_pipeline(pipeline)
            active = 0
            for step, spec, wire, new, sealed in prepared:
                try:
                    found = resolve(tx, owner, spec, wire, prefix=step.where)
                except ValidationFailed as exc:
                    raise with_line(exc, step.node, step.where) from None
                new.spec = json.dumps(wire, sort_keys=True)
                new.depends = [dep for dep, _ in found]
                state, reason = decide([st for _, st in found])
                if state == "queued" and plan.max_parallel is not None and active >= plan.max_parallel:
                    state, reason = "blocked", slot_reason(pipeline.id, plan.max_parallel)
                active += state == "queued"
                new.state, new.blocked_reason = state, reason
                tx.insert_task(new)
                if sealed is not None:
                    t.secrets.insert(tx, new.id, sealed, now)

        with t._queued_quota(Counter({(owner, team): len(prepared)})):
            await t.db.write(write)
        for _step, spec, _wire, new, sealed in prepared:
            if sealed is not None:
                t.secrets.stored(new.id)
            if new.state == "queued":
                meta = t._meta(json.loads(new.spec), owner, team)
                t.fleet.enqueue(QueuedTask.make(new.id, Requirement.from_spec(spec), meta, now), t.clock.time())
        t.preempter.check()
        return await self.get(pipeline.id, principal)

    def _prepare(self, plan: Plan, step: Step, ids: dict[str, str], pipeline: StoredPipeline, principal: Principal,
                 now: float) -> tuple[Step, TaskSpec, dict[str, Any], NewTask, str | None]:
        spec = bind(step, ids)
        if spec.user and spec.user != principal.user:
            where = f"{step.where}user"
            raise ValidationFailed(f"{where}: a pipeline's tasks are submitted as you; leave 'user' out", field=where)
        wire, secret_values = split_secrets(spec.wire())
        if plan.kind == "sweep":  # the agent turns it into MLOC_ARRAY_INDEX / MLOC_ARRAY_COUNT
            wire["array"] = {"index": step.index, "count": len(plan.steps)}
        try:
            self.tasks._meta(wire, principal.user, principal.team)
        except ValidationFailed as exc:
            exc.field = f"{step.where}{exc.field}"
            exc.message = f"{step.where.rstrip('.') or 'the sweep'}: {exc.message}"
            raise
        req = Requirement.from_spec(spec)
        new = NewTask(
            id=ids[step.name], name=spec.name or step.name, task_type=spec.task_type, owner=principal.user,
            spec="", priority=spec.priority, created_at=now, max_attempts=spec.retry.max_attempts,
            gpus_required=req.gpus, requirement=req.to_json(), idempotency_key=None, body_hash=None,
            team=principal.team, pipeline_id=pipeline.id, step=step.name, step_index=step.index,
            sweep_values=json.dumps(step.values) if step.values is not None else None)
        sealed = self.tasks.secrets.seal(secret_values) if secret_values else None
        return step, spec, wire, new, sealed

    async def _visible(self, pipeline_id: str, principal: Principal) -> StoredPipeline:
        row = await self.tasks.db.get_pipeline(pipeline_id)
        if row is None or (not principal.is_admin and row.owner != principal.user):
            raise NotFound(f"no pipeline {pipeline_id}")
        return row

    def _step(self, row: StoredTask) -> dict[str, Any]:
        record = self.tasks.record(row)
        step = {"name": row.step, "index": row.step_index, "task_id": row.id, "task_type": row.task_type,
                "state": row.state, "final": final_metrics(record), "started_at": row.started_at,
                "finished_at": row.finished_at, "error": row.error, "progress": record.get("progress")}
        if row.sweep_values:
            step["values"] = json.loads(row.sweep_values)
        if record.get("pending_reason"):
            step["pending_reason"] = record["pending_reason"]
        return step

    def _record(self, p: StoredPipeline, rows: list[StoredTask], *, steps: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"id": p.id, "name": p.name, "kind": p.kind, "user": p.owner,
                               "state": rollup_state([r.state for r in rows]), "created_at": p.created_at,
                               "max_parallel": p.max_parallel, "counts": dict(Counter(r.state for r in rows))}
        if steps:
            out["steps"] = [self._step(r) for r in rows]
            out["rollup"] = [{"name": s["name"], "task_id": s["task_id"], "state": s["state"],
                              **({"values": s["values"]} if "values" in s else {}), "final": s["final"]}
                             for s in out["steps"]]
            out["metrics"] = sorted({k for s in out["steps"] for k in s["final"]})
        return out

    async def get(self, pipeline_id: str, principal: Principal) -> dict[str, Any]:
        """The pipeline with each step's state, values (a sweep's) and final metrics."""
        p = await self._visible(pipeline_id, principal)
        return self._record(p, await self.tasks.db.pipeline_tasks([p.id]), steps=True)

    async def list(self, principal: Principal, page: int, page_size: int) -> dict[str, Any]:
        owner = None if principal.is_admin else principal.user
        rows, total = await self.tasks.db.list_pipelines(owner, page, page_size)
        by_pipeline: dict[str, list[StoredTask]] = {}
        for r in await self.tasks.db.pipeline_tasks([p.id for p in rows]):
            by_pipeline.setdefault(r.pipeline_id or "", []).append(r)
        return {"pipelines": [self._record(p, by_pipeline.get(p.id, []), steps=False) for p in rows],
                "page": page, "page_size": page_size, "total": total, "pages": (total + page_size - 1) // page_size}

    async def cancel(self, pipeline_id: str, principal: Principal) -> dict[str, Any]:
        """Cancel every unfinished step: the blocked ones first (so none is released meanwhile), then
        the queued and running ones (a running one stops through its agent, as a task cancel does)."""
        t = self.tasks
        p = await self._visible(pipeline_id, principal)
        rows = await t.db.pipeline_tasks([p.id])
        blocked = [r.id for r in rows if r.state == "blocked"]
        now = t.clock.time()
        reason = f"cancelled with its pipeline {p.id}"

        def write(tx: StoreTx) -> list[bool]:
            return [tx.cancel_blocked(task_id, reason, now) for task_id in blocked]

        done = await t.db.write(write) if blocked else []
        cancelled = [task_id for task_id, ok in zip(blocked, done, strict=True) if ok]
        for task_id in cancelled:
            t.leasing.announce_final(task_id, "cancelled")
        others = [r.id for r in rows if r.state not in FINAL_STATES and r.id not in cancelled]
        cancelling = []
        for task_id in others:
            try:
                state = await t.leasing.cancel(task_id)
            except (Conflict, NotFound):  # it ended meanwhile
                continue
            (cancelled if state == "cancelled" else cancelling).append(task_id)
        record = self._record(p, await t.db.pipeline_tasks([p.id]), steps=False)
        return {**record, "cancelled": cancelled, "cancelling": cancelling}
