"""Artifact listing/download for users, and the local store's signed blob URLs."""

from __future__ import annotations

import asyncio
import os
import uuid

from aiohttp import web
from mloc_shared.errors import NotFound, PayloadTooLarge

from mloc_server.api.common import ok, state, user
from mloc_server.artifacts.local import LocalStore
from mloc_server.schemas import BlobStored

routes = web.RouteTableDef()
CHUNK = 1 << 20


@routes.get("/api/v1/tasks/{task_id}/artifacts")
async def list_artifacts(request: web.Request) -> web.Response:
    st = state(request)
    task_id = request.match_info["task_id"]
    await st.tasks.get(task_id, user(request))
    return ok(await st.artifacts.listing(task_id))


@routes.get("/api/v1/tasks/{task_id}/artifacts/{name:.+}")
async def download_artifact(request: web.Request) -> web.StreamResponse:
    st = state(request)
    task_id = request.match_info["task_id"]
    await st.tasks.get(task_id, user(request))
    url = await st.artifacts.download_url(task_id, request.match_info["name"])
    raise web.HTTPFound(url)


def _local(request: web.Request) -> LocalStore:
    store = state(request).artifact_store
    if not isinstance(store, LocalStore):
        raise NotFound("this coordinator stores artifacts in an object store, not locally")
    return store


@routes.put("/api/v1/blobs/{key:.+}")
async def put_blob(request: web.Request) -> web.Response:
    store = _local(request)
    key = request.match_info["key"]
    store.verify("PUT", key, request.query.get("exp"), request.query.get("sig"))
    path = store.path_for(key)
    limit = state(request).artifacts.max_bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    size = 0
    try:
        with open(tmp, "wb") as fh:
            async for chunk in request.content.iter_chunked(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"upload is over the artifact limit of {limit} bytes")
                await asyncio.to_thread(fh.write, chunk)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return ok(BlobStored(size=size), status=201)


@routes.get("/api/v1/blobs/{key:.+}")
async def get_blob(request: web.Request) -> web.StreamResponse:
    store = _local(request)
    key = request.match_info["key"]
    store.verify("GET", key, request.query.get("exp"), request.query.get("sig"))
    path = store.path_for(key)
    if not path.is_file():
        raise NotFound("no such blob")
    return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{path.name}"'})
