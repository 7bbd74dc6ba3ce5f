"""The agent's call for a lease's secrets: its credential and the lease's epoch, nothing else, get them."""

from __future__ import annotations

from aiohttp import web
from mloc_shared.protocol import SecretsRequest, SecretsResponse

from mloc_server.api.common import agent, ok, read_model, state

routes = web.RouteTableDef()


@routes.post("/api/v1/leases/{task_id}/secrets")
async def lease_secrets(request: web.Request) -> web.Response:
    me = agent(request)
    req = await read_model(request, SecretsRequest)
    values = await state(request).secrets.for_lease(me, request.match_info["task_id"], req.epoch)
    resp = ok(SecretsResponse(secrets=values))
    resp.headers["Cache-Control"] = "no-store"
    return resp
