"""The agent protocol spoken by hand against a real coordinator: idempotent claims, fencing,
versions, credentials."""

from __future__ import annotations

import re
import threading
import time
import uuid

import httpx

from tests.harness import Coordinator

PROTO = {"X-MLOC-Protocol": "1"}


def register(coord: Coordinator, name: str, max_tasks: int = 2) -> dict[str, str]:
    body = {"agent_version": "test", "name": name, "inventory": {"hostname": name}, "task_types": ["command"],
            "max_tasks": max_tasks}
    resp = httpx.post(f"{coord.url}/api/v1/agents/register", json=body,
                      headers={**PROTO, "X-MLOC-Join-Token": coord.join_token})
    assert resp.status_code == 201, resp.text
    reg = resp.json()
    assert reg["timings"] == {"poll_hold_s": 10.0, "heartbeat_s": 0.5, "lease_ttl_s": 4.0}
    return {**PROTO, "Authorization": f"Bearer {reg['credential']}"}


def poll(coord: Coordinator, auth: dict[str, str], poll_id: str, running=()) -> dict:
    resp = httpx.post(f"{coord.url}/api/v1/agents/poll", headers=auth, timeout=30, json={
        "poll_id": poll_id, "free_slots": 1, "running": list(running)})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_a_retried_poll_gets_the_same_lease(coordinator: Coordinator) -> None:
    auth = register(coordinator, "retrier")
    task = coordinator.submit({"taskType": "command", "command": "true"})
    pid = uuid.uuid4().hex
    first = poll(coordinator, auth, pid)["leases"]
    again = poll(coordinator, auth, pid)["leases"]  # as if the first reply was lost
    assert [(lease["task_id"], lease["epoch"]) for lease in first] == [(task["id"], 1)]
    assert [(lease["task_id"], lease["epoch"]) for lease in again] == [(task["id"], 1)]
    assert coordinator.task(task["id"])["attempts"] == 1


def test_a_lease_the_agent_forgot_is_requeued_at_once(coordinator: Coordinator) -> None:
    auth = register(coordinator, "forgetful")
    task = coordinator.submit({"taskType": "command", "command": "true", "retry": {"backoff_s": 0}})
    lease = poll(coordinator, auth, uuid.uuid4().hex)["leases"][0]
    # a new poll id and an empty running list: the agent restarted and lost the task
    again = poll(coordinator, auth, uuid.uuid4().hex)["leases"]
    assert [(x["task_id"], x["epoch"]) for x in again] == [(task["id"], lease["epoch"] + 1)]
    history = coordinator.task(task["id"])["attempt_history"]
    assert history[0]["outcome"] == "lost" and "no longer runs it" in history[0]["error"]


def test_leases_are_fenced_by_epoch_and_owner(coordinator: Coordinator) -> None:
    mine, theirs = register(coordinator, "owner"), register(coordinator, "intruder")
    task = coordinator.submit({"taskType": "command", "command": "true"})
    lease = poll(coordinator, mine, uuid.uuid4().hex)["leases"][0]
    url = f"{coordinator.url}/api/v1/leases/{task['id']}"
    assert httpx.post(f"{url}/heartbeat", headers=theirs, json={"epoch": lease["epoch"]}).status_code == 409
    assert httpx.post(f"{url}/complete", headers=theirs,
                      json={"epoch": lease["epoch"], "outcome": "succeeded"}).status_code == 409
    assert httpx.post(f"{url}/heartbeat", headers=mine, json={"epoch": lease["epoch"] + 1}).status_code == 409
    ok = httpx.post(f"{url}/heartbeat", headers=mine, json={"epoch": lease["epoch"], "progress": {"step": 1}})
    assert ok.status_code == 200 and ok.json()["cancel"] is False
    done = httpx.post(f"{url}/complete", headers=mine, json={"epoch": lease["epoch"], "outcome": "succeeded"})
    assert done.status_code == 200 and done.json()["state"] == "succeeded"
    # a retried completion (reply lost) answers the same; a different late one is refused
    assert httpx.post(f"{url}/complete", headers=mine,
                      json={"epoch": lease["epoch"], "outcome": "succeeded"}).json()["state"] == "succeeded"
    assert coordinator.task(task["id"])["state"] == "succeeded"


def test_versions_and_credentials_are_checked(coordinator: Coordinator) -> None:
    auth = register(coordinator, "checked")
    old = {**auth, "X-MLOC-Protocol": "0"}
    resp = httpx.post(f"{coordinator.url}/api/v1/agents/poll", headers=old,
                      json={"poll_id": uuid.uuid4().hex, "free_slots": 0})
    assert resp.status_code == 426 and "protocol" in resp.json()["error"]["message"]
    bad = {**PROTO, "Authorization": "Bearer mloc_agent_forged"}
    resp = httpx.post(f"{coordinator.url}/api/v1/agents/poll", headers=bad,
                      json={"poll_id": uuid.uuid4().hex, "free_slots": 0})
    assert resp.status_code == 401
    body = {"agent_version": "t", "name": "x", "inventory": {"hostname": "x"}, "task_types": ["command"]}
    resp = httpx.post(f"{coordinator.url}/api/v1/agents/register", json=body,
                      headers={**PROTO, "X-MLOC-Join-Token": "wrong"})
    assert resp.status_code == 401
    resp = httpx.post(f"{coordinator.url}/api/v1/agents/poll", headers=auth, content=b"{not json")
    assert resp.status_code == 400
    resp = httpx.post(f"{coordinator.url}/api/v1/agents/poll", headers=auth, json={"poll_id": "x", "free_slots": -1})
    assert resp.status_code == 422 and resp.json()["error"]["field"] in ("poll_id", "free_slots")


def held_poll(coord: Coordinator, auth: dict[str, str], poll_id: str) -> tuple[threading.Thread, dict]:
    """A poll held in a thread (as an idle agent's is); its reply lands in the returned dict."""
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(poll(coord, auth, poll_id)), daemon=True)
    thread.start()
    time.sleep(0.5)  # the coordinator is holding it
    return thread, out


def handoffs(coord: Coordinator) -> float:
    m = re.search(r"^mloc_handoffs_total (\S+)$", coord.http.get("/metrics").text, re.M)
    assert m is not None, "no mloc_handoffs_total in /metrics"
    return float(m.group(1))


def test_a_submit_to_a_held_poll_is_claimed_in_the_submits_own_commit(coordinator: Coordinator) -> None:
    auth = register(coordinator, "waiting", max_tasks=1)
    before = handoffs(coordinator)
    pid = uuid.uuid4().hex
    thread, reply = held_poll(coordinator, auth, pid)
    task = coordinator.submit({"taskType": "command", "command": "true"})
    thread.join(5)
    # the submit's answer already shows the claim: it was made in the same transaction
    assert task["state"] == "running" and task["attempts"] == 1
    assert [(x["task_id"], x["epoch"]) for x in reply["leases"]] == [(task["id"], 1)]
    assert handoffs(coordinator) == before + 1
    # the reply was lost: the agent retries the same poll id and is offered the same lease
    again = poll(coordinator, auth, pid)["leases"]
    assert [(x["task_id"], x["epoch"]) for x in again] == [(task["id"], 1)]
    done = httpx.post(f"{coordinator.url}/api/v1/leases/{task['id']}/complete", headers=auth,
                      json={"epoch": 1, "outcome": "succeeded", "exit_code": 0})
    assert done.status_code == 200, done.text
    assert coordinator.task(task["id"])["state"] == "succeeded"


def test_a_held_poll_that_cannot_take_the_task_gets_no_handoff(coordinator: Coordinator) -> None:
    auth = register(coordinator, "cpu-only", max_tasks=1)
    before = handoffs(coordinator)
    thread, reply = held_poll(coordinator, auth, uuid.uuid4().hex)
    task = coordinator.submit({"taskType": "command", "command": "true", "resources": {"gpus": 1}})
    assert task["state"] == "queued"
    time.sleep(0.3)
    assert thread.is_alive() and not reply  # still held: nothing it could run arrived
    assert handoffs(coordinator) == before
    assert coordinator.http.post(f"/api/v1/tasks/{task['id']}/cancel").status_code == 200
