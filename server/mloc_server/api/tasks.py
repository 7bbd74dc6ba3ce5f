"""User API for tasks: submit, list, get, cancel, logs."""

from __future__ import annotations

import asyncio
import json
import logging
import math

from aiohttp import web
from mloc_shared.comparison import MAX_TASKS as MAX_COMPARED
from mloc_shared.errors import BadRequest, ValidationFailed
from mloc_shared.pipelines import is_multi
from mloc_shared.protocol import FINAL_STATES
from mloc_shared.spec_parsing import parse_document, validate_spec, with_line

from mloc_server.api.common import int_query, ok, state, user

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
STATES = ("blocked", "queued", "running", *sorted(FINAL_STATES))
MAX_BULK = 5000
INLINE_PARSE = 8 << 10  # bytes


@routes.post("/api/v1/tasks")
async def submit(request: web.Request) -> web.Response:
    """Submit one task (YAML or JSON, whatever the Content-Type says) or a list of tasks."""
    principal = user(request)
    body = await request.read()
    # a task file parses in microseconds; a large YAML body can take seconds: keep those off the event loop
    data, node = parse_document(body) if len(body) <= INLINE_PARSE else await asyncio.to_thread(parse_document, body)
    st = state(request)
    if is_multi(data):
        raise ValidationFailed("this is a pipeline file or a sweep: it makes several tasks",
                               field="sweep" if "sweep" in data else "tasks",
                               hint="POST it to /api/v1/pipelines (mloc submit FILE does)")
    if isinstance(data, dict) and isinstance(data.get("tasks"), list) and "taskType" not in data:
        data = data["tasks"]
    if isinstance(data, list):
        if not data or len(data) > MAX_BULK:
            raise BadRequest(f"a bulk submit holds 1..{MAX_BULK} tasks")
        specs = []
        for i, item in enumerate(data):
            try:
                specs.append(validate_spec(item))
            except ValidationFailed as exc:
                exc.field = f"tasks[{i}].{exc.field}" if exc.field else f"tasks[{i}]"
                exc.message = f"tasks[{i}]: {exc.message}"
                raise
        return ok({"tasks": await st.tasks.submit_many(specs, principal)}, status=201)
    spec = validate_spec(data, node)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (1 <= len(key) <= 200 and key.isascii() and key.isprintable()):
        raise ValidationFailed("Idempotency-Key must be 1..200 printable ASCII characters", field="Idempotency-Key")
    try:
        record, created = await st.tasks.submit(spec, principal, key)
    except ValidationFailed as exc:  # found against the stored tasks (depends_on): point at its line too
        raise with_line(exc, node) from None
    return ok(record, status=201 if created else 200)


@routes.get("/api/v1/tasks")
async def list_tasks(request: web.Request) -> web.Response:
    principal = user(request)
    raw_states = request.query.get("state")
    states = tuple(raw_states.split(",")) if raw_states is not None else ()  # state=a,b: either; "" is refused
    if any(s not in STATES for s in states):
        raise ValidationFailed(f"state must be one of {', '.join(STATES)} (or several, comma-separated)",
                               field="state")
    result = await state(request).tasks.list(
        principal, state=states or None, user=request.query.get("user") or None,
        task_type=request.query.get("task_type") or request.query.get("type") or None,
        page=int_query(request, "page", 1, 1, 10_000_000), page_size=int_query(request, "page_size", 20, 1, 500),
    )
    return ok(result)


@routes.get("/api/v1/tasks/{task_id}")
async def get_task(request: web.Request) -> web.Response:
    return ok(await state(request).tasks.get(request.match_info["task_id"], user(request)))


@routes.get("/api/v1/tasks/{task_id}/progress")
async def task_progress(request: web.Request) -> web.Response:
    """The task's progress history (the loss curve); ``since=T``: only points received after T."""
    principal = user(request)  # who asks comes first: a request without a token is a 401, whatever its query
    raw = request.query.get("since")
    since = None
    if raw:
        try:
            since = float(raw)
        except ValueError:
            since = math.nan
        if not math.isfinite(since):
            raise ValidationFailed("query parameter since must be a number (the t of the last point you have)",
                                   field="since")
    return ok(await state(request).tasks.progress(request.match_info["task_id"], principal, since))


@routes.get("/api/v1/compare")
async def compare(request: web.Request) -> web.Response:
    """Final metrics and differing hyperparameters of the tasks named by ``ids`` (comma-separated)."""
    principal = user(request)
    ids = [i.strip() for i in request.query.get("ids", "").split(",") if i.strip()]
    if not 1 <= len(ids) <= MAX_COMPARED:
        raise ValidationFailed(f"ids must name 1..{MAX_COMPARED} task ids, comma-separated (ids=ID,ID)",
                               field="ids")
    return ok(await state(request).tasks.compare(list(dict.fromkeys(ids)), principal))


@routes.post("/api/v1/tasks/{task_id}/cancel")
@routes.delete("/api/v1/tasks/{task_id}")
async def cancel_task(request: web.Request) -> web.Response:
    return ok(await state(request).tasks.cancel(request.match_info["task_id"], user(request)))


@routes.get("/api/v1/tasks/{task_id}/logs")
async def task_logs(request: web.Request) -> web.StreamResponse:
    """Logs as JSON (cursor paging), or followed live: ``?follow=1`` streams text, SSE on request."""
    principal = user(request)
    st = state(request)
    task_id = request.match_info["task_id"]
    await st.tasks.get(task_id, principal)  # 404 unless visible
    attempt = request.query.get("attempt")
    attempt_no = int_query(request, "attempt", 0, 1, 1_000_000) if attempt else None
    cursor = (int_query(request, "after_attempt", 0, 0, 1_000_000), int_query(request, "after_seq", -1, -1, 10**12))
    follow = request.query.get("follow", "").lower() in ("1", "true", "yes")
    sse = "text/event-stream" in request.headers.get("Accept", "")
    if not follow and not sse:
        return ok(await st.logs.page(task_id, attempt_no, cursor))
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream" if sse else "text/plain; charset=utf-8",
        "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
    })
    await resp.prepare(request)
    try:
        async for chunks in st.logs.follow(task_id, attempt_no, cursor):
            if sse:
                events = (f"id: {c.attempt}.{c.seq}\ndata: {json.dumps(c.model_dump())}\n\n" for c in chunks)
                payload = "".join(events) or ": keepalive\n\n"
            else:
                payload = "".join(c.data for c in chunks)
            if payload:
                await resp.write(payload.encode())
        if sse:
            await resp.write(b"event: end\ndata: {}\n\n")
        await resp.write_eof()
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError too: the follower hung up, which is normal
        log.debug("log follower of task %s went away", task_id)
    return resp
