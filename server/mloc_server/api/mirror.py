"""The model and dataset mirror's REST paths: a user pushes and lists (services/mirror.py); an agent
asks for the mirrored copies its lease reads (its credential and the lease's epoch)."""

from __future__ import annotations

from aiohttp import web
from mloc_shared.errors import ValidationFailed
from mloc_shared.mirror import MirrorRequest, PushCommit, PushRequest

from mloc_server.api.common import agent, ok, read_model, state, user

routes = web.RouteTableDef()


@routes.get("/api/v1/mirror")
async def list_mirror(request: web.Request) -> web.Response:
    user(request)
    kind = request.query.get("kind")
    if kind not in (None, "model", "dataset"):
        raise ValidationFailed("query parameter kind must be model or dataset", field="kind")
    return ok(await state(request).mirror.listing(kind))


@routes.post("/api/v1/mirror/pushes")
async def plan_push(request: web.Request) -> web.Response:
    principal = user(request)
    req = await read_model(request, PushRequest)
    return ok(await state(request).mirror.plan(principal, req), status=201)


@routes.post("/api/v1/mirror/pushes/{push_id}/commit")
async def commit_push(request: web.Request) -> web.Response:
    principal = user(request)
    req = await read_model(request, PushCommit)
    return ok(await state(request).mirror.commit(principal, request.match_info["push_id"], req))


@routes.post("/api/v1/leases/{task_id}/mirror")
async def lease_mirror(request: web.Request) -> web.Response:
    me = agent(request)
    req = await read_model(request, MirrorRequest)
    return ok(await state(request).mirror.for_lease(me, request.match_info["task_id"], req))
