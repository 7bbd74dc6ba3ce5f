"""Chaining tasks: hand an agent the outputs of the finished tasks its lease reads.

An agent holds only its own credential, so it cannot use the user API to download another task's
artifacts. For a lease whose spec names finished tasks (``model.source: {type: task, ...}``,
``reward_model: "task:<id>"``; see mloc_shared.chaining), the coordinator presigns their output
artifacts here — only tasks of the same owner, only succeeded ones, and transitively (an adapter's
base may itself come from a task), to a bounded depth.
"""

from __future__ import annotations

import json

from mloc_shared.chaining import referenced_tasks
from mloc_shared.errors import ValidationFailed
from mloc_shared.protocol import SourceArtifact, SourcesRequest, SourcesResponse, SourceTask

from mloc_server.services.artifacts import Artifacts
from mloc_server.services.fleet import AgentState

MAX_SOURCES = 8


async def lease_sources(artifacts: Artifacts, agent: AgentState, task_id: str, req: SourcesRequest) -> SourcesResponse:
    """Presigned downloads of every task output the leased task reads; refuses what its owner may not read."""
    db = artifacts.db
    artifacts.leasing.own_lease(agent, task_id, req.epoch)
    row = await db.get_task(task_id)
    if row is None:
        raise ValidationFailed(f"no task {task_id}")
    owner = row.owner
    pending = referenced_tasks(json.loads(row.spec))
    seen = {task_id}
    out: list[SourceTask] = []
    while pending:
        ref = pending.pop(0)
        if ref in seen:
            continue
        seen.add(ref)
        if len(out) >= MAX_SOURCES:
            raise ValidationFailed(f"task {task_id} reads more than {MAX_SOURCES} tasks' outputs (through chains)")
        src = await db.get_task(ref)
        if src is None or src.owner != owner:
            raise ValidationFailed(f"task {task_id} reads the outputs of task {ref}, which does not exist "
                                   f"(or belongs to another user)", field="model.source.identifier")
        if src.state != "succeeded":
            raise ValidationFailed(f"task {task_id} reads the outputs of task {ref}, which is {src.state}: "
                                   "only a succeeded task's outputs can be used", field="model.source.identifier")
        latest: dict[str, SourceArtifact] = {}  # a retried task may have uploaded a name twice: the last wins
        for art in await db.task_artifacts(ref):
            if art.kind == "artifact":
                latest[art.name] = SourceArtifact(name=art.name, size=art.size,
                                                  url=artifacts.store.download_url(art.storage_key))
        spec = json.loads(src.spec)
        model = spec.get("model") if isinstance(spec.get("model"), dict) else {}
        out.append(SourceTask(task_id=ref, task_type=src.task_type, model_source=model.get("source"),
                              artifacts=list(latest.values())))
        pending.extend(referenced_tasks(spec))
    return SourcesResponse(sources=out)
