"""The queue's API: its order with reasons (GET /api/v1/queue) and an admin's priority change
(PATCH /api/v1/tasks/{id}); the logic is services/queue_admin.py."""

from __future__ import annotations

from aiohttp import web
from mloc_shared.errors import Forbidden

from mloc_server.api.common import int_query, ok, read_model, state, user
from mloc_server.schemas import PriorityChange

routes = web.RouteTableDef()
MAX_LISTED = 5000


@routes.get("/api/v1/queue")
async def queue(request: web.Request) -> web.Response:
    limit = int_query(request, "limit", 200, 1, MAX_LISTED)
    principal, st = user(request), state(request)
    listing = st.queue_admin.listing(principal, limit)
    # blocked tasks are not in the queue (never leased): counted here, listed with GET /api/v1/tasks?state=blocked
    counts = await st.db.count_tasks_by_state(None if principal.is_admin else principal.user)
    listing.blocked = counts.get("blocked", 0)
    return ok(listing)


@routes.patch("/api/v1/tasks/{task_id}")
async def change_priority(request: web.Request) -> web.Response:
    principal = user(request)
    if not principal.is_admin:
        raise Forbidden("changing a task's priority class needs an admin token (role admin); "
                        f"user {principal.user!r} has role {principal.role}")
    change = await read_model(request, PriorityChange)
    st = state(request)
    return ok(await st.queue_admin.set_priority(request.match_info["task_id"], change.priority_class,
                                                change.priority))
