"""The status page: a static shell (HTML, JS, CSS; no data in it) that reads the JSON API live.

The shell is served without a token because a browser cannot send one on navigation; every piece
of data comes from the API, which needs a token (kept by the page in localStorage), or loopback where
MLOC_LOOPBACK_ADMIN is turned on.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from mloc_server.api.common import ok, state, user
from mloc_server.services.overview import overview as fleet_overview

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


@routes.get("/compare")
async def compare_page(request: web.Request) -> web.FileResponse:
    """Several tasks' curves and final metrics side by side: ``/compare?ids=a,b,c``."""
    return _shell("compare.html")


@routes.get("/pipelines/{pipeline_id}")
async def pipeline_page(request: web.Request) -> web.FileResponse:
    """A pipeline's or sweep's steps, one cancel, and the comparison view over its tasks (docs/pages.md)."""
    return _shell("pipeline.html")


@routes.get("/api/v1/overview")
async def overview(request: web.Request) -> web.Response:
    """Counts for the page's header: the fleet from memory, tasks by state (a user's own only)."""
    principal = user(request)
    st = state(request)
    return ok(await fleet_overview(st.db, st.fleet, st.settings.poll_hold_s, principal))


routes.static("/static", STATIC, append_version=False)
