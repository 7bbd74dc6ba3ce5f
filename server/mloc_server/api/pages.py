"""The status page: a static shell (HTML, JS, CSS; no data in it) that reads the JSON API live.

The shell is served without a token because a browser cannot send one on navigation; every piece
of data comes from the API, which needs a token (kept by the page in localStorage) or loopback.
"""

from __future__ import annotations

import time
from pathlib import Path

from aiohttp import web
from mloc_shared.version import __version__

from mloc_server.api.common import ok, state, user
from mloc_server.services.overview import fleet_counts
from mloc_server.store import ops

STATIC = Path(__file__).resolve().parent.parent / "static"
routes = web.RouteTableDef()
# the shell loads only its own scripts and styles, and talks only to this origin
SHELL_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _shell(name: str) -> web.FileResponse:
    return web.FileResponse(STATIC / name, headers=SHELL_HEADERS)


@routes.get("/")
async def index(request: web.Request) -> web.FileResponse:
    return _shell("index.html")


@routes.get("/tasks/{task_id}")
async def task_page(request: web.Request) -> web.FileResponse:
    return _shell("task.html")


@routes.get("/api/v1/overview")
async def overview(request: web.Request) -> web.Response:
    """Counts for the page's header: the fleet from memory, tasks by state (a user's own only)."""
    principal = user(request)
    st = state(request)
    tasks = await ops.tasks_by_state(st.db, None if principal.is_admin else principal.user)
    return ok({
        **fleet_counts(st.fleet, st.settings.poll_hold_s).as_dict(), "tasks": tasks, "user": principal.user,
        "role": principal.role,
        "version": __version__, "server_time": time.time(), "poll_hold_s": st.settings.poll_hold_s,
    })


routes.static("/static", STATIC, append_version=False)
