"""Preemption: the victim rules as tables (services/preemption.py), and the whole path in-process on
the injected clock: min runtime, the per-hour bound, the notice in heartbeats and the held poll, the
``preempted`` completion that requeues at once without counting as a failed attempt, and a drain
with a deadline. Real coordinator state on a real SQLite file (app.open_state), no sleeping."""

from __future__ import annotations

from pathlib import Path

import pytest
from mloc_server.clock import ManualClock
from mloc_server.services.preemption import Policy, Running, Waiting, choose, protection, victims_on
from mloc_server.services.scheduler import AgentView, Requirement
from mloc_server.settings import CoordinatorSettings
from mloc_server.state import AppState
from mloc_shared.protocol import Completion, CompletionRef, Gpu, HeartbeatRequest, LeaseRef

from tests.test_leasing_clock import (
    ADMIN,
    clock_of,
    coordinator_on,
    held,
    poll,
    register,
    settle,
    submit,
    task,
    within,
)

pytestmark = pytest.mark.timeout(10)
POLICY = Policy(min_runtime_s=60, max_per_hour=2, grace_s=30)
NOW = 10_000.0


def gpu(i: int, gb: int = 24) -> Gpu:
    return Gpu(index=i, uuid=f"GPU-{i}", name="NVIDIA L4", memory_total_mb=gb * 1024)


def run(task_id: str, gpus: tuple[int, ...], cls: str = "low", *, started: float = NOW - 600,
        preempted_at: tuple[float, ...] = (), stopping: bool = False) -> Running:
    prio, preemptible = {"low": (-100, True), "normal": (0, False), "batch": (0, True), "high": (100, False)}[cls]
    return Running(task_id, gpus, cls, prio, preemptible, started, preempted_at, stopping)


def box(name: str, gpus: int, used: set[int], slots: int = 0) -> AgentView:
    return AgentView(name=name, gpus=[gpu(i) for i in range(gpus)], labels={}, task_types=frozenset({"sft"}),
                     used_gpus=used, free_slots=slots)


def high(gpus: int, cls: str = "high", prio: int = 100) -> Waiting:
    return Waiting("waiting", Requirement(task_type="sft", gpus=gpus), cls, prio)


# -- victim selection, as tables ----------------------------------------------------------------

@pytest.mark.parametrize(("need", "running", "expected"), [
    # one GPU wanted, two low tasks on one each: the most recently started one goes (least work lost)
    (1, [run("a", (0,), started=NOW - 900), run("b", (1,), started=NOW - 300)], ("b",)),
    # two GPUs wanted: the one task holding two beats two tasks holding one each (smallest set)
    (2, [run("a", (0,)), run("b", (1,)), run("c", (2, 3))], ("c",)),
    # two GPUs, no single task frees them: the pair of the lowest class
    (2, [run("a", (0,), "batch"), run("b", (1,)), run("c", (2,))], ("b", "c")),
    # a non-preemptible task is never a victim, even when it alone would make room
    (2, [run("n", (0, 1), "normal"), run("b", (2,)), run("c", (3,))], ("b", "c")),
    # a task already stopping makes room: nothing more is preempted
    (1, [run("a", (0,), stopping=True), run("b", (1,))], ()),
])
def test_the_smallest_cheapest_set_of_preemptible_lower_class_tasks_is_chosen(need, running, expected) -> None:
    used = {g for r in running for g in r.gpus}  # every GPU of the box is in use
    victims, _ = victims_on(high(need), box("box", max(used) + 1, used), running, POLICY, NOW)
    assert victims is not None and tuple(v.task_id for v in victims) == expected


@pytest.mark.parametrize(("running", "waiting", "why"), [
    ([run("n", (0,), "normal")], high(1), "task n (class normal) is not preemptible"),
    ([run("b", (0,), "batch")], high(1, "batch", 0), "task b (class batch) is not of a lower class"),
    ([run("y", (0,), started=NOW - 10)], high(1), "has run 10s of the 60s"),
    ([run("t", (0,), preempted_at=(NOW - 100, NOW - 50))], high(1), "preempted 2 time(s) in the last hour"),
])
def test_a_protected_task_is_not_preempted_and_the_reason_says_why(running, waiting, why) -> None:
    victims, reasons = victims_on(waiting, box("box", 1, {0}), running, POLICY, NOW)
    assert victims is None and any(why in r for r in reasons)
    choice, reason = choose(waiting, [(box("box", 1, {0}), running)], POLICY, NOW)
    assert choice is None and reason is not None and why in reason


def test_preemptions_older_than_the_window_do_not_count() -> None:
    old = run("t", (0,), preempted_at=(NOW - 7200, NOW - 3700))
    assert protection(old, high(1), POLICY, NOW) is None


def test_victims_are_on_one_agent_the_one_with_the_fewest() -> None:
    two_smalls = (box("a", 2, {0, 1}), [run("a1", (0,)), run("a2", (1,))])
    one_big = (box("b", 2, {0, 1}), [run("b1", (0, 1))])
    choice, _ = choose(high(2), [two_smalls, one_big], POLICY, NOW)
    assert choice is not None and (choice.agent, choice.victims) == ("b", ("b1",))
    # across agents two half-free boxes do not add up: a gang is a later extension
    halves = [(box("a", 2, {0}), [run("a1", (0,), "normal")]), (box("b", 2, {0}), [run("b1", (0,), "normal")])]
    assert choose(high(2), halves, POLICY, NOW)[0] is None


# -- the whole path, in-process on the injected clock ------------------------------------------

@pytest.fixture
def settings(tmp_path: Path) -> CoordinatorSettings:
    return CoordinatorSettings(data_dir=tmp_path, lease_ttl_s=3600, heartbeat_s=10, poll_hold_s=300,
                               restart_grace_s=60, preempt_min_runtime_s=60, preempt_max_per_hour=1,
                               preempt_grace_s=30)


@pytest.fixture
async def st(settings: CoordinatorSettings):
    async with coordinator_on(settings, ManualClock()) as state:
        yield state


async def preempted_completion(st: AppState, agent, task_id: str, epoch: int) -> None:
    """The agent's side: the task acknowledged and exited; the completion says ``preempted``."""
    done = poll(st, agent, f"poll-done-{task_id}-{epoch}", completions=(
        CompletionRef(task_id=task_id, epoch=epoch, outcome="preempted", exit_code=1, error="preempted"),))
    await settle()
    return done


async def test_min_runtime_then_preempt_requeue_at_once_and_the_attempt_is_not_a_failed_one(st: AppState) -> None:
    clock = clock_of(st)
    agent = await register(st, "a")  # one slot
    low = await submit(st, priority_class="low", retry={"max_attempts": 1})
    (lease,) = (await within(poll(st, agent, "poll-a-0001"))).leases
    clock.advance(10)
    urgent = await submit(st, priority_class="high")
    assert st.fleet.leases[low].preempt is None  # ran 10 s of the 60 s minimum
    assert "preempt_min_runtime_s" in (await task(st, urgent))["pending_reason"]

    pending = poll(st, agent, "poll-a-0002", running=(LeaseRef(task_id=low, epoch=lease.epoch),))
    await settle()
    assert not pending.done()  # held: no work, no slot
    clock.advance(51)
    await st.reaper.reap_once()  # the reaper's tick finds it past its minimum
    resp = await within(pending)
    assert resp.preempt[low].grace_s == 30 and urgent in resp.preempt[low].reason  # the held poll woke
    assert st.leasing.heartbeat(agent, low, HeartbeatRequest(epoch=lease.epoch)).preempt is not None
    assert "preempting" in (await task(st, urgent))["pending_reason"]

    done = await preempted_completion(st, agent, low, lease.epoch)
    (next_lease,) = (await within(done)).leases  # the freed slot goes to the high task at once
    assert next_lease.task_id == urgent
    record = await task(st, low)
    assert record["state"] == "queued" and record["preemptions"] == 1 and record["failed_attempts"] == 0
    assert [a["outcome"] for a in record["attempt_history"]] == ["preempted"]
    assert st.fleet.counters["preemptions"] == 1 and st.fleet.counters["leases_expired"] == 0
    assert "retry backoff" not in (record.get("pending_reason") or "")  # no backoff after a preemption

    # the high task ends: the low one (max_attempts 1) runs again, its preemption did not use up its attempt
    finish = poll(st, agent, "poll-a-0004", completions=(
        CompletionRef(task_id=urgent, epoch=next_lease.epoch, outcome="succeeded", exit_code=0),))
    (again,) = (await within(finish)).leases
    assert (again.task_id, again.attempt) == (low, 2)


async def test_one_task_is_preempted_at_most_max_per_hour(st: AppState) -> None:
    clock = clock_of(st)
    agent = await register(st, "a")
    low = await submit(st, priority_class="low")
    (lease,) = (await within(poll(st, agent, "poll-a-0001"))).leases
    clock.advance(61)
    first = await submit(st, priority_class="high")
    assert st.fleet.leases[low].preempt is not None
    done = await preempted_completion(st, agent, low, lease.epoch)
    (got,) = (await within(done)).leases
    assert got.task_id == first
    finish = poll(st, agent, "poll-a-0003", completions=(
        CompletionRef(task_id=first, epoch=got.epoch, outcome="succeeded", exit_code=0),))
    (lease,) = (await within(finish)).leases
    assert lease.task_id == low

    clock.advance(61)
    second = await submit(st, priority_class="high")
    assert st.fleet.leases[low].preempt is None  # once this hour already
    assert "preempt_max_per_hour" in (await task(st, second))["pending_reason"]
    clock.advance(3600)
    st.leasing.heartbeat(agent, low, HeartbeatRequest(epoch=lease.epoch))
    await st.reaper.reap_once()
    assert st.fleet.leases[low].preempt is not None  # the hour is over


async def test_a_non_preemptible_task_is_never_preempted_and_the_waiting_task_says_why(st: AppState) -> None:
    clock = clock_of(st)
    agent = await register(st, "a")
    normal = await submit(st)  # the default class, normal: not preemptible
    (lease,) = (await within(poll(st, agent, "poll-a-0001"))).leases
    clock.advance(600)
    urgent = await submit(st, priority_class="high")
    await st.reaper.reap_once()
    assert st.fleet.leases[normal].preempt is None and st.fleet.counters["preemptions_requested"] == 0
    assert "is not preemptible" in (await task(st, urgent))["pending_reason"]
    assert st.leasing.heartbeat(agent, normal, HeartbeatRequest(epoch=lease.epoch)).preempt is None


async def test_an_unknown_priority_class_is_refused_naming_the_classes(st: AppState) -> None:
    from mloc_shared.errors import ValidationFailed
    from mloc_shared.taskspec import TaskSpec

    with pytest.raises(ValidationFailed) as err:
        await st.tasks.submit(TaskSpec.model_validate(
            {"taskType": "command", "command": "true", "priority_class": "urgent"}), ADMIN)
    assert err.value.field == "priority_class" and "high, low, normal" in err.value.message


async def test_a_drain_with_a_deadline_asks_every_running_task_and_the_release_is_not_a_loss(st: AppState) -> None:
    a, b = await register(st, "a"), await register(st, "b")
    job = await submit(st)  # normal: not preemptible, but a drain with notice applies to every task
    (lease,) = (await within(poll(st, a, "poll-a-0001"))).leases
    waiting_b = await held(st, b, "poll-b-0001")
    await st.agents.set_state("a", "draining")
    st.leasing.request_preempt(st.fleet.leases[job], 120, "agent a drains within 120s")
    assert st.leasing.heartbeat(a, job, HeartbeatRequest(epoch=lease.epoch)).preempt.grace_s == 120
    state = await within(st.leasing.complete(a, job, Completion(epoch=lease.epoch, outcome="preempted", exit_code=0)))
    assert state == "queued"
    (moved,) = (await within(waiting_b)).leases  # b's held poll gets it at once, not after the TTL
    assert (moved.task_id, moved.attempt) == (job, 2)
    assert st.fleet.counters["preemptions"] == 1 and st.fleet.counters["leases_expired"] == 0
    assert (await task(st, job))["failed_attempts"] == 0


def test_completion_outcome_preempted_is_on_the_wire() -> None:
    c = Completion(epoch=1, outcome="preempted")
    assert Completion.model_validate_json(c.model_dump_json()).outcome == "preempted"
    assert LeaseRef(task_id="x", epoch=1).epoch == 1


def test_checkpoint_on_preempt_is_for_commands_only() -> None:
    import json

    from mloc_shared.errors import ValidationFailed
    from mloc_shared.spec_parsing import parse_task

    ok = parse_task(json.dumps({"taskType": "command", "command": "true", "checkpoint_on_preempt": True}).encode())
    assert ok.checkpoint_on_preempt is True and ok.wire()["checkpoint_on_preempt"] is True
    with pytest.raises(ValidationFailed) as err:
        sft = {"taskType": "sft", "checkpoint_on_preempt": True, "model": {"source": {"identifier": "m"}},
               "dataset": {"rows": [{"text": "x"}]}}
        parse_task(json.dumps(sft).encode())
    assert err.value.field == "checkpoint_on_preempt" and "training tasks always checkpoint" in err.value.message
