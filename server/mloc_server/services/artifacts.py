"""Artifacts and checkpoints: presign uploads for a lease, record them, list and hand out downloads."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from urllib.parse import quote

from mloc_shared.errors import NotFound, PayloadTooLarge
from mloc_shared.protocol import PartUrl, UploadCommit, UploadPlan, UploadRequest

from mloc_server.artifacts.base import ArtifactStore, check_artifact_name
from mloc_server.schemas import ArtifactList, ArtifactView, UploadCommitted
from mloc_server.services.fleet import AgentState
from mloc_server.services.leasing import Leasing
from mloc_server.store import Store
from mloc_server.store.records import PendingUpload


@dataclass(eq=False)
class Artifacts:
    db: Store
    leasing: Leasing
    store: ArtifactStore
    max_bytes: int

    async def plan(self, agent: AgentState, task_id: str, req: UploadRequest) -> UploadPlan:
        lease = self.leasing.own_lease(agent, task_id, req.epoch)
        name = check_artifact_name(req.name)
        if req.size > self.max_bytes:
            raise PayloadTooLarge(f"{req.size} bytes is over the artifact limit of {self.max_bytes} bytes",
                                  field="size")
        upload_id = uuid.uuid4().hex
        key = f"tasks/{task_id}/{upload_id}/{name}"
        planned = await self.store.plan_upload(key, req.size)
        upload = PendingUpload(
            id=upload_id, task_id=task_id, epoch=req.epoch, attempt=lease.attempt, name=name, kind=req.kind,
            step=req.step, size=req.size, storage_key=key, multipart_id=planned.multipart_id, created_at=time.time(),
        )
        await self.db.write(lambda tx: tx.insert_upload(upload))
        return UploadPlan(
            upload_id=upload_id, url=planned.url, headers=planned.headers, part_size=planned.part_size,
            parts=[PartUrl(part_number=i + 1, url=u) for i, u in enumerate(planned.part_urls)] or None,
        )

    async def commit(self, agent: AgentState, task_id: str, upload_id: str, req: UploadCommit) -> UploadCommitted:
        self.leasing.own_lease(agent, task_id, req.epoch)
        up = await self.db.pending_upload(upload_id, task_id)
        if up is None:
            raise NotFound(f"no pending upload {upload_id} for task {task_id}")
        parts = [(p.part_number, p.etag) for p in req.parts or []]
        await self.store.finish_upload(up.storage_key, up.multipart_id, parts)
        now = time.time()
        taken = await self.db.write(lambda tx: tx.commit_upload(upload_id, now))
        if taken is None:
            raise NotFound(f"upload {upload_id} was already committed")
        return UploadCommitted(name=taken.name, kind=taken.kind, size=taken.size, step=taken.step)

    async def listing(self, task_id: str) -> ArtifactList:
        return ArtifactList(artifacts=[
            ArtifactView.of(art, f"/api/v1/tasks/{task_id}/artifacts/{quote(art.name)}")
            for art in await self.db.task_artifacts(task_id)
        ])

    async def download_url(self, task_id: str, name: str) -> str:
        art = await self.db.artifact(task_id, name)
        if art is None:
            raise NotFound(f"task {task_id} has no artifact {name!r}")
        return self.store.download_url(art.storage_key)
