"""Helpers every handler uses: typed app state, JSON in/out, the caller's identity."""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from aiohttp import web
from mloc_shared.errors import BadRequest, ProtocolMismatch, ValidationFailed
from mloc_shared.version import PROTOCOL_HEADER, PROTOCOL_VERSION, protocol_compatible
from pydantic import BaseModel, ValidationError

from mloc_server.services.auth import PROXY_HEADERS, Principal
from mloc_server.services.fleet import AgentState
from mloc_server.state import STATE, AppState

M = TypeVar("M", bound=BaseModel)


def state(request: web.Request) -> AppState:
    return request.app[STATE]


def ok(data: Any, status: int = 200) -> web.Response:
    if isinstance(data, BaseModel):
        text = data.model_dump_json()
    else:
        try:
            text = json.dumps(data, default=str, allow_nan=False)
        except ValueError:  # NaN/Infinity a peer reported (progress, result): JSON has none, say null like pydantic
            text = json.dumps(_finite(data), default=str)
    return web.Response(text=text, status=status, content_type="application/json")


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


async def read_model(request: web.Request, model: type[M]) -> M:
    body = await request.read()
    if not body:
        raise BadRequest("the request body is empty; send JSON")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        if err["type"] == "json_invalid":
            raise BadRequest(f"the body is not valid JSON: {err['msg']}") from None
        raise ValidationFailed(f"{field}: {err['msg']}" if field else err["msg"], field=field) from None


def user(request: web.Request) -> Principal:
    forwarded = any(name in request.headers for name in PROXY_HEADERS)
    return state(request).auth.user(request.headers.get("Authorization"), request.remote, forwarded)


def admin(request: web.Request) -> Principal:
    principal = user(request)
    if not principal.is_admin:
        from mloc_shared.errors import Forbidden

        raise Forbidden("this needs an admin token")
    return principal


def check_protocol(request: web.Request) -> None:
    raw = request.headers.get(PROTOCOL_HEADER)
    try:
        theirs = int(raw) if raw is not None else None
    except ValueError:
        theirs = -1
    if theirs is None or not protocol_compatible(theirs):
        raise ProtocolMismatch(
            f"agent protocol {raw or 'missing'} does not match the coordinator's {PROTOCOL_VERSION}",
            hint="upgrade the agent and the coordinator to matching versions",
        )


def agent(request: web.Request) -> AgentState:
    check_protocol(request)
    return state(request).agents.authenticate(request.headers.get("Authorization"))


def int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed(f"query parameter {name} must be an integer", field=name) from None
    if not lo <= value <= hi:
        raise ValidationFailed(f"query parameter {name} must be between {lo} and {hi}", field=name)
    return value
