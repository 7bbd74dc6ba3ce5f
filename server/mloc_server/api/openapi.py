"""The OpenAPI 3.1 document of the coordinator's API, served at ``GET /api/v1/openapi.json``.

Schemas come from the pydantic models the handlers read and write (the wire protocol, the task spec,
and mloc_server/schemas.py: the models the services return), so a changed model changes the document.
Paths come from ``OPERATIONS`` below: one row per route, checked against the routes the app registers
(tests/test_openapi.py), and every answer is checked against the document by the API fuzz test.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from mloc_shared import mirror as mr
from mloc_shared import protocol as p
from mloc_shared.taskspec import TaskSpec
from mloc_shared.version import PROTOCOL_HEADER, PROTOCOL_VERSION, __version__
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from mloc_server import schemas as s
from mloc_server.api.queue import MAX_LISTED
from mloc_server.api.system import DrainRequest, TokenCreate
from mloc_server.api.tasks import MAX_BULK, MAX_COMPARED, STATES
from mloc_server.services.overview import AGENT_STATES

routes = web.RouteTableDef()
OPENAPI_PATH = "/api/v1/openapi.json"
REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # query | header
    schema: dict[str, Any]
    description: str = ""
    required: bool = False
    style: str | None = None  # "form": an array sent comma-separated (explode false)


@dataclass(frozen=True)
class Op:
    """One route: who may call it, what it reads, what it answers (besides errors its auth implies)."""

    method: str
    path: str  # as registered in aiohttp (``resource.canonical``)
    summary: str
    auth: str  # user | admin | agent | register | none
    ok: dict[int, Any]  # status -> a model, or {media type: schema}, or None for no body
    body: Any = None  # a model, or {media type: schema}
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()


def _int(lo: int, hi: int) -> dict[str, Any]:
    """An integer query parameter; empty (``?page=``) means its default."""
    return {"anyOf": [{"type": "integer", "minimum": lo, "maximum": hi}, {"type": "string", "maxLength": 0}]}


TEXT = {"type": "string"}
PROTOCOL = Param(PROTOCOL_HEADER, "header", {"type": "integer", "enum": [PROTOCOL_VERSION]},
                 "the agent's protocol version; another major is refused with 426", required=True)
SIGNED = (Param("exp", "query", {"type": "integer"}, "expiry (unix time) the URL was signed with", True),
          Param("sig", "query", {"type": "string"}, "the URL's HMAC signature", True))
WORKER_QUERY = (  # any of them: one page of the matching agents instead of all
    Param("state", "query", {"anyOf": [{"enum": list(AGENT_STATES)}, {"const": ""}]}, "empty: any state"),
    Param("q", "query", TEXT, "text in the name, hostname or labels"),
    Param("page", "query", _int(1, 1_000_000)), Param("page_size", "query", _int(1, 500)),
)
SUBMIT_EXAMPLE = {"taskType": "command", "name": "hello", "command": "echo hello"}
TASK_BODY = {
    "oneOf": [
        {"$ref": REF.format(model="TaskSpec")},
        {"type": "array", "items": {"$ref": REF.format(model="TaskSpec")}, "minItems": 1, "maxItems": MAX_BULK},
        {"type": "object", "required": ["tasks"], "not": {"required": ["taskType"]}, "properties": {"tasks": {
            "type": "array", "items": {"$ref": REF.format(model="TaskSpec")}, "minItems": 1, "maxItems": MAX_BULK}}},
    ],
}
PIPELINE_BODY = {
    "type": "object",
    "description": "a pipeline: {name?, tasks: {step: TaskSpec}}, where a step names earlier steps in "
                   "depends_on and model.source {type: step}; or a TaskSpec with sweep: {grid: {path: [values]} | "
                   "list: [{path: value}], max_parallel?} (docs/pipelines.md)",
    "properties": {"name": {"type": "string"}, "tasks": {"type": "object", "additionalProperties": {
        "$ref": REF.format(model="TaskSpec")}}, "sweep": {"type": "object"}},
}
SUBMIT_CONTENT = {
    "application/json": {"schema": TASK_BODY, "example": SUBMIT_EXAMPLE},
    "application/yaml": {"schema": TASK_BODY, "example": SUBMIT_EXAMPLE},
    "text/plain": {"schema": {"type": "string", "description": "YAML or JSON text: the Content-Type is not consulted"}},
}

OPERATIONS: tuple[Op, ...] = (
    # -- tasks (api/tasks.py) -----------------------------------------------------------------------
    Op("POST", "/api/v1/tasks", "Submit a task (YAML or JSON, whatever the Content-Type says) or a list of them",
       "user", {201: {"application/json": {"oneOf": [{"$ref": REF.format(model="TaskRecord")},
                                                      {"$ref": REF.format(model="BulkAccepted")}]}},
                200: s.TaskRecord},
       body=SUBMIT_CONTENT, errors=(403, 409, 429),
       params=(Param("Idempotency-Key", "header", {"type": "string", "minLength": 1, "maxLength": 200,
                                                   "pattern": "^[ -~]+$"},
                     "a retried submit with the same key and body returns the first task (200), not a new one"),)),
    Op("GET", "/api/v1/tasks", "List tasks, newest first, a page at a time", "user", {200: s.TaskPage},
       params=(Param("state", "query", {"type": "array", "minItems": 1,
                                           "items": {"type": "string", "enum": list(STATES)}},
                     "one state, or several comma-separated (state=queued,running)", style="form"),
               Param("user", "query", TEXT, "an admin may list another user's tasks"),
               Param("task_type", "query", TEXT), Param("type", "query", TEXT, "same as task_type"),
               Param("page", "query", _int(1, 10_000_000)), Param("page_size", "query", _int(1, 500))),
       errors=(422,)),
    Op("GET", "/api/v1/tasks/{task_id}", "One task: state, attempts, lease, progress, result", "user",
       {200: s.TaskRecord}, errors=(404,)),
    Op("DELETE", "/api/v1/tasks/{task_id}", "Cancel a task", "user", {200: s.TaskCancelled}, errors=(404, 409)),
    Op("POST", "/api/v1/tasks/{task_id}/cancel", "Cancel a task", "user", {200: s.TaskCancelled},
       errors=(404, 409)),
    Op("PATCH", "/api/v1/tasks/{task_id}", "Change a queued or running task's priority class or priority "
       "(a queued one moves in the queue at once)", "admin", {200: s.PriorityChanged}, body=s.PriorityChange,
       errors=(404, 409)),
    # -- pipelines and sweeps (api/pipelines.py) -------------------------------------------------------
    Op("POST", "/api/v1/pipelines", "Submit a pipeline file (tasks: step name -> task spec) or a task spec with a "
       "sweep block: all of its tasks in one transaction", "user", {201: s.PipelineRecord},
       body={"application/yaml": {"schema": PIPELINE_BODY}, "application/json": {"schema": PIPELINE_BODY},
             "text/plain": {"schema": {"type": "string", "description": "YAML or JSON text"}}},
       errors=(403, 429)),
    Op("GET", "/api/v1/pipelines", "List pipelines and sweeps, newest first", "user", {200: s.PipelinePage},
       params=(Param("page", "query", _int(1, 10_000_000)), Param("page_size", "query", _int(1, 500))),
       errors=(422,)),
    Op("GET", "/api/v1/pipelines/{pipeline_id}", "A pipeline or sweep: each step's state, values and final "
       "metrics, and the rolled-up state", "user", {200: s.PipelineRecord}, errors=(404,)),
    Op("POST", "/api/v1/pipelines/{pipeline_id}/cancel", "Cancel every unfinished step", "user",
       {200: s.PipelineCancelled}, errors=(404,)),
    Op("DELETE", "/api/v1/pipelines/{pipeline_id}", "Cancel every unfinished step", "user",
       {200: s.PipelineCancelled}, errors=(404,)),
    Op("GET", "/api/v1/queue", "The queue in the order picks take it, each task with why it is next or waits",
       "user", {200: s.QueueListing}, params=(Param("limit", "query", _int(1, MAX_LISTED)),), errors=(422,)),
    Op("GET", "/api/v1/tasks/{task_id}/logs",
       "A task's log chunks (cursor paging); follow=1 streams text, Accept: text/event-stream streams SSE", "user",
       {200: {"application/json": {"$ref": REF.format(model="LogPage")}, "text/plain": TEXT,
              "text/event-stream": TEXT}},
       params=(Param("attempt", "query", _int(1, 1_000_000)), Param("after_attempt", "query", _int(0, 1_000_000)),
               Param("after_seq", "query", _int(-1, 10**12)),
               Param("follow", "query", TEXT, "1/true/yes: keep the answer open until the task ends")),
       errors=(404, 422)),
    Op("GET", "/api/v1/tasks/{task_id}/progress", "A task's progress history (the loss curve): one point per "
       "distinct step, by attempt then step; since=T: only points received after T", "user",
       {200: s.ProgressHistory}, params=(Param("since", "query", {"type": "number"},
                                               "the t of the last point you have"),), errors=(404, 422)),
    Op("GET", "/api/v1/compare", "Tasks side by side: their final metrics and the hyperparameters that differ",
       "user", {200: s.Comparison}, params=(Param("ids", "query", {"type": "array", "minItems": 1,
                                                                   "maxItems": MAX_COMPARED, "items": TEXT},
                                                  "task ids, comma-separated", required=True, style="form"),),
       errors=(404, 422)),
    # -- artifacts (api/artifacts.py) -----------------------------------------------------------------
    Op("GET", "/api/v1/tasks/{task_id}/artifacts", "A task's artifacts and checkpoints", "user",
       {200: s.ArtifactList}, errors=(404,)),
    Op("GET", "/api/v1/tasks/{task_id}/artifacts/{name}", "Download an artifact: a redirect to a presigned URL",
       "user", {302: None}, errors=(404,)),
    Op("PUT", "/api/v1/blobs/{key}", "Upload to the embedded store through a presigned URL", "none",
       {201: s.BlobStored}, body={"application/octet-stream": {"type": "string", "format": "binary"}},
       params=SIGNED, errors=(403, 404, 413, 422)),
    Op("GET", "/api/v1/blobs/{key}", "Download from the embedded store through a presigned URL", "none",
       {200: {"*/*": {"type": "string", "format": "binary", "description": "typed by the file name"}}},
       params=SIGNED,
       errors=(403, 404, 422)),
    # -- the agent protocol (api/agents.py) -----------------------------------------------------------
    Op("POST", "/api/v1/agents/register", "Register a new agent with a join token (or re-register one with its "
       "credential or an admin token); refused attempts are rate-limited per address",
       "register", {201: p.RegisterResponse}, body=p.RegisterRequest, errors=(403, 409, 429)),
    Op("POST", "/api/v1/agents/poll", "Long-poll for leases; also reports running leases and completions",
       "agent", {200: p.PollResponse}, body=p.PollRequest),
    Op("POST", "/api/v1/agents/completions", "Several completions at once; each answers on its own", "agent",
       {200: p.CompletionResults}, body=p.CompletionBatch),
    Op("POST", "/api/v1/leases/{task_id}/heartbeat", "Renew a lease and report progress; answers cancellation",
       "agent", {200: p.HeartbeatResponse}, body=p.HeartbeatRequest, errors=(409,)),
    Op("POST", "/api/v1/leases/{task_id}/complete", "Finish a lease with its outcome", "agent",
       {200: s.CompletionState}, body=p.Completion, errors=(409,)),
    Op("POST", "/api/v1/leases/{task_id}/logs", "Append numbered log chunks (safe to resend)", "agent",
       {200: s.LogsAccepted}, body=p.LogBatch, errors=(409,)),
    Op("POST", "/api/v1/leases/{task_id}/uploads", "Plan an artifact upload: presigned URL(s)", "agent",
       {201: p.UploadPlan}, body=p.UploadRequest, errors=(409,)),
    Op("POST", "/api/v1/leases/{task_id}/uploads/{upload_id}/commit", "Record an uploaded artifact", "agent",
       {200: s.UploadCommitted}, body=p.UploadCommit, errors=(404, 409)),
    Op("POST", "/api/v1/leases/{task_id}/sources", "Presigned downloads of the finished tasks this lease reads",
       "agent", {200: p.SourcesResponse}, body=p.SourcesRequest, errors=(409, 422)),
    # -- fleet, usage, tokens, health (api/system.py) -------------------------------------------------
    Op("GET", "/health", "Liveness and readiness", "none", {200: s.Health, 503: s.Health}),
    Op("GET", "/api/v1/workers", "The agents with their GPUs, state and leases", "user", {200: s.WorkerList},
       params=WORKER_QUERY, errors=(422,)),
    Op("GET", "/api/v1/agents", "The agents (same as /api/v1/workers)", "user", {200: s.WorkerList},
       params=WORKER_QUERY, errors=(422,)),
    *(Op("POST", f"/api/v1/agents/{{name}}/{verb}", summary, "admin", {200: s.Worker}, errors=(404, 422),
         body=DrainRequest)
      for verb, summary in (("drain", "Drain an agent: it takes no new task; with deadline_s its running tasks "
                                      "checkpoint now and resume elsewhere"), ("cordon", "Same as drain"))),
    *(Op("POST", f"/api/v1/agents/{{name}}/{verb}", summary, "admin", {200: s.Worker}, errors=(404,))
      for verb, summary in (("undrain", "Let a drained agent take tasks again"), ("uncordon", "Same as undrain"))),
    Op("GET", "/api/v1/stats", "Usage: tasks by state and type, GPU-hours, per user and date range", "user",
       {200: s.Stats}, errors=(422,),
       params=(Param("user", "query", TEXT, "admins only; others always see their own"),
               Param("start_date", "query", TEXT, "ISO date or date-time, e.g. 2024-01-01"),
               Param("end_date", "query", TEXT, "ISO date or date-time (exclusive)"))),
    Op("POST", "/api/v1/tokens", "Create a user API token or an agent join token", "admin", {201: s.TokenCreated},
       body=TokenCreate),
    Op("GET", "/api/v1/tokens", "List tokens (never their secrets)", "admin", {200: s.TokenList}),
    Op("DELETE", "/api/v1/tokens/{token_id}", "Revoke a token", "admin", {200: s.TokenRevoked}, errors=(404,)),
    Op("GET", OPENAPI_PATH, "This document", "none", {200: {"application/json": {"type": "object"}}}),
    # -- the model and dataset mirror (api/mirror.py, docs/models.md) ---------------------------------
    Op("GET", "/api/v1/mirror", "What the mirror holds: kind, hub id, revision, files, size, when, by whom",
       "user", {200: mr.MirrorListing},
       params=(Param("kind", "query", {"type": "string", "enum": ["model", "dataset"]}),), errors=(422,)),
    Op("POST", "/api/v1/mirror/pushes", "Plan a push of a snapshot's files: presigned PUT URL(s) per file",
       "user", {201: mr.PushPlan}, body=mr.PushRequest, errors=(403, 413, 422)),
    Op("POST", "/api/v1/mirror/pushes/{push_id}/commit", "Check the pushed files arrived and list the snapshot",
       "user", {200: mr.MirrorEntry}, body=mr.PushCommit, errors=(403, 404, 422)),
    Op("POST", "/api/v1/leases/{task_id}/mirror", "Presigned downloads of the mirrored hub ids this lease reads",
       "agent", {200: mr.MirrorResponse}, body=mr.MirrorRequest, errors=(404, 409)),
    # routes of api/secrets.py, api/pages.py and api/metrics.py
    Op("POST", "/api/v1/leases/{task_id}/secrets", "The values of the secrets a lease's spec names", "agent",
       {200: p.SecretsResponse}, body=p.SecretsRequest, errors=(409,)),
    Op("GET", "/api/v1/overview", "Counts for the status page: the fleet, tasks by state", "user",
       {200: s.Overview}),
    Op("GET", "/metrics", "Prometheus metrics (text exposition format)", "user", {200: {"text/plain": TEXT}}),
    Op("GET", "/", "The status page", "none", {200: {"text/html": TEXT}}),
    Op("GET", "/tasks/{task_id}", "The status page of one task", "none", {200: {"text/html": TEXT}}),
    Op("GET", "/compare", "The status page comparing tasks (?ids=a,b,c): curves and final metrics", "none",
       {200: {"text/html": TEXT}}),
    Op("GET", "/pipelines/{pipeline_id}", "The status page of a pipeline or sweep: its steps, their curves and "
       "final metrics", "none", {200: {"text/html": TEXT}}),
)

AUTH_ERRORS = {"user": (401,), "admin": (401, 403), "agent": (401, 426), "register": (401, 426), "none": ()}
SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "user": [{"userToken": []}], "admin": [{"userToken": []}], "agent": [{"agentCredential": []}],
    "register": [{"joinToken": []}, {"agentCredential": []}, {"userToken": []}], "none": [],
}
ERROR_TEXT = {400: "the body cannot be read (not JSON/YAML, a one-line YAML from curl -d)",
              401: "no valid token", 403: "not allowed for this token (or a bad URL signature)",
              404: "no such object", 409: "a state conflict (finished task, reused key, lost lease)",
              413: "the body is over the size limit", 422: "a field, parameter or header is wrong: `field` names it",
              426: "the agent's protocol version does not match",
              429: "too many refused attempts from this address, or a quota (max_queued) is full: wait the "
                   "Retry-After seconds",
              503: "the database or object store failed"}
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    s.ErrorEnvelope, s.TaskRecord, s.BulkAccepted, s.TaskPage, s.TaskCancelled, s.LogPage, s.ArtifactList,
    s.ProgressHistory, s.Comparison,
    s.BlobStored, s.Health, s.WorkerList, s.Worker, s.Stats, s.TokenCreated, s.TokenList, s.TokenRevoked,
    s.CompletionState, s.LogsAccepted, s.UploadCommitted, p.RegisterResponse, p.PollResponse, p.CompletionResults,
    p.HeartbeatResponse, p.UploadPlan, p.SourcesResponse, p.SecretsResponse, s.Overview, s.QueueListing,
    s.PriorityChanged, mr.MirrorListing, mr.PushPlan, mr.MirrorEntry, mr.MirrorResponse,
    s.PriorityChanged, s.PipelineRecord, s.PipelinePage, s.PipelineCancelled,
)


def route_keys(app: web.Application) -> frozenset[tuple[str, str]]:
    """(method, path) of every route the app serves, except the HEADs aiohttp adds and static files."""
    return frozenset(
        (r.method, r.resource.canonical) for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None and not isinstance(r.resource, web.StaticResource)
    )


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _content(body: Any) -> dict[str, Any]:
    if isinstance(body, type) and issubclass(body, BaseModel):
        return {"application/json": {"schema": _ref(body)}}
    return {media: spec if "schema" in spec else {"schema": spec} for media, spec in body.items()}


def _operation(op: Op) -> dict[str, Any]:
    path_params = [part[1:-1] for part in op.path.split("/") if part.startswith("{")]
    params = [{"name": n, "in": "path", "required": True, "schema": TEXT} for n in path_params]
    params += [{"name": x.name, "in": x.where, "required": x.required, "schema": x.schema,
                **({"description": x.description} if x.description else {}),
                **({"style": x.style, "explode": False} if x.style else {})} for x in op.params]
    if op.auth in ("agent", "register"):
        params.append({"name": PROTOCOL.name, "in": "header", "required": True, "schema": PROTOCOL.schema,
                       "description": PROTOCOL.description})
    responses: dict[str, Any] = {}
    for status, body in op.ok.items():
        answer: dict[str, Any] = {"description": "success" if status < 300 else "see the body"}
        if status == 302:
            answer = {"description": "redirect to a presigned download URL",
                      "headers": {"Location": {"schema": TEXT, "required": True}}}
        elif body is not None:
            answer["content"] = _content(body)
        responses[str(status)] = answer
    implied = AUTH_ERRORS[op.auth] + ((400, 413, 422) if op.body is not None else ()) + (503,)
    for status in sorted(set(implied + op.errors) - set(op.ok)):
        responses[str(status)] = {"description": ERROR_TEXT[status], "content": _content(s.ErrorEnvelope)}
        if status == 429:
            responses[str(status)]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "required": True}}
    out: dict[str, Any] = {
        "operationId": _operation_id(op), "summary": op.summary, "tags": [_tag(op)], "parameters": params,
        "responses": responses, "security": SECURITY[op.auth],
    }
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": _content(op.body)}
    return out


def _operation_id(op: Op) -> str:
    words = [w.strip("{}").replace(".", "_") for w in op.path.split("/") if w]
    return "_".join([op.method.lower(), *words]) if words else f"{op.method.lower()}_root"


def _tag(op: Op) -> str:
    if op.auth in ("agent", "register"):
        return "agent protocol"
    if "/artifacts" in op.path or "/blobs/" in op.path:
        return "artifacts"
    if op.path.startswith("/api/v1/mirror"):
        return "mirror"
    if op.path.startswith("/api/v1/pipelines"):
        return "pipelines"
    return "tasks" if op.path.startswith("/api/v1/tasks") else "system"


def _components() -> dict[str, Any]:
    inputs = {op.body for op in OPERATIONS if isinstance(op.body, type)} | {TaskSpec}
    pairs = [(m, "validation") for m in sorted(inputs, key=lambda m: m.__name__)]
    pairs += [(m, "serialization") for m in RESPONSE_MODELS if m not in inputs]
    _, defs = models_json_schema(pairs, ref_template=REF)
    return defs.get("$defs", {})


def document() -> dict[str, Any]:
    """The whole document (tests/test_openapi.py checks its paths are exactly the app's routes)."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "MLOC coordinator API", "version": __version__, "description": DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": _components(),
            "securitySchemes": {
                "userToken": {"type": "http", "scheme": "bearer", "description": (
                    "a user API token (mloc token create). Callers on the coordinator's own host act as admin "
                    "without one only where loopback_admin is turned on (it is off by default)")},
                "agentCredential": {"type": "http", "scheme": "bearer",
                                    "description": "the credential an agent received from register"},
                "joinToken": {"type": "apiKey", "in": "header", "name": "X-MLOC-Join-Token",
                              "description": "the fleet's join token (MLOC_JOIN_TOKEN)"},
            },
        },
        "tags": [{"name": "tasks"}, {"name": "pipelines"}, {"name": "artifacts"}, {"name": "mirror"},
                 {"name": "agent protocol"}, {"name": "system"}],
    }


DESCRIPTION = f"""MLOC schedules LLM work (fine-tuning, RLHF, inference, RAG, agents) on GPU boxes that pull it.

Every error answers as JSON `{{"error": {{"code", "message", "field", "line", "hint"}}}}` with the status
that fits: 400 unreadable body, 401/403 auth, 404, 409 state conflict, 413 body over the limit,
422 a wrong field (`field` names it; `line` points into submitted YAML), 426 agent protocol mismatch,
503 the database or object store failed. Agent calls send `{PROTOCOL_HEADER}: {PROTOCOL_VERSION}`."""


@functools.cache
def _document_text() -> str:
    return json.dumps(document())


@routes.get(OPENAPI_PATH)
async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=_document_text(), content_type="application/json")
