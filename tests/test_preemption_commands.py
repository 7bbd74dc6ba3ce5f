"""Preemption of ``command`` tasks through a real coordinator and agent: one that opts in
(``checkpoint_on_preempt``) gets SIGUSR1 and the preempt file, its $MLOC_CHECKPOINT_DIR is uploaded
when it exits within the grace, and the next attempt finds it in $MLOC_RESUME_DIR; one that ignores
the signal is stopped at the end of the grace; one that did not opt in is stopped at once and starts
over. Every such attempt ends ``preempted``, requeued at once, not a failed attempt."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Coordinator, wait_for

GRACE = 3.0

# counts on from the state a preempted attempt saved; on SIGUSR1 (with the preempt file there) saves and exits 0
COUNTER = r"""
n=0
if [ -f "$MLOC_RESUME_DIR/count" ]; then n=$(cat "$MLOC_RESUME_DIR/count"); echo "resumed at $n"; fi
trap 'test -f "$MLOC_PREEMPT_FILE" && echo $n > "$MLOC_CHECKPOINT_DIR/count" && echo "saved $n" && exit 0' USR1
while [ $n -lt 200 ]; do n=$((n+1)); echo "{\"step\": $n, \"total\": 200}" > "$MLOC_PROGRESS"; sleep 0.05; done
"""


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    coord = Coordinator(tmp_path, lease_ttl_s=60, heartbeat_s=0.5, poll_hold_s=10, extra_env={
        "MLOC_PREEMPT_MIN_RUNTIME_S": "1", "MLOC_PREEMPT_GRACE_S": str(GRACE)}).start()
    try:
        yield coord
    finally:
        coord.stop()


def preempt_it(coord: Coordinator, spec: dict, *, at_step: int = 5) -> tuple[str, str, float]:
    """Run ``spec`` (class low) on the only slot, then submit a high task: (low id, high id, seconds to start)."""
    low = coord.submit({**spec, "priority_class": "low"})["id"]
    wait_for(lambda: ((coord.task(low).get("progress") or {}).get("step") or 0) >= at_step, 30, "the low task running")
    t0 = time.monotonic()
    high = coord.submit({"taskType": "command", "command": "echo urgent", "priority_class": "high"})["id"]
    wait_for(lambda: coord.task(high)["started_at"], 30, "the high task to start")
    return low, high, time.monotonic() - t0


def outcomes(coord: Coordinator, task_id: str) -> list[str]:
    return [a["outcome"] for a in coord.task(task_id)["attempt_history"]]


def test_a_command_that_opts_in_checkpoints_and_resumes_from_its_checkpoint_dir(coordinator, start_agent) -> None:
    start_agent("box", max_tasks=1)
    low, high, to_start = preempt_it(coordinator, {"taskType": "command", "command": COUNTER,
                                                    "checkpoint_on_preempt": True, "retry": {"max_attempts": 1}})
    assert to_start < GRACE  # it saved and exited on the signal: no wait for the grace
    assert coordinator.wait_state(high, "succeeded", timeout=30)
    done = coordinator.wait_state(low, {"succeeded", "failed"}, timeout=60)
    assert done["state"] == "succeeded", done["error"]
    assert outcomes(coordinator, low) == ["preempted", "succeeded"]
    assert done["preemptions"] == 1 and done["failed_attempts"] == 0  # max_attempts 1 was not used up
    logs = coordinator.logs(low)
    saved = int(logs.split("saved ")[1].split()[0])
    assert 0 < saved < 200 and f"resumed at {saved}" in logs
    assert done["last_checkpoint"]["name"].startswith("checkpoints/step-")


def test_a_command_ignoring_the_signal_is_stopped_at_the_end_of_the_grace(coordinator, start_agent) -> None:
    start_agent("box", max_tasks=1)
    stubborn = ("trap '' USR1; n=0; while [ $n -lt 2000 ]; do n=$((n+1)); "
                "echo \"{\\\"step\\\": $n}\" > \"$MLOC_PROGRESS\"; sleep 0.05; done")
    low, high, to_start = preempt_it(coordinator, {"taskType": "command", "command": stubborn,
                                                    "checkpoint_on_preempt": True})
    assert to_start >= GRACE - 0.5  # the slot came free only when the agent stopped it
    assert "did not stop within the 3s grace" in coordinator.logs(low)
    coordinator.wait_state(high, "succeeded", timeout=30)
    assert outcomes(coordinator, low)[0] == "preempted"
    coordinator.http.post(f"/api/v1/tasks/{low}/cancel")


def test_a_command_that_did_not_opt_in_is_stopped_at_once_and_starts_over(coordinator, start_agent) -> None:
    start_agent("box", max_tasks=1)
    low, high, to_start = preempt_it(coordinator, {"taskType": "command", "command": COUNTER})
    assert to_start < GRACE
    assert "cannot checkpoint on request: stopping it" in coordinator.logs(low)
    coordinator.wait_state(high, "succeeded", timeout=30)
    done = coordinator.wait_state(low, {"succeeded", "failed"}, timeout=60)
    assert outcomes(coordinator, low) == ["preempted", "succeeded"] and "resumed at" not in coordinator.logs(low)
    assert done["state"] == "succeeded"
