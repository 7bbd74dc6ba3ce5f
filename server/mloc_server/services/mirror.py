"""The model and dataset mirror: hub snapshots pushed once into the artifact store, handed to agents
that cannot reach the hub (or to all, in mode ``first``) through presigned URLs (docs/models.md).

A push is two calls, like an artifact upload: ``plan`` presigns a PUT (or parts) for each file of
the snapshot under ``mirror/<kind>s/<hub id>/<revision>/``, ``commit`` checks the files arrived
and makes the snapshot the mirrored one of its revision. The mirror is shared by every user of the
coordinator: anyone may read it and push a new snapshot; replacing one is for its pusher or an admin.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from mloc_shared.chaining import referenced_tasks
from mloc_shared.errors import Forbidden, NotFound, PayloadTooLarge, ValidationFailed
from mloc_shared.mirror import (
    MirroredFile,
    MirroredSnapshot,
    MirrorEntry,
    MirrorFile,
    MirrorListing,
    MirrorRequest,
    MirrorResponse,
    Mode,
    PlannedFile,
    PushCommit,
    PushPlan,
    PushRequest,
    check_hub_id,
    check_revision,
    hub_references,
    storage_prefix,
)
from mloc_shared.protocol import PartUrl

from mloc_server.artifacts.base import ArtifactStore
from mloc_server.clock import Clock
from mloc_server.services.auth import Principal
from mloc_server.services.fleet import AgentState
from mloc_server.services.leasing import Leasing
from mloc_server.services.sources import MAX_SOURCES
from mloc_server.store import Store
from mloc_server.store.records import StoredMirror


@dataclass(eq=False)
class Mirror:
    db: Store
    leasing: Leasing
    store: ArtifactStore
    clock: Clock
    mode: Mode
    max_bytes: int  # per file, as for artifacts

    async def plan(self, principal: Principal, req: PushRequest) -> PushPlan:
        """Presign the upload of every file of a snapshot; nothing is listed until ``commit``."""
        hub_id = check_hub_id(req.hub_id)
        revision = check_revision(req.revision)
        paths = [f.path for f in req.files]
        if len(set(paths)) != len(paths):
            raise ValidationFailed("files: a path is listed twice", field="files")
        for f in req.files:
            if f.size > self.max_bytes:
                raise PayloadTooLarge(f"files: {f.path} is {f.size} bytes, over the artifact limit of "
                                      f"{self.max_bytes} bytes (MLOC_MAX_ARTIFACT_GB)", field="files")
        for earlier in await self.db.mirrored(req.kind, hub_id):
            if earlier.revision == revision and earlier.pushed_by != principal.user and not principal.is_admin:
                raise Forbidden(f"{req.kind} {hub_id}@{revision} was pushed by {earlier.pushed_by}; only they or "
                                "an admin may replace it (push another --revision)")
        prefix = storage_prefix(req.kind, hub_id, revision)
        planned: list[PlannedFile] = []
        uploads: dict[str, str] = {}
        for f in req.files:
            up = await self.store.plan_upload(prefix + f.path, f.size)
            if up.multipart_id is not None:
                uploads[f.path] = up.multipart_id
            planned.append(PlannedFile(
                path=f.path, url=up.url, headers=up.headers, part_size=up.part_size,
                parts=[PartUrl(part_number=i + 1, url=u) for i, u in enumerate(up.part_urls)] or None))
        push = StoredMirror(
            id=uuid.uuid4().hex, kind=req.kind, hub_id=hub_id, revision=revision,
            files=[f.model_dump() for f in req.files], bytes=sum(f.size for f in req.files), uploads=uploads,
            created_at=self.clock.time(), pushed_by=principal.user, ready=False)
        await self.db.write(lambda tx: tx.insert_mirror_push(push))
        return PushPlan(push_id=push.id, files=planned)

    async def commit(self, principal: Principal, push_id: str, req: PushCommit) -> MirrorEntry:
        """Check every file arrived (complete the multipart ones), then list the snapshot."""
        push = await self.db.mirror_push(push_id)
        if push is None:
            raise NotFound(f"no push {push_id} waiting for its commit (it was committed, or never planned)")
        if push.pushed_by != principal.user and not principal.is_admin:
            raise Forbidden(f"push {push_id} belongs to {push.pushed_by}")
        parts = {c.path: [(p.part_number, p.etag) for p in c.parts or []] for c in req.files}
        prefix = storage_prefix(push.kind, push.hub_id, push.revision)
        for f in push.files:
            await self.store.finish_upload(prefix + f["path"], push.uploads.get(f["path"]), parts.get(f["path"], []))
        done = await self.db.write(lambda tx: tx.commit_mirror_push(push_id, self.clock.time()))
        if done is None:
            raise NotFound(f"push {push_id} was committed already")
        return _entry(done)

    async def listing(self, kind: str | None = None) -> MirrorListing:
        """What is mirrored, and which agents hold each id now (their last reported hub cache or mirror
        copies: services/fleet.py); the names of mirrored ids are no secret from the coordinator's users."""
        held: dict[tuple[str, str], list[str]] = {}
        for agent in self.leasing.fleet.agents.values():
            for m in agent.inventory.models:
                if m.where in ("hf-cache", "mirror"):
                    held.setdefault((m.kind, m.id), []).append(agent.name)
        entries = [_entry(m) for m in await self.db.mirrored(kind)]
        for e in entries:
            e.held_by = sorted(set(held.get((e.kind, e.hub_id), [])))
        return MirrorListing(mode=self.mode, mirrored=entries)

    async def for_lease(self, agent: AgentState, task_id: str, req: MirrorRequest) -> MirrorResponse:
        """Presigned downloads of the mirrored copies of what the leased spec reads from the hub."""
        self.leasing.own_lease(agent, task_id, req.epoch)
        if self.mode == "off":
            return MirrorResponse(mode=self.mode)
        row = await self.db.get_task(task_id)
        if row is None:
            raise NotFound(f"no task {task_id}")
        snapshots: list[MirroredSnapshot] = []
        for kind, hub_id, revision in await self._references(row.owner, json.loads(row.spec)):
            found = await self.db.mirrored(kind, hub_id)  # the newest first
            match = next((m for m in found if revision is None or m.revision == revision), None)
            if match is None:
                continue
            prefix = storage_prefix(kind, hub_id, match.revision)
            snapshots.append(MirroredSnapshot(kind=kind, hub_id=hub_id, revision=match.revision, files=[
                MirroredFile(**f, url=self.store.download_url(prefix + f["path"])) for f in match.files]))
        return MirrorResponse(mode=self.mode, snapshots=snapshots)


    async def _references(self, owner: str, spec: dict) -> list[tuple[str, str, str | None]]:
        """The spec's hub ids, and the base models of the tasks it reads (an adapter's base: the chained
        task's agent resolves it as that task's ``model.source``; the same owner's tasks only)."""
        refs: list[tuple[str, str, str | None]] = list(hub_references(spec))
        for ref in referenced_tasks(spec)[:MAX_SOURCES]:
            src = await self.db.get_task(ref)
            if src is not None and src.owner == owner:
                refs += [r for r in hub_references(json.loads(src.spec)) if r[0] == "model" and r not in refs]
        return refs


def _entry(m: StoredMirror) -> MirrorEntry:
    return MirrorEntry(kind=m.kind, hub_id=m.hub_id, revision=m.revision,  # type: ignore[arg-type]
                       files=[MirrorFile(**f) for f in m.files], bytes=m.bytes, created_at=m.created_at,
                       pushed_by=m.pushed_by)
