"""Artifacts and checkpoints: presign uploads for a lease, record them, list and hand out downloads."""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import quote

from mloc_shared.errors import NotFound, PayloadTooLarge
from mloc_shared.protocol import PartUrl, UploadCommit, UploadPlan, UploadRequest

from mloc_server.artifacts.base import ArtifactStore, check_artifact_name
from mloc_server.services.fleet import AgentState
from mloc_server.services.leasing import Leasing
from mloc_server.store import repo
from mloc_server.store.database import Database


class Artifacts:
    def __init__(self, db: Database, leasing: Leasing, store: ArtifactStore, max_bytes: int) -> None:
        self.db = db
        self.leasing = leasing
        self.store = store
        self.max_bytes = max_bytes

    async def plan(self, agent: AgentState, task_id: str, req: UploadRequest) -> UploadPlan:
        lease = self.leasing.own_lease(agent, task_id, req.epoch)
        name = check_artifact_name(req.name)
        if req.size > self.max_bytes:
            raise PayloadTooLarge(f"{req.size} bytes is over the artifact limit of {self.max_bytes} bytes",
                                  field="size")
        upload_id = uuid.uuid4().hex
        key = f"tasks/{task_id}/{upload_id}/{name}"
        planned = await self.store.plan_upload(key, req.size)
        row = {
            "id": upload_id, "task_id": task_id, "epoch": req.epoch, "attempt": lease.attempt, "name": name,
            "kind": req.kind, "step": req.step, "size": req.size, "storage_key": key,
            "multipart_id": planned.multipart_id, "created_at": time.time(),
        }
        await self.db.write(lambda con: repo.insert_upload(con, row))
        return UploadPlan(
            upload_id=upload_id, url=planned.url, headers=planned.headers, part_size=planned.part_size,
            parts=[PartUrl(part_number=i + 1, url=u) for i, u in enumerate(planned.part_urls)] or None,
        )

    async def commit(self, agent: AgentState, task_id: str, upload_id: str, req: UploadCommit) -> dict[str, Any]:
        self.leasing.own_lease(agent, task_id, req.epoch)
        up = await self.db.read_one("SELECT * FROM uploads WHERE id=? AND task_id=?", (upload_id, task_id))
        if up is None:
            raise NotFound(f"no pending upload {upload_id} for task {task_id}")
        parts = [(p.part_number, p.etag) for p in req.parts or []]
        await self.store.finish_upload(up["storage_key"], up["multipart_id"], parts)
        now = time.time()

        def write(con):
            taken = repo.take_upload(con, upload_id)
            if taken is None:
                return None
            repo.record_artifact(con, taken, now)
            if taken["kind"] == "checkpoint":
                repo.set_checkpoint(con, task_id, {"name": taken["name"], "step": taken["step"],
                                                   "size": taken["size"], "storage_key": taken["storage_key"]})
            return taken

        taken = await self.db.write(write)
        if taken is None:
            raise NotFound(f"upload {upload_id} was already committed")
        return {"name": taken["name"], "kind": taken["kind"], "size": taken["size"], "step": taken["step"]}

    async def listing(self, task_id: str) -> list[dict[str, Any]]:
        return [
            {"name": r["name"], "kind": r["kind"], "step": r["step"], "size": r["size"], "attempt": r["attempt"],
             "created_at": r["created_at"], "url": f"/api/v1/tasks/{task_id}/artifacts/{quote(r['name'])}"}
            for r in await repo.task_artifacts(self.db, task_id)
        ]

    async def download_url(self, task_id: str, name: str) -> str:
        row = await repo.artifact(self.db, task_id, name)
        if row is None:
            raise NotFound(f"task {task_id} has no artifact {name!r}")
        return self.store.download_url(row["storage_key"])
