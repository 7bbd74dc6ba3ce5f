"""schemathesis against a real coordinator: every operation of the served OpenAPI document, with valid
and invalid inputs, must answer without a 5xx, with a documented status, content type and body shape.

The user API runs with the admin token (loopback admin is off, so a missing token really is a 401),
the agent protocol with the credential of a peer registered through the API (no agent process: nothing
the fuzzer submits ever runs). Random ids only reach 404/409, so most valid cases are bound to
real objects: a finished task with logs and an artifact, a live lease (its epoch too), a signed blob URL.
Bounded and seeded (derandomized): the same cases every run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mloc_server.api.openapi import OPERATIONS
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.harness import Coordinator
from tests.protocol_peer import ProtocolPeer

MAX_EXAMPLES = 50  # cases per operation, valid and invalid mixed (the file: ~40 s idle, ~90 s loaded)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection, ignored_auth]
# what a refused request may answer beyond schemathesis's defaults: 413 (limits), 426 (protocol header)
REJECTED = ["400", "401", "403", "404", "405", "409", "413", "415", "422", "426"]
PEER = "fuzz-peer-7f3a"


@dataclass
class Real:
    """Objects that exist on the fuzzed coordinator, for binding valid cases to them."""

    peer: ProtocolPeer
    task_id: str
    artifact: str
    blob_key: str
    blob_get: dict[str, str]
    blob_put: dict[str, str]


def _signed(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return parts.path.removeprefix("/api/v1/blobs/"), {k: v[0] for k, v in parse_qs(parts.query).items()}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Coordinator, Real]]:
    coord = Coordinator(Path(tmp_path_factory.mktemp("fuzz")), poll_hold_s=0.2, heartbeat_s=0.5, lease_ttl_s=4.0,
                        extra_env={"MLOC_LOOPBACK_ADMIN": "false", "MLOC_MAX_BODY_MB": "1",
                                   # the fuzzer's bad join tokens would soon answer 429 (tests/security has that)
                                   "MLOC_REGISTRATION_REFUSALS_PER_MIN": "1000000"}).start()
    peer = ProtocolPeer(coord, PEER)
    try:
        lease = peer.claim()
        peer.log(lease, "hello\n", "done\n")
        plan = peer.upload(lease, "out/result.txt", b"result\n")
        peer.finish(lease)
        key, put_query = _signed(plan.url or "")
        location = coord.http.get(f"/api/v1/tasks/{lease.task_id}/artifacts/out/result.txt").headers["location"]
        _, get_query = _signed(location)
        yield coord, Real(peer, lease.task_id, "out/result.txt", key, get_query, put_query)
    finally:
        peer.close()
        coord.stop()
    # no error of ours, not even one that never became a 500; aiohttp logs tracebacks for malformed HTTP only
    log = coord.proc.output()
    assert "unhandled error" not in log and log.count("Traceback") == log.count("Error handling request"), log[-4000:]


@pytest.fixture(scope="module")
def api_schema(fuzzed: tuple[Coordinator, Real]) -> Any:
    coord, real = fuzzed
    config = schemathesis.Config.from_dict({
        "base-url": coord.url,
        "request-timeout": 20,
        "auth": {"openapi": {"userToken": {"bearer": coord.admin_token},
                             "agentCredential": {"bearer": real.peer.credential},
                             "joinToken": {"api_key": coord.join_token}}},
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
        "checks": {"negative_data_rejection": {"expected-statuses": REJECTED}},
    })
    return schemathesis.openapi.from_url(f"{coord.url}/api/v1/openapi.json", config=config)


def _strategy(operation: Any) -> st.SearchStrategy[schemathesis.Case]:
    """Valid and invalid cases for one operation (an operation without inputs has no invalid ones)."""
    modes = [operation.as_strategy(GenerationMode.POSITIVE)]
    with contextlib.suppress(Exception):  # schemathesis found nothing in it that can be made invalid
        modes.append(operation.as_strategy(GenerationMode.NEGATIVE))
    return st.one_of(modes)


def _bind(case: schemathesis.Case, real: Real) -> None:
    """Point a valid case at real objects, so it gets past the lookups to the code behind them."""
    params, path = case.path_parameters, case.operation.path
    if path.startswith("/api/v1/leases/"):
        lease = real.peer.alive()
        params["task_id"] = lease.task_id
        if isinstance(case.body, dict) and "epoch" in case.body:
            case.body["epoch"] = lease.epoch
    elif "task_id" in params:
        params["task_id"] = real.task_id
        if "name" in params:
            params["name"] = real.artifact
    elif "key" in params:
        params["key"] = real.blob_key
        case.query = dict(real.blob_get if case.method == "GET" else real.blob_put)
    elif "name" in params:
        params["name"] = PEER
    elif isinstance(case.body, dict) and isinstance(case.body.get("completions"), list) and case.body["completions"]:
        lease = real.peer.alive()
        case.body["completions"][0].update(task_id=lease.task_id, epoch=lease.epoch)


@pytest.mark.parametrize(("method", "path"), [(op.method, op.path) for op in OPERATIONS])
def test_every_operation_conforms_and_never_answers_5xx(
    api_schema: Any, fuzzed: tuple[Coordinator, Real], method: str, path: str
) -> None:
    operation = api_schema[path][method]
    real = fuzzed[1]

    @given(case=_strategy(operation), bind=st.sampled_from([True, True, True, False]))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case, bind: bool) -> None:
        if bind and case.meta is not None and case.meta.generation.mode is GenerationMode.POSITIVE:
            _bind(case, real)
        case.call_and_validate(checks=CHECKS)

    fuzz()


def test_fuzzed_coordinator_is_intact(fuzzed: tuple[Coordinator, Real]) -> None:
    """After the fuzz: the peer's credential still works (else it fuzzed 401s only), and the coordinator is ok."""
    coord, real = fuzzed
    assert real.peer.alive().task_id
    health = coord.http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    task = coord.task(real.task_id)
    assert task["state"] == "succeeded" and task["result"] == {"ok": True}
