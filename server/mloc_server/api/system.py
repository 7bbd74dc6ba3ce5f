"""Health, the fleet listing, drain/cordon, usage stats and token management."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aiohttp import web
from mloc_shared.errors import ValidationFailed
from mloc_shared.version import PROTOCOL_VERSION, __version__
from pydantic import BaseModel, Field

from mloc_server.api.common import admin, int_query, ok, read_model, state, user
from mloc_server.schemas import Health, TokenCreated, TokenRevoked, WorkerList
from mloc_server.services.overview import AGENT_STATES, select_agents
from mloc_server.services.usage import usage_stats

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    st = state(request)
    if not st.db.healthy:
        await st.db.probe()  # the last write failed: see whether the disk works again
    healthy = st.db.healthy
    body = Health(
        status="ok" if healthy else "degraded", version=__version__, protocol_version=PROTOCOL_VERSION,
        uptime_s=round(time.time() - st.started_at, 1), database="ok" if healthy else st.db.last_error,
        queued=len(st.fleet.queue), running=len(st.fleet.leases), agents=len(st.fleet.agents),
    )
    return ok(body, status=200 if healthy else 503)


@routes.get("/api/v1/workers")
@routes.get("/api/v1/agents")
async def workers(request: web.Request) -> web.Response:
    """Every agent; with page, page_size, state or q: one page of the matching ones (the status page)."""
    viewer = user(request)
    st = state(request)
    q = request.query
    if not any(k in q for k in ("page", "page_size", "state", "q")):
        agents = st.agents.listing(viewer)
        return _workers(WorkerList(workers=agents, total=len(agents)))
    wanted = q.get("state") or None
    if wanted and wanted not in AGENT_STATES:
        raise ValidationFailed(f"state must be one of {', '.join(AGENT_STATES)}", field="state")
    page, size = int_query(request, "page", 1, 1, 1_000_000), int_query(request, "page_size", 50, 1, 500)
    matching = select_agents(st.fleet, st.settings.poll_hold_s, wanted, q.get("q") or None)
    shown = [st.agents.describe(a, viewer) for a in matching[(page - 1) * size : page * size]]
    return _workers(WorkerList(workers=shown, total=len(matching), page=page, page_size=size,
                               pages=(len(matching) + size - 1) // size))


def _workers(listing: WorkerList) -> web.Response:
    # unset fields stay out: page fields when not paged, GPU fields an agent did not report
    return ok(listing.model_dump(mode="json", exclude_unset=True))


class DrainRequest(BaseModel):
    """A drain with notice (a spot reclaim, maintenance): running tasks checkpoint within ``deadline_s`` and
    their leases are released at once, so they resume elsewhere. 0 (or no body): they finish here."""

    model_config = {"extra": "forbid"}
    deadline_s: float = Field(0, ge=0, le=86400)


@routes.post("/api/v1/agents/{name}/drain")
@routes.post("/api/v1/agents/{name}/cordon")
async def drain(request: web.Request) -> web.Response:
    viewer = admin(request)
    st = state(request)
    body = await read_model(request, DrainRequest) if await request.read() else DrainRequest()
    agent = await st.agents.set_state(request.match_info["name"], "draining")
    if body.deadline_s > 0:
        for lease in list(agent.leases.values()):
            st.leasing.request_preempt(lease, body.deadline_s, f"agent {agent.name} drains within {body.deadline_s:g}s")
    return ok(st.agents.describe(agent, viewer).model_dump(mode="json", exclude_unset=True))


@routes.post("/api/v1/agents/{name}/undrain")
@routes.post("/api/v1/agents/{name}/uncordon")
async def undrain(request: web.Request) -> web.Response:
    viewer = admin(request)
    st = state(request)
    agent = await st.agents.set_state(request.match_info["name"], "active")
    return ok(st.agents.describe(agent, viewer).model_dump(mode="json", exclude_unset=True))


def _date(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationFailed(f"{name} must be a date like 2024-01-01", field=name) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@routes.get("/api/v1/stats")
async def stats(request: web.Request) -> web.Response:
    principal = user(request)
    who = request.query.get("user") or None
    if not principal.is_admin:
        who = principal.user
    start, end = _date(request, "start_date"), _date(request, "end_date")
    return ok(await usage_stats(state(request).db, who, start, end, start_date=request.query.get("start_date"),
                                end_date=request.query.get("end_date")))


class TokenCreate(BaseModel):
    kind: str = Field("user", pattern="^(user|join)$")
    user: str = Field("", max_length=100)
    role: str = Field("user", pattern="^(user|admin)$")
    ttl_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    max_uses: int | None = Field(None, ge=1, le=10**9)
    note: str = Field("", max_length=200)
    team: str = Field("", max_length=100, description="user tokens: the team its tasks count against")


@routes.post("/api/v1/tokens")
async def create_token(request: web.Request) -> web.Response:
    admin(request)
    req = await read_model(request, TokenCreate)
    if req.kind == "user" and not req.user:
        raise ValidationFailed("a user token needs a user name", field="user")
    token_id, secret = await state(request).auth.create_token(
        req.kind, user=req.user, role=req.role, ttl_s=req.ttl_s, max_uses=req.max_uses, note=req.note,
        team=req.team if req.kind == "user" else "")
    return ok(TokenCreated(id=token_id, token=secret, kind=req.kind, user=req.user, role=req.role,
                           team=req.team or None), status=201)


@routes.get("/api/v1/tokens")
async def list_tokens(request: web.Request) -> web.Response:
    admin(request)
    return ok(await state(request).auth.tokens())


@routes.delete("/api/v1/tokens/{token_id}")
async def revoke_token(request: web.Request) -> web.Response:
    admin(request)
    revoked = await state(request).auth.revoke(request.match_info["token_id"])
    if not revoked:
        from mloc_shared.errors import NotFound

        raise NotFound(f"no token {request.match_info['token_id']}")
    return ok(TokenRevoked(id=request.match_info["token_id"], revoked=True))
