"""User API for pipelines and sweeps: submit one document, list, read with each step, cancel all."""

from __future__ import annotations

import asyncio

from aiohttp import web
from mloc_shared.errors import ValidationFailed
from mloc_shared.pipelines import is_multi
from mloc_shared.spec_parsing import parse_document

from mloc_server.api.common import int_query, ok, state, user

routes = web.RouteTableDef()
INLINE_PARSE = 8 << 10  # bytes


@routes.post("/api/v1/pipelines")
async def submit(request: web.Request) -> web.Response:
    """A pipeline file (``tasks:`` mapping step names to specs) or a task spec with a ``sweep:`` block."""
    principal = user(request)  # who asks first: without a token it is a 401, whatever the body
    body = await request.read()
    data, node = parse_document(body) if len(body) <= INLINE_PARSE else await asyncio.to_thread(parse_document, body)
    if not is_multi(data):
        raise ValidationFailed("a pipeline is a mapping with 'tasks' (step name: task spec), or a task spec with a "
                               "'sweep' block", field="tasks",
                               hint="submit a single task to /api/v1/tasks (mloc submit picks the right one)")
    return ok(await state(request).pipelines.submit(data, node, principal), status=201)


@routes.get("/api/v1/pipelines")
async def list_pipelines(request: web.Request) -> web.Response:
    return ok(await state(request).pipelines.list(
        user(request), page=int_query(request, "page", 1, 1, 10_000_000),
        page_size=int_query(request, "page_size", 20, 1, 500)))


@routes.get("/api/v1/pipelines/{pipeline_id}")
async def get_pipeline(request: web.Request) -> web.Response:
    return ok(await state(request).pipelines.get(request.match_info["pipeline_id"], user(request)))


@routes.post("/api/v1/pipelines/{pipeline_id}/cancel")
@routes.delete("/api/v1/pipelines/{pipeline_id}")
async def cancel_pipeline(request: web.Request) -> web.Response:
    return ok(await state(request).pipelines.cancel(request.match_info["pipeline_id"], user(request)))
