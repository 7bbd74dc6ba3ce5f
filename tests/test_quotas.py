"""Quotas in-process on the injected clock: the GPU cap holds without blocking other users, and a
submit over the queued limit is refused naming the quota."""

from __future__ import annotations

from pathlib import Path

import pytest
from mloc_server.clock import ManualClock
from mloc_server.services.auth import Principal
from mloc_server.settings import CoordinatorSettings, QuotaSettings
from mloc_shared.errors import TooManyRequests
from mloc_shared.taskspec import TaskSpec

from tests.fairshare_sim import Sim, coordinator_on, gpu_agent, running_gpus_by_owner, submit_as

pytestmark = pytest.mark.timeout(60)


def settings_for(tmp_path: Path, quotas: dict) -> CoordinatorSettings:
    return CoordinatorSettings(data_dir=tmp_path, lease_ttl_s=30, heartbeat_s=10, poll_hold_s=300,
                               quotas=QuotaSettings.model_validate(quotas))


async def test_gpu_cap_holds_and_the_capped_users_tasks_do_not_block_others(tmp_path: Path) -> None:
    """alice (max_gpus 2) submits first, 2-GPU and 1-GPU tasks; bob after her. On three 2-GPU agents
    alice never holds more than 2 GPUs, bob's tasks take the rest, and alice's waiting task says why."""
    quotas = {"users": {"alice": {"max_gpus": 2}}}
    async with coordinator_on(settings_for(tmp_path, quotas), ManualClock()) as st:
        agents = [await gpu_agent(st, f"a{i}", gpus=2, max_tasks=2) for i in range(3)]
        await submit_as(st, "alice", 6, gpus=1)
        await submit_as(st, "alice", 2, gpus=2)
        await submit_as(st, "bob", 10, gpus=1)
        sim = Sim(st, agents)
        await sim.fill()
        assert running_gpus_by_owner(st) == {"alice": 2, "bob": 4}
        waiting = next(t for t in st.fleet.queue.live() if t.meta.owner == "alice")
        record = await st.tasks.get(waiting.id, Principal("alice", "user"))
        assert record["pending_reason"] == (
            "waiting: quota: user alice may use at most 2 GPU(s) at once (max_gpus); 2 in use, this task needs 1")
        await sim.run()
        assert sim.started.count("alice") == 8 and sim.started.count("bob") == 10
        assert max(sample["alice"] for sample in sim.gpu_samples) == 2


async def test_team_gpu_cap_counts_every_member(tmp_path: Path) -> None:
    quotas = {"teams": {"red": {"max_gpus": 1}}}
    async with coordinator_on(settings_for(tmp_path, quotas), ManualClock()) as st:
        agents = [await gpu_agent(st, f"a{i}") for i in range(3)]
        await submit_as(st, "alice", 2, team="red")
        await submit_as(st, "carol", 2, team="red")
        await submit_as(st, "bob", 2)
        await Sim(st, agents).fill()
        running = running_gpus_by_owner(st)
        assert running["alice"] + running["carol"] == 1 and running["bob"] == 2


async def test_a_submit_over_max_queued_is_refused_naming_the_quota(tmp_path: Path) -> None:
    quotas = {"default": {"max_queued": 3}, "users": {"bob": {"max_queued": 1}}, "teams": {"red": {"max_queued": 4}}}
    async with coordinator_on(settings_for(tmp_path, quotas), ManualClock()) as st:
        await submit_as(st, "alice", 3)
        with pytest.raises(TooManyRequests) as exc:
            await submit_as(st, "alice", 1)
        assert exc.value.message == "quota: user alice may have at most 3 queued tasks (max_queued); 3 are queued"
        assert exc.value.code == "quota_exceeded" and exc.value.status == 429
        await submit_as(st, "bob", 1)
        with pytest.raises(TooManyRequests, match=r"user bob may have at most 1 queued"):
            await submit_as(st, "bob", 1)
        # a bulk submit counts all its tasks
        spec = TaskSpec.model_validate({"taskType": "command", "command": "true"})
        with pytest.raises(TooManyRequests, match=r"3 queued tasks .*0 are queued; this submit adds 4"):
            await st.tasks.submit_many([spec] * 4, Principal("carol", "user"))
        # the team's limit counts its members together
        await submit_as(st, "dave", 2, team="red")
        await submit_as(st, "erin", 2, team="red")
        with pytest.raises(TooManyRequests, match="team red may have at most 4 queued tasks"):
            await submit_as(st, "erin", 1, team="red")
        # a task that leaves the queue frees its place
        first = next(t.id for t in st.fleet.queue.live() if t.meta.owner == "alice")
        await st.tasks.cancel(first, Principal("alice", "user"))
        await submit_as(st, "alice", 1)
        assert st.fleet.queue.queued(("user", "alice")) == 3
