"""Gangs (``resources.nodes``) on an injected clock: all-or-none leases, reservation windows,
no starvation and no deadlock, fate sharing, networks, and a restart.

The coordinator's real state (app.open_state on a real SQLite file) on a ManualClock, like
tests/test_leasing_clock.py: agents are polls and heartbeats made in-process, nothing sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mloc_server.clock import ManualClock
from mloc_server.services.fleet import AgentState
from mloc_server.settings import CoordinatorSettings
from mloc_server.state import AppState
from mloc_shared.errors import LeaseLost
from mloc_shared.protocol import (
    Completion,
    CompletionRef,
    Gpu,
    HeartbeatRequest,
    Inventory,
    Lease,
    LeaseRef,
    PollRequest,
    PollResponse,
    RegisterRequest,
    RendezvousPoint,
)

from tests.test_leasing_clock import ADMIN, clock_of, coordinator_on, settle, submit, task

pytestmark = pytest.mark.timeout(20)

TTL, GRACE, HOLD, WINDOW = 30.0, 60.0, 300.0, 100.0
GANG = {"resources": {"gpus": 1, "nodes": 2}, "retry": {"backoff_s": 0, "max_attempts": 3}}
SMALL = {"resources": {"gpus": 1}}


@pytest.fixture
def settings(tmp_path: Path) -> CoordinatorSettings:
    return CoordinatorSettings(data_dir=tmp_path, lease_ttl_s=TTL, heartbeat_s=10, poll_hold_s=HOLD,
                               restart_grace_s=GRACE, gang_reserve_s=WINDOW)


@pytest.fixture
async def st(settings: CoordinatorSettings) -> AsyncIterator[AppState]:
    async with coordinator_on(settings, ManualClock()) as state:
        yield state


async def agent_on(st: AppState, name: str, network: str = "lan", gpus: int = 1) -> AgentState:
    inventory = Inventory(hostname=name, gpu_source="declared", gpus=[
        Gpu(index=i, uuid=f"{name}-{i}", name="Test GPU", memory_total_mb=24576, declared=True) for i in range(gpus)])
    resp = await st.agents.register(RegisterRequest(
        agent_version="test", name=name, inventory=inventory, task_types=["command"], max_tasks=max(1, gpus),
        network=network, addresses=["198.51.100.10"]), None)
    return st.fleet.agents[resp.agent_id]


class Box:
    """One agent's side of the protocol: a poll at a time, what it runs, what it has finished."""

    def __init__(self, st: AppState, agent: AgentState) -> None:
        self.st, self.agent, self.n = st, agent, 0
        self.running: dict[str, Lease] = {}
        self.done: list[CompletionRef] = []
        self.pending: asyncio.Task[PollResponse] | None = None

    def poll(self) -> asyncio.Task[PollResponse]:
        self.n += 1
        free = max(0, self.agent.max_tasks - len(self.running))
        req = PollRequest(poll_id=f"{self.agent.name}-poll-{self.n:04d}", free_slots=free,
                          running=[LeaseRef(task_id=t, epoch=x.epoch) for t, x in self.running.items()],
                          completions=self.done)
        self.done = []
        self.pending = asyncio.ensure_future(self.st.polling.poll(self.agent, req))
        return self.pending

    def answered(self) -> list[Lease]:
        """The leases of its poll if it answered (then it polls again at once), else []."""
        if self.pending is None or not self.pending.done():
            return []
        leases = self.pending.result().leases
        for lease in leases:
            self.running[lease.task_id] = lease
        for lost in self.pending.result().lost:
            self.running.pop(lost, None)
        self.poll()
        return leases

    async def repoll(self) -> None:
        """Its held poll's hold ends (or its answer is read): it polls again, reporting what it did."""
        if self.pending is not None and self.pending.done():
            self.answered()
            return
        if self.pending is not None:
            self.pending.cancel()
            await settle()
        self.poll()

    def finish(self, task_id: str, outcome: str = "succeeded", **fields: Any) -> None:
        lease = self.running.pop(task_id)
        self.done.append(CompletionRef(task_id=task_id, epoch=lease.epoch, outcome=outcome, **fields))

    def heartbeat(self, task_id: str, **fields: Any):
        return self.st.leasing.heartbeat(self.agent, task_id,
                                         HeartbeatRequest(epoch=self.running[task_id].epoch, **fields))


async def advance(st: AppState, seconds: float, alive: list[Box]) -> None:
    """Move the clock in steps shorter than a TTL; the ``alive`` boxes renew what they run at each."""
    while seconds > 0:
        step = min(seconds, TTL / 2)
        clock_of(st).advance(step)
        seconds -= step
        for box in alive:
            for task_id in box.running:
                box.heartbeat(task_id)
        await st.reaper.reap_once()


async def boxes(st: AppState, *names: str, network: str = "lan") -> list[Box]:
    out = [Box(st, await agent_on(st, name, network)) for name in names]
    for box in out:
        box.poll()
    await settle()
    return out


async def gang_leases(st: AppState, members: list[Box], task_id: str) -> list[Lease]:
    """Each member's lease of the gang task, once their polls carried them."""
    await settle()
    got = []
    for box in members:
        for lease in box.answered():
            assert lease.task_id == task_id
        got.append(box.running[task_id])
    return got


# -- all or none ------------------------------------------------------------------------------

async def test_a_gang_is_leased_to_all_its_agents_at_once_or_to_none(st: AppState) -> None:
    a, b = await boxes(st, "a", "b")
    b.pending.cancel()  # b is busy elsewhere: not polling
    await settle()
    b.agent.waiter = None
    task_id = await submit(st, **GANG)
    await settle()
    assert not a.pending.done()  # reserved, waiting for the second agent: no lease yet
    record = await task(st, task_id)
    assert record["state"] == "queued"
    assert record["pending_reason"].startswith("gang: 1 of 2 agents reserved in network lan")
    assert a.agent.leases[task_id].epoch == -1  # a provisional lease holds a's GPU

    b.poll()
    leases = await gang_leases(st, [a, b], task_id)
    assert [x.gang.node_rank for x in leases] == [0, 1]
    assert {x.epoch for x in leases} == {1} and leases[0].gang.members == ["a", "b"]
    assert leases[0].gang.nodes == 2 and leases[0].gang.network == "lan"
    record = await task(st, task_id)
    assert record["state"] == "running" and record["attempts"] == 1
    assert record["attempt_history"][0]["members"] == ["a", "b"]

    # node rank 0 publishes the rendezvous; the other member learns it from its heartbeats
    assert b.heartbeat(task_id).rendezvous is None
    point = RendezvousPoint(master_addr="198.51.100.10", master_port=29511)
    assert a.heartbeat(task_id, rendezvous=point).rendezvous == point
    assert b.heartbeat(task_id).rendezvous == point

    # node rank 0's completion is the task's; the member is asked to stop and frees its slot
    assert await st.leasing.complete(a.agent, task_id, Completion(
        epoch=1, outcome="succeeded", result={"world_size": 2})) == "succeeded"
    record = await task(st, task_id)
    assert record["state"] == "succeeded" and record["result"] == {"world_size": 2}
    assert b.heartbeat(task_id).cancel is True
    state = await st.leasing.complete(b.agent, task_id, Completion(epoch=1, outcome="cancelled"))
    assert state == "succeeded" and task_id not in b.agent.leases and task_id not in st.leasing.gangs.live


async def test_a_reservation_that_cannot_complete_is_released_and_the_next_window_is_longer(st: AppState) -> None:
    a, b = await boxes(st, "a", "b")
    long_one = await submit(st, **SMALL)  # b takes it and keeps running it
    await settle()
    for box in (a, b):
        box.answered()
    holder = a if long_one in a.running else b
    free = b if holder is a else a
    gang_id = await submit(st, **GANG)
    await settle()
    assert free.agent.leases[gang_id].epoch == -1
    assert not free.pending.done()

    await advance(st, WINDOW + 1, [holder])  # the window ended with 1 of 2: the reservation is let go
    assert gang_id not in free.agent.leases
    small = await submit(st, **SMALL)  # and the freed GPU takes small work meanwhile (backfill)
    await settle()
    assert [x.task_id for x in free.answered()] == [small]
    reason = (await task(st, gang_id))["pending_reason"]
    assert "other tasks run for 100s, then it reserves again for 200s" in reason

    free.finish(small)
    holder.finish(long_one)
    for box in (free, holder):
        await box.repoll()
    await settle()
    assert not free.agent.leases and not holder.agent.leases  # both idle: the gang waits out its pause
    await advance(st, WINDOW + 1, [])  # the pause is over: the gang forms on both
    leases = await gang_leases(st, [holder, free], gang_id)
    assert sorted(x.gang.node_rank for x in leases) == [0, 1]


# -- no starvation, no deadlock ---------------------------------------------------------------

async def test_a_gang_gets_its_agents_within_bounded_rounds_while_small_tasks_keep_flowing(st: AppState) -> None:
    trio = await boxes(st, "a", "b", "c")
    for _ in range(3):  # the fleet is busy with small tasks when the gang arrives
        await submit(st, **SMALL)
    await settle()
    gang_id = await submit(st, **GANG)
    started_round, finished = None, []
    for round_no in range(8):
        await submit(st, **SMALL)  # a steady stream, younger than the gang
        await submit(st, **SMALL)
        await settle()
        for box in trio:
            box.answered()
            for task_id in [t for t in box.running if t != gang_id]:
                box.finish(task_id)  # a small task takes one round
                finished.append((round_no, task_id))
            await box.repoll()
        await settle()
        for box in trio:
            box.answered()
        holders = [box.agent.name for box in trio if gang_id in box.running]
        if started_round is None and len(holders) == 2:
            started_round = round_no
    assert started_round is not None and started_round <= 3, "the gang starved"
    record = await task(st, gang_id)
    assert record["state"] == "running"
    # small tasks ran in every round, before and after the gang started (the third agent backfills)
    rounds = {r for r, _ in finished}
    assert rounds >= set(range(1, 8)) - {started_round}, rounds
    assert sum(1 for r, _ in finished if r > started_round) >= 7 - started_round


async def test_two_gangs_never_hold_parts_of_one_network_so_both_run(st: AppState) -> None:
    a, b, c = await boxes(st, "a", "b", "c")
    first, second = await submit(st, **GANG), await submit(st, **GANG)
    await settle()
    leases = {box.agent.name: box.answered() for box in (a, b, c)}
    on_first = [name for name, got in leases.items() if any(x.task_id == first for x in got)]
    assert len(on_first) == 2
    (idle,) = [box for box in (a, b, c) if box.agent.name not in on_first]
    # the second gang reserves the third agent: one forming gang per network, never two halves
    assert st.leasing.gangs.forming["lan"].task.id == second
    assert [lease.epoch for lease in idle.agent.leases.values()] == [-1]
    assert (await task(st, second))["pending_reason"].startswith("gang: 1 of 2 agents reserved")
    for box in (a, b, c):
        if first in box.running:
            box.finish(first)
            await box.repoll()
    await settle()
    for box in (a, b, c):
        box.answered()
    assert sum(1 for box in (a, b, c) if second in box.running) == 2
    assert (await task(st, first))["state"] == "succeeded"
    assert (await task(st, second))["state"] == "running"


async def test_a_gang_uses_agents_of_one_network_only(st: AppState) -> None:
    (a,) = await boxes(st, "a", network="site-1")
    (b,) = await boxes(st, "b", network="site-2")
    gang_id = await submit(st, **GANG)
    await settle()
    assert not a.agent.leases and not b.agent.leases  # neither network could hold it: nothing reserved
    reason = (await task(st, gang_id))["pending_reason"]
    assert "needs 2 agents in one network" in reason and "has 1" in reason
    (c,) = await boxes(st, "c", network="site-2")
    for box in (a, b):
        await box.repoll()
    leases = await gang_leases(st, [b, c], gang_id)
    assert leases[0].gang.network == "site-2" and gang_id not in a.running


# -- fate sharing -----------------------------------------------------------------------------

async def running_gang(st: AppState, **spec: Any) -> tuple[str, Box, Box]:
    a, b = await boxes(st, "a", "b")
    task_id = await submit(st, **{**GANG, **spec})
    await gang_leases(st, [a, b], task_id)
    rank0 = a if a.running[task_id].gang.node_rank == 0 else b
    return task_id, rank0, b if rank0 is a else a


async def test_a_lost_member_stops_every_member_and_requeues_the_gang_once(st: AppState) -> None:
    task_id, rank0, member = await running_gang(st)
    for _ in range(2):  # node rank 0 keeps renewing; the member's agent went silent (killed, cut off)
        clock_of(st).advance(TTL / 2 + 1)
        rank0.heartbeat(task_id)
        await st.reaper.reap_once()
    record = await task(st, task_id)
    assert record["state"] == "queued" and record["attempts"] == 1
    assert "gang member node rank 1 on agent" in record["error"] and "lease expired" in record["error"]
    assert [a["outcome"] for a in record["attempt_history"]] == ["lost"]
    with pytest.raises(LeaseLost):  # node rank 0 is told to stop at its next heartbeat
        rank0.heartbeat(task_id)
    # its ranks fail when the peer vanished: that report is stale and costs no second attempt
    with pytest.raises(LeaseLost):
        await st.leasing.complete(rank0.agent, task_id, Completion(epoch=1, outcome="failed", error="peer lost"))
    assert (await task(st, task_id))["attempts"] == 1
    assert not rank0.agent.leases and not member.agent.leases and task_id not in st.leasing.gangs.live


async def test_a_failed_rank_requeues_the_gang_once_and_the_next_attempt_resumes_everywhere(st: AppState) -> None:
    task_id, rank0, member = await running_gang(st, retry={"backoff_s": 5, "max_attempts": 3})
    await st.db.write(lambda tx: tx.con.execute(  # node rank 0 uploaded a checkpoint (as artifacts.py records it)
        "UPDATE tasks SET last_checkpoint=? WHERE id=?",
        ('{"name": "checkpoints/step-4.tar", "step": 4, "size": 10, "storage_key": "k"}', task_id)))
    state = await st.leasing.complete(member.agent, task_id,
                                      Completion(epoch=1, outcome="failed", error="rank 1 crashed"))
    assert state == "queued"
    record = await task(st, task_id)
    assert record["state"] == "queued" and record["attempts"] == 1 and "rank 1 crashed" in record["error"]
    with pytest.raises(LeaseLost):  # node rank 0's own failure, a moment later, is stale
        await st.leasing.complete(rank0.agent, task_id, Completion(epoch=1, outcome="failed", error="peer gone"))
    with pytest.raises(LeaseLost):
        rank0.heartbeat(task_id)
    # the next attempt: every member resumes from node rank 0's checkpoint
    for box in (rank0, member):
        box.running.clear()
        await box.repoll()
    clock_of(st).advance(11)  # the retry backoff (5 s, doubled for a second attempt at most, ±20 %)
    await st.reaper.reap_once()
    again = await gang_leases(st, [rank0, member], task_id)
    assert {x.epoch for x in again} == {2} and {x.attempt for x in again} == {2}
    assert [x.resume.step for x in again] == [4, 4]


async def test_an_input_error_on_any_rank_fails_the_gang_at_once(st: AppState) -> None:
    task_id, rank0, member = await running_gang(st)
    await st.leasing.complete(member.agent, task_id, Completion(
        epoch=1, outcome="failed", error="bad dataset", error_code="bad_input", retryable=False))
    record = await task(st, task_id)
    assert record["state"] == "failed" and "node rank 1" in record["error"] and "bad dataset" in record["error"]
    with pytest.raises(LeaseLost):  # node rank 0's lease ended with the task
        rank0.heartbeat(task_id)
    assert task_id not in member.agent.leases


async def test_a_cancel_reaches_every_member(st: AppState) -> None:
    task_id, rank0, member = await running_gang(st)
    assert (await st.tasks.cancel(task_id, ADMIN))["state"] == "cancelling"
    await st.reaper.reap_once()
    assert rank0.heartbeat(task_id).cancel and member.heartbeat(task_id).cancel
    assert await st.leasing.complete(member.agent, task_id, Completion(epoch=1, outcome="cancelled")) == "running"
    assert await st.leasing.complete(rank0.agent, task_id, Completion(epoch=1, outcome="cancelled")) == "cancelled"
    assert (await task(st, task_id))["state"] == "cancelled"


# -- restart ----------------------------------------------------------------------------------

async def test_a_running_gang_is_rebuilt_after_a_restart(settings: CoordinatorSettings) -> None:
    first = ManualClock()
    async with coordinator_on(settings, first) as st:
        task_id, rank0, member = await running_gang(st)
        ids = (rank0.agent.id, member.agent.id)
        for box in (rank0, member):
            box.pending.cancel()
        await settle()
    async with coordinator_on(settings, ManualClock(start=first.time() + 5)) as st:
        gang = st.leasing.gangs.live[task_id]
        assert gang.members == list(ids) and gang.epoch == 1
        r0, m = (st.fleet.agents[i] for i in ids)
        point = RendezvousPoint(master_addr="198.51.100.10", master_port=29512)
        st.leasing.heartbeat(r0, task_id, HeartbeatRequest(epoch=1, rendezvous=point))  # re-attached
        assert st.leasing.heartbeat(m, task_id, HeartbeatRequest(epoch=1)).rendezvous == point
        # after the grace, a member that never came back costs the gang one requeue
        clock_of(st).advance(GRACE - 1)
        st.leasing.heartbeat(r0, task_id, HeartbeatRequest(epoch=1))
        clock_of(st).advance(2)
        await st.reaper.reap_once()
        record = await task(st, task_id)
        assert record["state"] == "queued" and "node rank 1" in record["error"]
        assert task_id not in r0.leases and task_id not in m.leases
