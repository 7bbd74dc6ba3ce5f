"""Gangs with real processes on loopback: a coordinator and agents as users start them, command
tasks that run torchrun themselves from the standard variables (WORLD_SIZE, NNODES, NODE_RANK,
MASTER_ADDR, MASTER_PORT), and a mixed queue of gangs and small tasks on three agents."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from tests.harness import Coordinator

pytestmark = pytest.mark.timeout(240)
SCRIPT = Path(__file__).with_name("gang_allreduce.py")


def torchrun(*args: str) -> str:
    """A command task's line: torchrun on this member, told everything by the agent's variables."""
    return (f"{sys.executable} -m torch.distributed.run --nnodes=$NNODES --node-rank=$NODE_RANK "
            f"--nproc-per-node=$NPROC_PER_NODE --master-addr=$MASTER_ADDR --master-port=$MASTER_PORT "
            f"--max-restarts=0 {SCRIPT} {' '.join(args)}")


def test_a_two_agent_gang_runs_one_torch_distributed_job(coordinator: Coordinator, start_agent) -> None:
    for name in ("left", "right"):
        start_agent(name)
    t0 = time.monotonic()
    task_id = coordinator.submit({"taskType": "command", "command": torchrun("--steps", "3"),
                                  "resources": {"nodes": 2}})["id"]
    done = coordinator.wait_state(task_id, {"succeeded", "failed"}, timeout=180)
    logs = coordinator.logs(task_id)
    assert done["state"] == "succeeded", (done, logs[-3000:])
    # what the ranks themselves report: two ranks, one on each node, that summed 1 + 2 together
    seen = set(re.findall(r"\[gang\] rank=(\d) world_size=(\d) node_rank=(\d) all_reduce=(\d+)", logs))
    assert seen == {("0", "2", "0", "3"), ("1", "2", "1", "3")}, logs[-3000:]
    assert "waiting for the gang's rank 0" in logs and "ranks meet at 127.0.0.1:" in logs
    (attempt,) = done["attempt_history"]
    assert sorted(attempt["members"]) == ["left", "right"]
    assert done["progress"]["step"] == 3  # progress comes from node rank 0
    print(f"2-node gang on loopback: submit to succeeded {time.monotonic() - t0:.1f}s")


def test_three_agents_run_a_mixed_queue_of_gangs_and_small_tasks(coordinator: Coordinator, start_agent) -> None:
    for name in ("a", "b", "c"):
        start_agent(name)
    small = "sleep 0.3; echo small on $MLOC_TASK_ID"
    # node rank 0 ends last (a real job's ranks finish together; its end stops the others)
    gang = "sleep $((4 - NODE_RANK)); echo rank $NODE_RANK of $NNODES world $WORLD_SIZE"
    def submit(command: str, **spec) -> str:
        return coordinator.submit({"taskType": "command", "command": command, **spec})["id"]

    ids = [submit(small) for _ in range(4)]
    gangs = [submit(gang, resources={"nodes": 2})]
    ids += [submit(small) for _ in range(10)]
    gangs.append(submit(gang, resources={"nodes": 2}))
    finished = {t: coordinator.wait_state(t, {"succeeded", "failed"}, timeout=120) for t in [*gangs, *ids]}
    assert all(t["state"] == "succeeded" for t in finished.values()), finished
    for gang_id in gangs:
        record = finished[gang_id]
        members = record["attempt_history"][-1]["members"]
        assert len(set(members)) == 2 and record["attempts"] == 1
        logs = coordinator.logs(gang_id)
        assert "rank 0 of 2 world 2" in logs and "rank 1 of 2 world 2" in logs
    # backfill: while the first gang held two agents, the small tasks queued after it ran on the third
    first = finished[gangs[0]]
    during = [t for t in ids[4:] if first["started_at"] <= finished[t]["started_at"] <= first["finished_at"]]
    outside = [t for t in during if finished[t]["agent"] not in first["attempt_history"][-1]["members"]]
    assert outside, "no small task ran on the third agent while the gang ran"
    # no starvation: the first gang started before the small tasks submitted after it were all done
    assert first["started_at"] < max(finished[t]["finished_at"] for t in ids[4:])
    # and no deadlock: the second gang, submitted last, ran too (checked above), after the first began
    assert finished[gangs[1]]["started_at"] >= first["started_at"]
