"""Leasing on an injected clock: expiry, the restart grace, retry backoff and handoff races.

The coordinator's real state (app.open_state: every service, on a real SQLite file) driven
in-process on a ManualClock: no HTTP, no agent process, no sleeping. TTLs are tens of seconds and
each test is held to a few seconds of real time, so none can pass by waiting one out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from mloc_server.app import open_state
from mloc_server.clock import ManualClock
from mloc_server.services.auth import Principal
from mloc_server.services.fleet import AgentState
from mloc_server.settings import CoordinatorSettings
from mloc_server.state import AppState
from mloc_shared.errors import LeaseLost
from mloc_shared.protocol import (
    CompletionRef,
    HeartbeatRequest,
    Inventory,
    LeaseRef,
    PollRequest,
    PollResponse,
    RegisterRequest,
)
from mloc_shared.taskspec import TaskSpec

pytestmark = pytest.mark.timeout(10)

TTL, GRACE, HOLD = 30.0, 60.0, 300.0  # a hold this long never ends by itself within a test
ADMIN = Principal(user="admin", role="admin")
T = TypeVar("T")


@pytest.fixture
def settings(tmp_path: Path) -> CoordinatorSettings:
    return CoordinatorSettings(data_dir=tmp_path, lease_ttl_s=TTL, heartbeat_s=10, poll_hold_s=HOLD,
                               restart_grace_s=GRACE)


@contextlib.asynccontextmanager
async def coordinator_on(settings: CoordinatorSettings, clock: ManualClock) -> AsyncIterator[AppState]:
    """One coordinator process's state; leaving it is that process stopping."""
    async with contextlib.AsyncExitStack() as resources:
        yield await open_state(settings, clock, resources)


@pytest.fixture
async def st(settings: CoordinatorSettings) -> AsyncIterator[AppState]:
    async with coordinator_on(settings, ManualClock()) as state:
        yield state


def clock_of(st: AppState) -> ManualClock:
    assert isinstance(st.clock, ManualClock)
    return st.clock


async def within(awaitable: Awaitable[T]) -> T:
    """Await with a real-time bound: a poll that should have answered fails the test, not hangs it."""
    return await asyncio.wait_for(awaitable, 2.0)


async def settle() -> None:
    """Let woken coroutines run for a moment (to check that something did *not* happen)."""
    for _ in range(20):
        await asyncio.sleep(0.001)


async def until(condition: Callable[[], bool]) -> None:
    """Wait (real time, bounded) for work the loop has to finish, such as a commit."""
    async with asyncio.timeout(2.0):
        while not condition():
            await asyncio.sleep(0.001)


async def register(st: AppState, name: str) -> AgentState:
    resp = await st.agents.register(RegisterRequest(
        agent_version="test", name=name, inventory=Inventory(hostname=name), task_types=["command"]), None)
    return st.fleet.agents[resp.agent_id]


async def submit(st: AppState, **spec: Any) -> str:
    record, _ = await st.tasks.submit(TaskSpec.model_validate({"taskType": "command", "command": "true", **spec}),
                                      ADMIN)
    return record["id"]


def poll(st: AppState, agent: AgentState, poll_id: str, *, running: tuple[LeaseRef, ...] = (),
         completions: tuple[CompletionRef, ...] = ()) -> asyncio.Task[PollResponse]:
    """An agent's poll, started; it may be held (await it through ``within``)."""
    req = PollRequest(poll_id=poll_id, free_slots=1, running=list(running), completions=list(completions))
    return asyncio.ensure_future(st.polling.poll(agent, req))


async def held(st: AppState, agent: AgentState, poll_id: str) -> asyncio.Task[PollResponse]:
    """A poll that found nothing to do and now waits for work."""
    pending = poll(st, agent, poll_id)
    await settle()
    assert not pending.done() and agent.id in st.fleet.waiting
    return pending


async def task(st: AppState, task_id: str) -> dict[str, Any]:
    return await st.tasks.get(task_id, ADMIN)


async def after_hold(st: AppState, pending: asyncio.Task[PollResponse]) -> PollResponse:
    """The answer of a held poll once its hold is over."""
    await settle()
    clock_of(st).advance(HOLD)
    return await within(pending)


async def expire_all(st: AppState) -> None:
    """Move the clock past every lease's TTL and run a reaper pass."""
    clock_of(st).advance(TTL + 1)
    await st.reaper.reap_once()


# -- lease expiry -----------------------------------------------------------------------------

async def test_a_lease_not_renewed_expires_past_its_ttl_and_the_task_is_requeued(st: AppState) -> None:
    agent = await register(st, "a")
    task_id = await submit(st, retry={"backoff_s": 0})
    (lease,) = (await within(poll(st, agent, "poll-a-0001"))).leases
    assert (lease.task_id, lease.epoch, lease.attempt) == (task_id, 1, 1)

    clock_of(st).advance(TTL - 1)
    await st.reaper.reap_once()
    assert (await task(st, task_id))["state"] == "running"  # not yet due
    st.leasing.heartbeat(agent, task_id, HeartbeatRequest(epoch=1))
    clock_of(st).advance(TTL - 1)  # 2*TTL-2 since the claim, TTL-1 since the heartbeat
    await st.reaper.reap_once()
    assert (await task(st, task_id))["state"] == "running"

    clock_of(st).advance(2)  # TTL+1 without a heartbeat
    await st.reaper.reap_once()
    record = await task(st, task_id)
    assert record["state"] == "queued" and record["attempts"] == 1
    assert "lease expired: no heartbeat from agent a" in record["error"]
    assert task_id not in st.fleet.leases and st.fleet.counters["leases_expired"] == 1
    with pytest.raises(LeaseLost):
        st.leasing.heartbeat(agent, task_id, HeartbeatRequest(epoch=1))

    (again,) = (await within(poll(st, await register(st, "b"), "poll-b-0001"))).leases
    assert (again.task_id, again.epoch, again.attempt) == (task_id, 2, 2)


# -- the restart grace --------------------------------------------------------------------------

async def test_after_a_restart_agents_have_the_grace_to_reattach_before_their_leases_are_reaped(
        settings: CoordinatorSettings) -> None:
    first = ManualClock()
    async with coordinator_on(settings, first) as st:
        back, gone = await register(st, "back"), await register(st, "gone")
        submitted = {await submit(st), await submit(st)}
        (kept,) = [x.task_id for x in (await within(poll(st, back, "poll-back-01"))).leases]
        (lost,) = [x.task_id for x in (await within(poll(st, gone, "poll-gone-01"))).leases]
        assert {kept, lost} == submitted
        back_id = back.id

    # a new process: its monotonic clock starts again; the wall clock has moved on
    async with coordinator_on(settings, ManualClock(start=first.time() + 5)) as st:
        assert set(st.fleet.leases) == {kept, lost}
        clock_of(st).advance(TTL + 5)  # past a TTL, within the grace: nothing is reaped
        await st.reaper.reap_once()
        assert [(await task(st, t))["state"] for t in (kept, lost)] == ["running", "running"]

        st.leasing.heartbeat(st.fleet.agents[back_id], kept, HeartbeatRequest(epoch=1))  # re-attached
        clock_of(st).advance(GRACE - TTL - 4)  # the grace is over; the heartbeat's TTL is not
        await st.reaper.reap_once()
        assert (await task(st, kept))["state"] == "running"
        record = await task(st, lost)
        assert record["state"] == "queued" and "no heartbeat from agent gone" in record["error"]


async def test_the_restart_grace_is_at_least_one_ttl(settings: CoordinatorSettings) -> None:
    settings = settings.model_copy(update={"restart_grace_s": 0.0})
    async with coordinator_on(settings, ManualClock()) as st:
        agent = await register(st, "a")
        task_id = await submit(st)
        await within(poll(st, agent, "poll-a-0001"))
    async with coordinator_on(settings, ManualClock()) as st:
        clock_of(st).advance(TTL - 1)
        await st.reaper.reap_once()
        assert (await task(st, task_id))["state"] == "running"
        clock_of(st).advance(2)
        await st.reaper.reap_once()
        assert (await task(st, task_id))["state"] == "queued"


# -- the reaper's retry backoff ---------------------------------------------------------------

async def test_a_requeued_task_is_not_run_before_its_backoff_ends_and_the_backoff_doubles(st: AppState) -> None:
    first, second = await register(st, "first"), await register(st, "second")
    task_id = await submit(st, retry={"max_attempts": 3, "backoff_s": 10, "backoff_max_s": 100})
    await within(poll(st, first, "poll-first-1"))
    for attempt, backoff in ((1, 10.0), (2, 20.0)):  # each delay is the backoff ±20 %
        await expire_all(st)
        assert (await task(st, task_id))["pending_reason"].startswith("retry backoff: eligible again in")
        waiting = await held(st, second, f"poll-second-{attempt}")
        clock_of(st).advance(backoff * 0.8 - 0.1)
        await st.reaper.reap_once()
        await settle()
        assert not waiting.done() and (await task(st, task_id))["state"] == "queued"
        clock_of(st).advance(backoff * 0.4 + 0.2)  # past the longest delay it could have drawn
        await st.reaper.reap_once()  # moves it out of backoff and wakes the waiting poll
        (lease,) = (await within(waiting)).leases
        assert (lease.task_id, lease.attempt) == (task_id, attempt + 1)
        first, second = second, first


async def test_bounded_attempts_end_in_failed(st: AppState) -> None:
    agent = await register(st, "a")
    task_id = await submit(st, retry={"max_attempts": 2, "backoff_s": 0})
    for n in range(1, 3):
        (lease,) = (await within(poll(st, agent, f"poll-a-000{n}"))).leases
        assert lease.attempt == n
        await expire_all(st)
    record = await task(st, task_id)
    assert record["state"] == "failed" and record["attempts"] == 2
    assert "gave up after 2 attempt(s)" in record["error"]
    assert task_id not in st.fleet.queue and task_id not in st.fleet.leases


# -- handoff races ----------------------------------------------------------------------------

async def test_a_handoff_whose_poll_ends_first_is_delivered_by_the_next_poll(st: AppState) -> None:
    agent = await register(st, "a")
    first = await held(st, agent, "poll-a-0001")
    submitting = asyncio.ensure_future(submit(st))
    await asyncio.sleep(0)  # the submit has reserved the waiting poll and is committing
    assert agent.reserved == 1
    clock_of(st).advance(HOLD)  # ...when that poll's hold ends
    assert (await within(first)).leases == []
    task_id = await within(submitting)
    assert (await task(st, task_id))["state"] == "running"  # claimed in the submit's commit

    (lease,) = (await within(poll(st, agent, "poll-a-0002"))).leases  # its running list is empty
    assert (lease.task_id, lease.epoch, lease.attempt) == (task_id, 1, 1)
    again = await after_hold(st, poll(st, agent, "poll-a-0003", running=(LeaseRef(task_id=task_id, epoch=1),)))
    assert again.lost == [] and (await task(st, task_id))["attempts"] == 1


async def test_a_handoff_never_delivered_is_lost_to_lease_expiry(st: AppState) -> None:
    agent = await register(st, "silent")
    first = await held(st, agent, "poll-s-0001")
    submitting = asyncio.ensure_future(submit(st, retry={"backoff_s": 0}))
    await asyncio.sleep(0)
    clock_of(st).advance(HOLD)
    await within(first)
    task_id = await within(submitting)
    await expire_all(st)  # the agent never polls again
    record = await task(st, task_id)
    assert record["state"] == "queued" and "no heartbeat from agent silent" in record["error"]


async def test_a_retried_poll_gets_the_same_lease_and_a_new_poll_does_not(st: AppState) -> None:
    agent = await register(st, "a")
    first = await held(st, agent, "poll-a-0001")
    task_id = await submit(st)  # handed to the held poll
    (lease,) = (await within(first)).leases
    # the reply was lost: the agent retries the same poll, running nothing yet
    (retried,) = (await within(poll(st, agent, "poll-a-0001"))).leases
    assert (retried.task_id, retried.epoch) == (lease.task_id, lease.epoch) == (task_id, 1)
    assert (await task(st, task_id))["attempts"] == 1
    # a poll with a new id that does not run it: the agent restarted and lost it
    pending = poll(st, agent, "poll-a-0002")
    await until(lambda: task_id in st.fleet.queue)
    record = await task(st, task_id)
    assert record["state"] == "queued" and "no longer runs it" in record["error"]
    assert (await after_hold(st, pending)).leases == []  # in retry backoff


async def test_a_superseding_poll_takes_the_handoff_reserved_for_the_one_it_replaced(st: AppState) -> None:
    agent = await register(st, "a")
    old = await held(st, agent, "poll-a-0001")
    submitting = asyncio.ensure_future(submit(st))
    await asyncio.sleep(0)  # reserved for the old poll, committing
    new = poll(st, agent, "poll-a-0002")  # the agent's connection dropped; it polls again
    assert (await within(old)).leases == []  # superseded
    task_id = await within(submitting)
    (lease,) = (await within(new)).leases
    assert (lease.task_id, lease.epoch) == (task_id, 1)
    assert st.fleet.leases[task_id].claim_id == "poll-a-0002"  # a retry of the new poll gets it again


async def test_two_held_polls_one_submit_only_one_gets_it(st: AppState) -> None:
    a, b = await register(st, "a"), await register(st, "b")
    polls = {a.id: await held(st, a, "poll-a-0001"), b.id: await held(st, b, "poll-b-0001")}
    task_id = await submit(st)
    await within(asyncio.wait(polls.values(), return_when=asyncio.FIRST_COMPLETED))
    await settle()
    done = [agent_id for agent_id, p in polls.items() if p.done()]
    assert len(done) == 1
    (lease,) = polls[done[0]].result().leases
    assert lease.task_id == task_id and st.fleet.leases[task_id].agent_id == done[0]
    (other,) = set(polls) - set(done)
    assert (await after_hold(st, polls[other])).leases == []


async def test_two_polls_racing_for_one_queued_task_only_one_claims_it(st: AppState) -> None:
    task_id = await submit(st)  # queued: nobody is polling
    a, b = await register(st, "a"), await register(st, "b")
    racing = [poll(st, a, "poll-a-0001"), poll(st, b, "poll-b-0001")]
    await within(asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED))
    await settle()
    winners = [p.result().leases for p in racing if p.done()]
    assert [[x.task_id for x in leases] for leases in winners] == [[task_id]]
    (loser,) = [p for p in racing if not p.done()]  # it waits for other work
    assert (await after_hold(st, loser)).leases == [] and (await task(st, task_id))["attempts"] == 1
