"""The queue as people see it: the order with reasons, an admin's priority change, and 403 for users.

In-process on the injected clock for the order and reasons; one real coordinator process for the
API and the CLI (``mloc queue``, ``mloc priority``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mloc_server.clock import ManualClock
from mloc_server.services.auth import Principal
from mloc_server.settings import CoordinatorSettings, FairShareSettings
from mloc_shared.errors import ValidationFailed

from tests.fairshare_sim import Sim, coordinator_on, gpu_agent, submit_as
from tests.harness import Coordinator, base_env

ADMIN = Principal("root", "admin")


def settings_for(tmp_path: Path) -> CoordinatorSettings:
    return CoordinatorSettings(data_dir=tmp_path, lease_ttl_s=30, heartbeat_s=10, poll_hold_s=300,
                               fair_share=FairShareSettings(running_charge_s=60))


@pytest.mark.timeout(60)
async def test_listing_is_in_pick_order_with_each_tasks_reason(tmp_path: Path) -> None:
    async with coordinator_on(settings_for(tmp_path), ManualClock()) as st:
        agent = await gpu_agent(st, "a1")
        await submit_as(st, "alice", 2)
        await Sim(st, [agent]).run()  # alice has used 2 x 60 GPU-seconds
        a3, a4 = await submit_as(st, "alice", 2)
        b1, b2 = await submit_as(st, "bob", 2)
        listing = st.queue_admin.listing(ADMIN, 100)
        assert [t.id for t in listing.tasks] == [b1, b2, a3, a4] and listing.total == 4
        reasons = [t.reason for t in listing.tasks]
        assert reasons[0] == "next: bob is below their share (usage 0.00 GPU-h, share 50 %)"
        assert reasons[1].startswith("waiting: behind other tasks of bob with the same needs")
        assert reasons[2] == ("waiting: alice is above their share (usage 0.03 GPU-h, share 50 %); "
                              "bob is further below theirs")
        # the task's own record says the same
        record = await st.tasks.get(a3, Principal("alice", "user"))
        assert record["pending_reason"] == reasons[2]
        # a user sees their own tasks at their places
        mine = st.queue_admin.listing(Principal("alice", "user"), 100)
        assert [(t.position, t.id) for t in mine.tasks] == [(3, a3), (4, a4)]


@pytest.mark.timeout(60)
async def test_a_class_change_moves_a_queued_task_and_changes_a_running_ones_preemptibility(tmp_path: Path) -> None:
    clock = ManualClock()
    settings = settings_for(tmp_path)
    async with coordinator_on(settings, clock) as st:
        agent = await gpu_agent(st, "a1")
        (low,) = await submit_as(st, "carol", 1, priority_class="low")
        await Sim(st, [agent]).fill()
        b1, b2 = await submit_as(st, "bob", 2)
        assert st.fleet.leases[low].meta.priority_class == "low"
        changed = await st.queue_admin.set_priority(low, "high", None)
        assert (changed.state, changed.priority_class, changed.preemptible) == ("running", "high", False)
        assert st.fleet.leases[low].meta.class_priority == 100 and not st.fleet.leases[low].meta.preemptible
        # a queued task moves to the front at once
        assert [t.id for t in st.queue_admin.listing(ADMIN, 10).tasks] == [b1, b2]
        moved = await st.queue_admin.set_priority(b2, "high", 5)
        assert (moved.state, moved.priority) == ("queued", 5)
        listing = st.queue_admin.listing(ADMIN, 10).tasks
        assert [t.id for t in listing] == [b2, b1] and listing[0].priority_class == "high"
        assert listing[1].reason.startswith("waiting: behind other tasks of bob with the same needs")
        with pytest.raises(ValidationFailed, match="priority_class 'urgent' is not one of high, low, normal"):
            await st.queue_admin.set_priority(b1, "urgent", None)
    async with coordinator_on(settings, clock) as st2:  # the change is in the store: a restart keeps it
        assert st2.fleet.leases[low].meta.priority_class == "high"
        assert [t.id for t in st2.queue_admin.listing(ADMIN, 10).tasks] == [b2, b1]


@pytest.mark.timeout(120)
def test_queue_and_priority_over_the_api_and_the_cli(coordinator: Coordinator) -> None:
    http = coordinator.http
    made = http.post("/api/v1/tokens", json={"user": "alice", "team": "red"})
    assert made.status_code == 201 and made.json()["team"] == "red"
    alice = {"Authorization": f"Bearer {made.json()['token']}"}
    big = {"taskType": "command", "command": "true", "resources": {"gpus": 8}}  # no agent: stays queued
    mine = http.post("/api/v1/tasks", json=big, headers=alice).json()
    assert mine["team"] == "red"
    other = coordinator.submit(big)
    refused = http.patch(f"/api/v1/tasks/{mine['id']}", json={"priority_class": "high"}, headers=alice)
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == (
        "changing a task's priority class needs an admin token (role admin); user 'alice' has role user")
    assert http.patch(f"/api/v1/tasks/{mine['id']}", json={"priority_class": "nope"}).status_code == 422
    seen = http.get("/api/v1/queue", headers=alice).json()
    assert [t["id"] for t in seen["tasks"]] == [mine["id"]] and seen["total"] == 2
    env = base_env(MLOC_COORDINATOR_URL=coordinator.url, MLOC_TOKEN=coordinator.admin_token, COLUMNS="250")
    cli = [sys.executable, "-m", "mloc_shared.cli.main"]
    out = subprocess.run([*cli, "priority", other["id"], "high"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "class high" in out.stdout, out.stdout + out.stderr
    listing = http.get("/api/v1/queue").json()["tasks"]
    assert [t["id"] for t in listing] == [other["id"], mine["id"]]
    out = subprocess.run([*cli, "queue"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and other["id"] in out.stdout and "alice (red)" in out.stdout, out.stdout
    assert "2 task(s) queued" in out.stdout
    done = http.delete(f"/api/v1/tasks/{mine['id']}")
    assert done.status_code == 200
    again = http.patch(f"/api/v1/tasks/{mine['id']}", json={"priority_class": "low"})
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]["message"]


@pytest.mark.timeout(60)
async def test_with_teams_on_the_reason_speaks_of_the_teams(tmp_path: Path) -> None:
    settings = CoordinatorSettings(data_dir=tmp_path, fair_share=FairShareSettings(teams={"red": 1, "blue": 1},
                                                                                   running_charge_s=60))
    async with coordinator_on(settings, ManualClock()) as st:
        agent = await gpu_agent(st, "a1")
        await submit_as(st, "alice", 1, team="red")
        await Sim(st, [agent]).run()
        (a2,) = await submit_as(st, "alice", 1, team="red")
        (b1,) = await submit_as(st, "bob", 1, team="blue")
        listing = st.queue_admin.listing(ADMIN, 10).tasks
        assert [t.id for t in listing] == [b1, a2] and listing[0].team == "blue"
        assert listing[1].reason == ("waiting: team red is above its share (usage 0.02 GPU-h, share 50 %); "
                                     "team blue is further below its")


@pytest.mark.timeout(60)
async def test_with_fair_share_off_the_queue_is_first_come_first_served(tmp_path: Path) -> None:
    """No fair share and no GPU quota: one bucket per shape (a claim is O(shapes) again), in order."""
    settings = CoordinatorSettings(data_dir=tmp_path, fair_share=FairShareSettings(enabled=False))
    async with coordinator_on(settings, ManualClock()) as st:
        assert not st.fleet.queue.per_owner
        a1, a2 = await submit_as(st, "alice", 2)
        (b1,) = await submit_as(st, "bob", 1)
        listing = st.queue_admin.listing(ADMIN, 10).tasks
        assert [t.id for t in listing] == [a1, a2, b1]
        assert listing[0].reason == "next: waiting for a fitting agent to have free GPUs"
        assert listing[2].reason.startswith("waiting: behind earlier tasks with the same needs")
