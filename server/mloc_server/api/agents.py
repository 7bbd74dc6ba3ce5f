"""The agent protocol: register, long-poll, and the lease-scoped calls (heartbeat, logs, complete,
uploads). Every call but register carries the agent's credential and the protocol header."""

from __future__ import annotations

from aiohttp import web
from mloc_shared.errors import MlocError, ProtocolMismatch
from mloc_shared.protocol import (
    Completion,
    CompletionBatch,
    CompletionResult,
    CompletionResults,
    HeartbeatRequest,
    LogBatch,
    PollRequest,
    RegisterRequest,
    SourcesRequest,
    UploadCommit,
    UploadRequest,
)
from mloc_shared.version import PROTOCOL_VERSION, protocol_compatible

from mloc_server.api.common import agent, check_protocol, ok, read_model, state
from mloc_server.services.sources import lease_sources

routes = web.RouteTableDef()


@routes.post("/api/v1/agents/register")
async def register(request: web.Request) -> web.Response:
    check_protocol(request)
    st = state(request)
    req = await read_model(request, RegisterRequest)
    if not protocol_compatible(req.protocol_version):
        raise ProtocolMismatch(f"agent protocol {req.protocol_version} != coordinator {PROTOCOL_VERSION}")
    admitted = await st.registration.admit(req, authorization=request.headers.get("Authorization"),
                                           join_token=request.headers.get("X-MLOC-Join-Token"),
                                           address=request.remote)
    return ok(admitted, status=201)


@routes.post("/api/v1/agents/poll")
async def poll(request: web.Request) -> web.Response:
    me = agent(request)
    req = await read_model(request, PollRequest)
    me.address = request.remote
    return ok(await state(request).polling.poll(
        me, req, peer_alive=lambda: request.transport is not None and not request.transport.is_closing()))


@routes.post("/api/v1/leases/{task_id}/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    me = agent(request)
    req = await read_model(request, HeartbeatRequest)
    return ok(state(request).leasing.heartbeat(me, request.match_info["task_id"], req))


@routes.post("/api/v1/leases/{task_id}/complete")
async def complete(request: web.Request) -> web.Response:
    me = agent(request)
    req = await read_model(request, Completion)
    final = await state(request).leasing.complete(me, request.match_info["task_id"], req)
    return ok({"state": final})


@routes.post("/api/v1/agents/completions")
async def complete_many(request: web.Request) -> web.Response:
    """Several completions at once; each answers on its own (a lost lease does not fail the rest)."""
    me = agent(request)
    batch = await read_model(request, CompletionBatch)
    outcomes = await state(request).leasing.complete_many(me, [(c.task_id, c) for c in batch.completions])
    results = []
    for c, outcome in zip(batch.completions, outcomes, strict=True):
        if isinstance(outcome, MlocError):
            if outcome.status >= 500:
                raise outcome
            results.append(CompletionResult(task_id=c.task_id, error=outcome.message, code=outcome.code))
        else:
            results.append(CompletionResult(task_id=c.task_id, state=outcome))
    return ok(CompletionResults(results=results))


@routes.post("/api/v1/leases/{task_id}/logs")
async def logs(request: web.Request) -> web.Response:
    me = agent(request)
    batch = await read_model(request, LogBatch)
    await state(request).logs.append(me, request.match_info["task_id"], batch)
    return ok({"accepted": len(batch.chunks)})


@routes.post("/api/v1/leases/{task_id}/uploads")
async def plan_upload(request: web.Request) -> web.Response:
    me = agent(request)
    req = await read_model(request, UploadRequest)
    return ok(await state(request).artifacts.plan(me, request.match_info["task_id"], req), status=201)


@routes.post("/api/v1/leases/{task_id}/uploads/{upload_id}/commit")
async def commit_upload(request: web.Request) -> web.Response:
    me = agent(request)
    req = await read_model(request, UploadCommit)
    st = state(request)
    return ok(await st.artifacts.commit(me, request.match_info["task_id"], request.match_info["upload_id"], req))


@routes.post("/api/v1/leases/{task_id}/sources")
async def sources(request: web.Request) -> web.Response:
    """Presigned downloads of the finished tasks' outputs this lease reads (model.source type task)."""
    me = agent(request)
    req = await read_model(request, SourcesRequest)
    return ok(await lease_sources(state(request).artifacts, me, request.match_info["task_id"], req))
