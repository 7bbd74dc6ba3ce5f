"""Fair share in-process on the injected clock: exact orders and ratios, decay, teams, recovery.

Real coordinator state (SQLite, the real claim and completion paths), a ManualClock, no sleeping.
The end-to-end check with real agent processes is tests/test_fairshare_e2e.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mloc_server.clock import ManualClock
from mloc_server.services.fairshare import FairShare
from mloc_server.settings import CoordinatorSettings, FairShareSettings

from tests.fairshare_sim import Sim, coordinator_on, gpu_agent, submit_as

pytestmark = pytest.mark.timeout(60)


def settings_for(tmp_path: Path, **fair: object) -> CoordinatorSettings:
    return CoordinatorSettings(data_dir=tmp_path, lease_ttl_s=30, heartbeat_s=10, poll_hold_s=300,
                               fair_share=FairShareSettings(running_charge_s=60, **fair))


async def test_two_users_running_counts_stay_within_one_and_fifo_would_not(tmp_path: Path) -> None:
    """alice submits 30 tasks, then bob 30, to 2 one-GPU slots: bob's first task starts at once."""
    for enabled in (True, False):
        async with coordinator_on(settings_for(tmp_path / str(enabled), enabled=enabled), ManualClock()) as st:
            agents = [await gpu_agent(st, "a1"), await gpu_agent(st, "a2")]
            await submit_as(st, "alice", 30)
            await submit_as(st, "bob", 30)
            sim = Sim(st, agents)
            await sim.run()
            assert len(sim.started) == 60 and not st.fleet.leases and len(st.fleet.queue) == 0
            gaps = [abs(s["alice"] - s["bob"]) for s in sim.samples]
            if enabled:
                assert max(gaps) <= 1, gaps
                assert sim.started[:2] in (["alice", "bob"], ["bob", "alice"])
                # both are backlogged until the end: every pair of starts is one of each
                assert all(sorted(sim.started[i:i + 2]) == ["alice", "bob"] for i in range(0, 60, 2))
            else:  # the test can fail: submission order runs all of alice's first
                assert sim.started[:30] == ["alice"] * 30 and max(gaps) == 2


async def test_one_claim_of_two_slots_takes_one_task_of_each_user(tmp_path: Path) -> None:
    """Running leases count at once, even within one pick: a 2-GPU agent's claim takes alice and bob."""
    async with coordinator_on(settings_for(tmp_path), ManualClock()) as st:
        agent = await gpu_agent(st, "big", gpus=2, max_tasks=2)
        await submit_as(st, "alice", 5)
        await submit_as(st, "bob", 5)
        offers = await st.leasing.claim(agent, 2, "p1")
        assert sorted(st.fleet.leases[o.task_id].meta.owner for o in offers) == ["alice", "bob"]


async def test_weights_two_to_one_split_the_started_tasks_two_to_one(tmp_path: Path) -> None:
    """Weights alice 2, bob 1, both backlogged on 2 slots: of the first 60 starts alice has 2/3
    within 5 percentage points (the first starts split 1:1 until usage builds up)."""
    async with coordinator_on(settings_for(tmp_path, users={"alice": 2}), ManualClock()) as st:
        agents = [await gpu_agent(st, "a1"), await gpu_agent(st, "a2")]
        await submit_as(st, "alice", 80)
        await submit_as(st, "bob", 80)
        sim = Sim(st, agents)
        await sim.run(max_starts=60)
        share = sim.started[:60].count("alice") / 60
        assert abs(share - 2 / 3) <= 0.05, (share, "".join(o[0] for o in sim.started))
        # and the ratio of decayed usage follows the weights as closely
        shares = st.fleet.policy.shares
        ratio = shares.usage_s(("user", "alice")) / shares.usage_s(("user", "bob"))
        assert 1.7 <= ratio <= 2.3, ratio


async def test_teams_share_first_then_users_within_their_team(tmp_path: Path) -> None:
    """Teams red (alice, carol) and blue (bob) of equal weight on 2 slots: bob alone gets half."""
    async with coordinator_on(settings_for(tmp_path, teams={"red": 1, "blue": 1}), ManualClock()) as st:
        agents = [await gpu_agent(st, "a1"), await gpu_agent(st, "a2")]
        await submit_as(st, "alice", 30, team="red")
        await submit_as(st, "carol", 30, team="red")
        await submit_as(st, "bob", 30, team="blue")
        sim = Sim(st, agents)
        await sim.run(max_starts=40)
        first = sim.started[:40]
        assert first.count("bob") == 20, first
        assert abs(first.count("alice") - first.count("carol")) <= 1, first


async def test_usage_decays_with_the_half_life_and_running_leases_accrue() -> None:
    clock = ManualClock()
    shares = FairShare(FairShareSettings(half_life_s=3600, running_charge_s=0), clock)
    key = ("user", "alice")
    shares.started("alice", "", 2)
    clock.advance(1800)
    expect = 2 / (math.log(2) / 3600) * (1 - 0.5 ** 0.5)  # ∫ 2 e^{-λ(T-t)} dt over half an hour
    assert shares.usage_s(key) == pytest.approx(expect, rel=1e-9)
    shares.stopped("alice", "", 2)
    clock.advance(3600)
    assert shares.usage_s(key) == pytest.approx(expect / 2, rel=1e-9)
    assert shares.running_gpus(key) == 0
    shares.started("bob", "", 0)  # a GPU-less task counts as no_gpu_charge GPUs
    clock.advance(100)
    lam = math.log(2) / 3600
    assert shares.usage_s(("user", "bob")) == pytest.approx(0.1 / lam * (1 - math.exp(-lam * 100)), rel=1e-9)


async def test_usage_and_team_survive_a_coordinator_restart(tmp_path: Path) -> None:
    """Usage is rebuilt from the attempts in SQLite; a queued task keeps its team."""
    clock = ManualClock()
    settings = settings_for(tmp_path, half_life_s=3600)
    async with coordinator_on(settings, clock) as st:
        agents = [await gpu_agent(st, "a1")]
        await submit_as(st, "alice", 3, team="red")
        sim = Sim(st, agents, duration=600)
        await sim.run(max_starts=3)  # two finished, the third runs
        await submit_as(st, "alice", 1, team="red")
        before = st.fleet.policy.shares.usage_s(("user", "alice"))
    async with coordinator_on(settings, clock) as st2:
        after = st2.fleet.policy.shares.usage_s(("user", "alice"))
        assert after == pytest.approx(before, rel=1e-6) and after > 1000
        assert st2.fleet.policy.shares.running_gpus(("team", "red")) == 1  # the live lease, team and all
        (queued,) = st2.fleet.queue.live()
        assert queued.meta.team == "red"
