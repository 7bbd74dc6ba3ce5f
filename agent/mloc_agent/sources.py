"""Before a task that reads other tasks' outputs starts: fetch those outputs onto this agent.

The task process holds no credentials, so the agent asks the coordinator (with its own
credential and the lease's epoch) for presigned downloads and lays each source task's
artifacts out as that task wrote them: ``<dest>/<task_id>/<artifact name>`` (e.g.
``adapter/adapter_model.safetensors``), plus ``mloc-source.json`` with the task's type and model
source, so the module can find the base an adapter belongs to.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from mloc_shared.chaining import referenced_tasks
from mloc_shared.protocol import Lease, SourcesRequest

from mloc_agent.client import CoordinatorClient
from mloc_agent.modules.sources.task_outputs import SOURCE_FILE
from mloc_agent.retries import with_retries


def _safe_target(root: Path, name: str) -> Path:
    target = (root / name).resolve()
    if not str(target).startswith(str(root.resolve()) + "/"):
        raise ValueError(f"artifact name {name!r} leaves its folder")
    return target


async def fetch_sources(client: CoordinatorClient, lease: Lease, dest: Path) -> Path | None:
    """Download the outputs of every task the lease's spec reads; None when it reads none."""
    if not referenced_tasks(lease.spec):
        return None
    answer = await with_retries(lambda: client.sources(lease.task_id, SourcesRequest(epoch=lease.epoch)), 120,
                                "sources")
    for source in answer.sources:
        root = dest / source.task_id
        await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
        for art in source.artifacts:
            target = _safe_target(root, art.name)
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
            await with_retries(lambda u=art.url, t=target: client.download(u, str(t)), 600, "source download")
        meta = {"task_id": source.task_id, "task_type": source.task_type, "model_source": source.model_source,
                "artifacts": [a.name for a in source.artifacts]}
        await asyncio.to_thread((root / SOURCE_FILE).write_text, json.dumps(meta))
    return dest
