"""Errors become JSON ``{"error": {...}}`` with the right status, in one place. Never a stack trace."""

from __future__ import annotations

import logging

from aiohttp import web
from mloc_shared.errors import MlocError, TooManyRequests

log = logging.getLogger(__name__)


@web.middleware
async def errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except MlocError as exc:
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, TooManyRequests) else None
        return web.json_response(exc.to_body(), status=exc.status, headers=headers)
    except web.HTTPRequestEntityTooLarge:
        limit = request.client_max_size
        body = {"error": {"code": "payload_too_large",
                          "message": f"the body is larger than the limit of {limit} bytes ({limit / (1 << 20):g} MiB)",
                          "hint": "the coordinator's max_body_mb setting (MLOC_MAX_BODY_MB) sets the limit"}}
        return web.json_response(body, status=413)
    except web.HTTPRedirection:
        raise
    except web.HTTPException as exc:
        if exc.empty_body:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        body = {"error": {"code": code, "message": f"{exc.reason}: {request.method} {request.path}"}}
        return web.json_response(body, status=exc.status, headers={
            k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    except ConnectionResetError:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        body = {"error": {"code": "internal", "message": "internal error; the coordinator's log has details"}}
        return web.json_response(body, status=500)
