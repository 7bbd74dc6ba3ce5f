"""The stall watchdog: a task whose step stops moving for hyperparameters.stall_timeout_s is stopped with a
one-line error naming the setting, and requeued like a lost box; a slow task that keeps stepping is not.

The bookkeeping is driven by an injected clock (no sleeping); the end-to-end cases run command tasks on a
real coordinator and agent, which report their steps on $MLOC_PROGRESS as any task does.
"""

from __future__ import annotations

import asyncio

import pytest
from mloc_agent.watchdog import StallWatchdog
from mloc_shared.hyperparams import DEFAULT_STALL_TIMEOUT_S, stall_timeout

from tests.harness import FINAL, Coordinator


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_clock_starts_at_the_first_step_and_restarts_on_every_change() -> None:
    clock = Clock()
    dog = StallWatchdog(60, clock)
    clock.now += 10_000  # loading, downloading: no step reported yet, nothing watched
    assert dog.stalled_for() is None
    dog.observe(None)
    assert dog.stalled_for() is None
    dog.observe(0)
    clock.now += 59.9
    assert dog.stalled_for() is None
    dog.observe(0)  # the same step again is no progress
    clock.now += 0.2
    assert dog.stalled_for() == pytest.approx(60.1)
    dog.observe(1)
    assert dog.stalled_for() is None
    clock.now += 61
    assert "hyperparameters.stall_timeout_s (60s)" in dog.message(dog.stalled_for() or 0)


def test_a_slow_task_that_keeps_stepping_is_never_stalled() -> None:
    clock = Clock()
    dog = StallWatchdog(60, clock)
    for step in range(1000):  # 59 s a step, for 16 hours
        dog.observe(step)
        clock.now += 59
        assert dog.stalled_for() is None


def test_a_resumed_attempt_going_back_to_an_earlier_step_counts_as_progress() -> None:
    clock = Clock()
    dog = StallWatchdog(5, clock)
    dog.observe(40)
    clock.now += 4
    dog.observe(35)
    clock.now += 4
    assert dog.stalled_for() is None


def test_watch_calls_back_once_when_stalled() -> None:
    clock = Clock()
    dog = StallWatchdog(1, clock)
    dog.observe(3)
    calls: list[str] = []

    async def on_stall(message: str) -> None:
        calls.append(message)

    async def run() -> None:
        watcher = asyncio.create_task(dog.watch(on_stall, interval_s=0.001))
        await asyncio.sleep(0.01)
        assert not calls
        clock.now += 2
        await asyncio.wait_for(watcher, 1)

    asyncio.run(run())
    assert len(calls) == 1 and "step stayed at 3" in calls[0]


def test_defaults_training_on_command_off_unless_asked() -> None:
    assert stall_timeout("sft", {}) == DEFAULT_STALL_TIMEOUT_S
    assert stall_timeout("ppo", {"stall_timeout_s": 90}) == 90
    assert stall_timeout("command", {}) is None
    assert stall_timeout("command", {"stall_timeout_s": 5}) == 5
    assert stall_timeout("inference", {}) is None


STEP = 'echo "{\\"step\\": $1, \\"total\\": 100}" > "$MLOC_PROGRESS"'


def command(script: str, timeout_s: float, attempts: int = 1) -> dict:
    return {"taskType": "command", "command": ["sh", "-c", f"step() {{ {STEP}; }}; {script}"],
            "hyperparameters": {"stall_timeout_s": timeout_s}, "retry": {"max_attempts": attempts, "backoff_s": 0}}


def test_a_hung_task_is_stopped_after_its_stall_timeout_and_retried_like_a_lost_box(
    coordinator: Coordinator, start_agent
) -> None:
    start_agent("w1")
    # retry.on_failure is off: a failing task would not be retried, a stalled one is (its box is as good as lost)
    task = coordinator.submit(command("step 1; step 2; sleep 600", 1.5, attempts=2))
    done = coordinator.wait_state(task["id"], FINAL, timeout=60)
    assert done["state"] == "failed" and done["attempts"] == 2, done
    assert "hyperparameters.stall_timeout_s (1.5s)" in done["error"] and "step stayed at 2" in done["error"]
    assert "\n" not in done["error"]
    assert "[mloc] no progress for" in coordinator.logs(task["id"])


def test_a_slow_task_that_reports_progress_is_not_stopped(coordinator: Coordinator, start_agent) -> None:
    start_agent("w1")
    task = coordinator.submit(command("for i in 1 2 3 4 5 6; do step $i; sleep 0.8; done", 1.5))
    done = coordinator.wait_state(task["id"], FINAL, timeout=60)
    assert done["state"] == "succeeded" and done["attempts"] == 1, done


def test_a_command_task_without_the_setting_is_not_watched(coordinator: Coordinator, start_agent) -> None:
    start_agent("w1")
    script = f"step() {{ {STEP}; }}; step 1; sleep 3"
    task = coordinator.submit({"taskType": "command", "command": ["sh", "-c", script]})
    assert coordinator.wait_state(task["id"], FINAL, timeout=60)["state"] == "succeeded"
