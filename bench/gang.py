"""Gang scheduling latency (issue 12): submit of a ``resources.nodes: M`` task -> every member's rank started.

    python -m bench.gang [--nodes 2] [--rounds 5]

Real processes on loopback (``tests/harness.py``): a coordinator and M agents. Each round submits one
gang and reads back, from the task's logs, when each member's process started (a shell ``date``) and,
for a torchrun gloo job (tests/gang_allreduce.py), when each rank's Python started. The figures are
wall-clock differences on one machine, so both ends use the same clock.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.harness import Agent, Coordinator, wait_for
from tests.test_gangs import torchrun


def one_round(coord: Coordinator, command: str, nodes: int, pattern: str) -> float:
    """Seconds from the submit to the last member's start line."""
    sent = time.time()
    task_id = coord.submit({"taskType": "command", "command": command, "resources": {"nodes": nodes}})["id"]
    done = coord.wait_state(task_id, {"succeeded", "failed"}, timeout=300)
    logs = coord.logs(task_id)
    if done["state"] != "succeeded":
        raise SystemExit(f"gang task failed: {done.get('error')}\n{logs[-2000:]}")
    starts = [float(t) for t in re.findall(pattern, logs)]
    if len(starts) != nodes:
        raise SystemExit(f"expected {nodes} start lines, found {len(starts)}:\n{logs[-2000:]}")
    return max(starts) - sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        coord = Coordinator(Path(tmp)).start()
        agents = [Agent(coord, f"node{i}").start() for i in range(args.nodes)]
        try:
            wait_for(lambda: all(a.connected() for a in agents), 30, "agents connected")
            shell = "echo \"[start] $(date +%s.%N)\"; sleep 1"  # rank 0 may not end before the others start
            process = [one_round(coord, shell, args.nodes, r"\[start\] (\d+\.\d+)") for _ in range(args.rounds)]
            ranks = [one_round(coord, torchrun("--steps", "2"), args.nodes, r"started_at=(\d+\.\d+)")
                     for _ in range(args.rounds)]
        finally:
            for agent in agents:
                agent.stop()
            coord.stop()
    for label, values in (("every member's task process started", process),
                          ("every torchrun rank started (gloo job)", ranks)):
        print(f"gang of {args.nodes}, submit -> {label}: median {statistics.median(values) * 1000:.0f} ms, "
              f"min {min(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms ({len(values)} rounds)")


if __name__ == "__main__":
    main()
