"""Security through real coordinator processes: tokens, roles, per-agent credentials, join tokens,
hashed storage, the `mloc token` commands and request size limits."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from mloc_server.app import create_app
from mloc_server.settings import CoordinatorSettings
from mloc_shared.settings import ClientSettings

from tests.harness import MLOC, Coordinator, base_env
from tests.raw_agent import PROTO, RawAgent, register_body

NO_LOOPBACK = {"MLOC_LOOPBACK_ADMIN": "false"}
# the only routes that answer without a token, and why
PUBLIC = {
    ("GET", "/health"): "liveness for load balancers and systemd",
    ("GET", "/"): "the status page's shell: HTML/JS, no data (its data comes from the API)",
    ("GET", "/tasks/{task_id}"): "the task page's shell, likewise",
    ("GET", "/compare"): "the compare page's shell, likewise",
    ("GET", "/pipelines/{pipeline_id}"): "the pipeline page's shell, likewise",
    ("GET", "/api/v1/openapi.json"): "the API's public description, no data",
}
SIGNED = {"/api/v1/blobs/{key}": "presigned artifact URLs: the signature is the credential (403 without one)"}


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Coordinator]:
    """A coordinator that gives loopback callers nothing (MLOC_LOOPBACK_ADMIN=false, the default, said
    explicitly: these tests are about tokens alone)."""
    coord = Coordinator(tmp_path, extra_env=NO_LOOPBACK).start()
    try:
        yield coord
    finally:
        coord.stop()


def token_for(coord: Coordinator, user: str, role: str = "user") -> str:
    resp = coord.http.post("/api/v1/tokens", json={"user": user, "role": role})
    assert resp.status_code == 201, resp.text
    return resp.json()["token"]


def as_user(coord: Coordinator, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=coord.url, timeout=30, headers=headers)


def every_route() -> list[tuple[str, str]]:
    app = create_app(CoordinatorSettings(data_dir=Path("/nonexistent")))  # built, never started
    return sorted({(r.method, r.resource.canonical) for r in app.router.routes()
                   if r.method != "HEAD" and not isinstance(r.resource, web.StaticResource)})


def test_without_a_token_everything_but_health_is_401(locked: Coordinator) -> None:
    routes = every_route()
    assert len(routes) > 25  # the enumeration found the API, not just a few routes
    anon = httpx.Client(base_url=locked.url, timeout=30, headers=PROTO)
    checked = 0
    for method, path in routes:
        url = re.sub(r"\{(\w+)(:[^}]*)?\}", "x", path)
        body = register_body("nobody") if path == "/api/v1/agents/register" else "{}"
        resp = anon.request(method, url, content=body, headers={"Content-Type": "application/json"})
        if (method, path) in PUBLIC:
            assert resp.status_code == 200, (method, path, resp.text[:200])
        elif path in SIGNED:
            assert resp.status_code == 403, (method, path, resp.text[:200])
        else:
            assert resp.status_code == 401, (method, path, resp.status_code, resp.text[:200])
            assert resp.json()["error"]["code"] == "unauthorized"
            checked += 1
    assert checked >= 20
    assert anon.get("/metrics").status_code == 401
    assert anon.get("/api/v1/tasks", headers={"Authorization": "Bearer mloc_user_forged"}).status_code == 401
    anon.close()


def test_users_see_and_cancel_only_their_own_tasks(locked: Coordinator) -> None:
    alice, bob = as_user(locked, token_for(locked, "alice")), as_user(locked, token_for(locked, "bob"))
    spec = {"taskType": "command", "command": "true", "resources": {"gpus": 1}}  # no agent: stays queued
    mine = [alice.post("/api/v1/tasks", json=spec).json()["id"] for _ in range(2)]
    bobs = bob.post("/api/v1/tasks", json=spec).json()["id"]

    for path in (f"/api/v1/tasks/{mine[0]}", f"/api/v1/tasks/{mine[0]}/logs", f"/api/v1/tasks/{mine[0]}/artifacts"):
        assert bob.get(path).status_code == 404, path  # not even told it exists
    assert bob.post(f"/api/v1/tasks/{mine[0]}/cancel").status_code == 404
    assert bob.delete(f"/api/v1/tasks/{mine[0]}").status_code == 404
    assert alice.get(f"/api/v1/tasks/{mine[0]}").json()["state"] == "queued"
    listed = bob.get("/api/v1/tasks", params={"user": "alice"}).json()
    assert [t["id"] for t in listed["tasks"]] == [bobs] and listed["total"] == 1
    assert {t["id"] for t in alice.get("/api/v1/tasks").json()["tasks"]} == set(mine)
    assert bob.get("/api/v1/stats").json()["total_tasks"] == 1
    assert bob.get("/api/v1/overview").json()["tasks"] == {"queued": 1}
    assert bob.post("/api/v1/tasks", json={**spec, "user": "alice"}).status_code == 403
    assert bob.post("/api/v1/tokens", json={"user": "mallory", "role": "admin"}).status_code == 403
    assert bob.post("/api/v1/agents/x/drain").status_code == 403

    assert alice.post(f"/api/v1/tasks/{mine[0]}/cancel").json()["state"] == "cancelled"
    everything = locked.http.get("/api/v1/tasks").json()  # the admin sees every user's tasks
    assert {t["id"] for t in everything["tasks"]} == {*mine, bobs}
    assert locked.http.post(f"/api/v1/tasks/{bobs}/cancel").json()["state"] == "cancelled"
    alice.close()
    bob.close()


def test_an_agent_cannot_touch_another_agents_lease(locked: Coordinator) -> None:
    a = RawAgent(locked.url, "agent-a", locked.join_token)
    b = RawAgent(locked.url, "agent-b", locked.join_token)
    task = locked.submit({"taskType": "command", "command": "true", "resources": {"gpus": 1},
                          "secrets": {"HF_TOKEN": "hf_only_for_agent_a"}})
    lease = a.poll()["leases"][0]
    assert lease["task_id"] == task["id"]
    tid, epoch = task["id"], lease["epoch"]
    for what, body in (("heartbeat", {"epoch": epoch}), ("logs", {"epoch": epoch, "chunks": []}),
                       ("complete", {"epoch": epoch, "outcome": "succeeded", "exit_code": 0}),
                       ("secrets", {"epoch": epoch}), ("uploads", {"epoch": epoch, "name": "x", "size": 1})):
        resp = b.call(tid, what, body)
        assert resp.status_code == 409, (what, resp.text)
        assert "hf_only" not in resp.text
    assert a.call(tid, "heartbeat", {"epoch": epoch + 1}).status_code == 409  # a stale or forged epoch too
    assert a.call(tid, "heartbeat", {"epoch": epoch}).status_code == 200
    assert a.call(tid, "secrets", {"epoch": epoch}).json()["secrets"] == {"HF_TOKEN": "hf_only_for_agent_a"}
    forged = httpx.post(f"{locked.url}/api/v1/leases/{tid}/heartbeat", json={"epoch": epoch},
                        headers={**PROTO, "Authorization": "Bearer mloc_agent_forged"})
    assert forged.status_code == 401
    assert a.call(tid, "complete", {"epoch": epoch, "outcome": "succeeded", "exit_code": 0}).status_code == 200
    a.close()
    b.close()


def test_revoked_expired_and_used_up_join_tokens_cannot_register(locked: Coordinator) -> None:
    def join(**kw) -> tuple[str, str]:
        body = locked.http.post("/api/v1/tokens", json={"kind": "join", **kw}).json()
        return body["id"], body["token"]

    http = httpx.Client(base_url=locked.url, timeout=30, headers=PROTO)

    def register(name: str, token: str) -> int:
        return http.post("/api/v1/agents/register", content=register_body(name),
                         headers={"X-MLOC-Join-Token": token}).status_code

    revoked_id, revoked = join()
    assert register("r1", revoked) == 201
    assert locked.http.delete(f"/api/v1/tokens/{revoked_id}").status_code == 200
    assert register("r2", revoked) == 401
    _, once = join(max_uses=1)
    assert register("o1", once) == 201
    assert register("o2", once) == 401
    _, short = join(ttl_s=1.5)
    assert register("s1", short) == 201
    time.sleep(2.0)  # expiry is wall-clock time on the coordinator: nothing to await
    assert register("s2", short) == 401
    assert register("n1", "mloc_join_never_issued") == 401
    assert register("n2", "") == 401
    names = {w["name"] for w in locked.http.get("/api/v1/workers").json()["workers"]}
    assert names == {"r1", "o1", "s1"}
    http.close()


def test_tokens_are_stored_only_as_hashes(locked: Coordinator) -> None:
    user_token = token_for(locked, "carol")
    agent = RawAgent(locked.url, "hashed-agent", locked.join_token)
    secrets = [locked.admin_token, locked.join_token, user_token, agent.credential]
    locked.stop()  # everything flushed to the database files
    files = [p for p in locked.data_dir.iterdir() if p.name.startswith("mloc.db")]
    assert files
    blob = b"".join(p.read_bytes() for p in files)
    for secret in secrets:
        assert secret.encode() not in blob
    con = sqlite3.connect(locked.data_dir / "mloc.db")
    hashes = {r[0] for r in con.execute("SELECT token_hash FROM tokens")}
    creds = {r[0] for r in con.execute("SELECT credential_hash FROM agents")}
    con.close()
    assert hashlib.sha256(user_token.encode()).hexdigest() in hashes
    assert hashlib.sha256(locked.admin_token.encode()).hexdigest() in hashes
    assert hashlib.sha256(agent.credential.encode()).hexdigest() in creds
    agent.close()


def test_mloc_token_commands_end_to_end(locked: Coordinator) -> None:
    def mloc(*args: str, token: str = locked.admin_token) -> subprocess.CompletedProcess[str]:
        env = base_env(MLOC_COORDINATOR_URL=locked.url, MLOC_TOKEN=token, COLUMNS="200")
        return subprocess.run([*MLOC, *args], env=env, capture_output=True, text=True, timeout=60)

    out = mloc("token", "create", "--user", "dave")
    assert out.returncode == 0, out.stderr
    token_id, secret = re.search(r"id (\w+)\s+token (\S+)", out.stdout).groups()
    assert mloc("tasks", token=secret).returncode == 0
    listing = mloc("token", "list")
    assert token_id in listing.stdout and "dave" in listing.stdout and secret not in listing.stdout
    assert mloc("token", "create", "--user", "eve", token=secret).returncode != 0  # a user cannot mint tokens
    assert mloc("token", "revoke", token_id).returncode == 0
    denied = mloc("tasks", token=secret)
    assert denied.returncode != 0 and "not valid" in denied.stderr


def test_the_cli_sends_the_hosts_admin_token_only_to_a_coordinator_on_loopback(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text("mloc_user_from_file\n")

    def sent(url: str, token: str | None = None) -> str | None:
        return ClientSettings(coordinator_url=url, token=token, data_dir=tmp_path).api_token()

    for local in ("http://127.0.0.1:8000", "https://localhost:8443", "http://[::1]:8000"):
        assert sent(local) == "mloc_user_from_file", local
    assert sent("https://mloc.example.internal:8443") is None  # never carried off the host
    assert sent("http://127.0.0.1:8000", "mloc_user_given") == "mloc_user_given"  # MLOC_TOKEN wins
    assert ClientSettings(token=None, data_dir=tmp_path / "elsewhere").api_token() is None


def test_request_size_limits_answer_413_json(tmp_path: Path) -> None:
    coord = Coordinator(tmp_path, extra_env={"MLOC_MAX_BODY_MB": "0.05"}).start()  # 50 KiB
    try:
        big = "x" * 200_000
        resp = coord.http.post("/api/v1/tasks", content=f"taskType: command\ncommand: echo {big}\n")
        assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"
        agent = RawAgent(coord.url, "big-logs", coord.join_token)
        task = coord.submit({"taskType": "command", "command": "true", "resources": {"gpus": 1}})
        epoch = agent.poll()["leases"][0]["epoch"]
        resp = agent.call(task["id"], "logs", {"epoch": epoch, "chunks": [{"seq": 0, "data": big}]})
        assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"
        huge_register = agent.http.post("/api/v1/agents/register", content=big,
                                        headers={"X-MLOC-Join-Token": coord.join_token})
        assert huge_register.status_code == 413
        ok = agent.call(task["id"], "logs", {"epoch": epoch, "chunks": [{"seq": 0, "data": "fits"}]})
        assert ok.status_code == 200  # the limit refuses big bodies, not the call
        agent.close()
    finally:
        coord.stop()
