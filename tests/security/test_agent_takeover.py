"""Issue 11, item 1: a join token makes new identities; it never takes over a known agent or its leases.

The victim speaks the protocol by hand (tests/raw_agent.py) so the attack lands where it does in the
field, between two of the victim's polls, every time: the victim holds a lease and is not polling.
"""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest

from tests.harness import Coordinator
from tests.raw_agent import PROTO, RawAgent, register_body
from tests.security.users import create_token, submit, user_client

SECRET = f"sk-victim-{uuid.uuid4().hex}"
REFUSED = (401, 403, 409, 429)


def register(coord: Coordinator, name: str, join_token: str) -> httpx.Response:
    """A registration with the join token only, as anyone holding the token can send it."""
    return httpx.post(f"{coord.url}/api/v1/agents/register", content=register_body(name), timeout=30,
                      headers={**PROTO, "X-MLOC-Join-Token": join_token})


def as_agent(coord: Coordinator, credential: str) -> httpx.Client:
    return httpx.Client(base_url=coord.url, timeout=30, headers={**PROTO, "Authorization": f"Bearer {credential}"})


def leases_of(coord: Coordinator, agent_id: str) -> list[str]:
    entry = next((w for w in coord.workers() if w["id"] == agent_id), None)
    assert entry is not None, f"agent {agent_id} is gone from the fleet listing"
    return [lease["task_id"] for lease in entry["leases"]]


@pytest.mark.coordinator(lease_ttl_s=30.0)
def test_join_token_cannot_take_over_a_known_agent_or_its_leases(coordinator: Coordinator) -> None:
    alice = user_client(coordinator, "alice")
    task = submit(alice, {"taskType": "command", "command": "sleep 60", "resources": {"gpus": 0},
                          "secrets": {"API_KEY": SECRET}})
    victim = RawAgent(coordinator.url, "gpu-box-1", coordinator.join_token)
    victim_id = next(w["id"] for w in coordinator.workers() if w["name"] == "gpu-box-1")
    (lease,) = victim.poll()["leases"]
    assert lease["task_id"] == task["id"]
    epoch = lease["epoch"]
    mine = victim.call(task["id"], "secrets", {"epoch": epoch})
    assert mine.status_code == 200 and SECRET in mine.text, mine.text

    # the attacker: the join token, the victim's name, while the victim runs its task between polls
    attack = register(coordinator, "gpu-box-1", coordinator.join_token)
    assert attack.status_code in (201, *REFUSED), attack.text
    if attack.status_code == 201:  # allowed only as a new identity that holds nothing of the victim's
        with as_agent(coordinator, attack.json()["credential"]) as attacker:
            stolen = attacker.post(f"/api/v1/leases/{task['id']}/secrets", json={"epoch": epoch})
            assert stolen.status_code != 200 and SECRET not in stolen.text, (
                f"the join token gave the registrant the victim's lease and its secret: {stolen.text}")
            forged = attacker.post(f"/api/v1/leases/{task['id']}/complete",
                                   json={"epoch": epoch, "outcome": "succeeded", "exit_code": 0,
                                         "result": {"forged": True}})
            assert forged.status_code != 200, f"the registrant completed the victim's task: {forged.text}"
            beat = attacker.post(f"/api/v1/leases/{task['id']}/heartbeat", json={"epoch": epoch})
            assert beat.status_code != 200, "the registrant renews the victim's lease"
        assert attack.json()["agent_id"] != victim_id, "the join token handed out the existing agent's id"

    # the real agent is not locked out and keeps its lease
    beat = victim.call(task["id"], "heartbeat", {"epoch": epoch})
    assert beat.status_code == 200, f"the victim lost its lease to a join-token registration: {beat.text}"
    assert leases_of(coordinator, victim_id) == [task["id"]]
    again = victim.call(task["id"], "secrets", {"epoch": epoch})
    assert again.status_code == 200 and SECRET in again.text

    # its own credential still re-registers it (a restart keeps identity and leases)
    restart = victim.http.post("/api/v1/agents/register", content=register_body("gpu-box-1"))
    assert restart.status_code == 201, restart.text
    assert restart.json()["agent_id"] == victim_id
    victim.http.headers["Authorization"] = f"Bearer {restart.json()['credential']}"
    assert leases_of(coordinator, victim_id) == [task["id"]]
    done = victim.call(task["id"], "complete", {"epoch": epoch, "outcome": "succeeded", "exit_code": 0,
                                                 "result": {"by": "victim"}})
    assert done.status_code == 200, done.text
    final = coordinator.task(task["id"])
    assert final["state"] == "succeeded" and final["result"]["by"] == "victim"
    victim.close()
    alice.close()


def test_refused_registrations_do_not_use_up_a_join_token(coordinator: Coordinator) -> None:
    token = create_token(coordinator, kind="join", max_uses=2)["token"]
    victim = RawAgent(coordinator.url, "node-a", token)  # use 1 of 2
    held = threading.Thread(target=victim.poll, daemon=True)  # no work: the poll is held poll_hold_s (10 s)
    held.start()
    time.sleep(0.5)  # the held poll reaches the coordinator within milliseconds; nothing to await from here
    tries = [register(coordinator, "node-a", token) for _ in range(3)]
    assert all(t.status_code in (201, *REFUSED) for t in tries), [t.text for t in tries]
    if all(t.status_code != 201 for t in tries):  # refused: none of them may count as a use
        other = register(coordinator, "node-b", token)
        assert other.status_code == 201, (
            f"3 refused registrations used up the join token (max_uses 2, 1 use made): {other.text}")
    held.join(15)
    victim.close()


def test_registration_attempts_are_rate_limited(coordinator: Coordinator) -> None:
    """Guessing join tokens (or hammering a known name) from one address runs into 429s."""
    statuses = [register(coordinator, f"guess-{i}", f"mloc_join_guess{i:04d}").status_code for i in range(30)]
    assert set(statuses) <= {401, 429}, statuses
    assert 429 in statuses, f"30 refused registrations in a row from one address, none rate-limited: {statuses}"
