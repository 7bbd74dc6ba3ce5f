"""MLOC under the shared rules (bench/peers/measure.py): a real coordinator and real agent processes.

Submit-to-start: each task is the command ``["date", "+%s.%N"]`` run directly by the agent (no
shell, no Python start-up): its first act is to print the wall clock, which the client reads back
from the task's logs. That is MLOC's no-op: every task is a child process of the agent, so the
fork/exec is part of what a user waits for. Throughput: ``["true"]`` tasks, bulk-submitted.
Also reported, for reference only: submit-to-lease (bench.core's protocol-level figure).
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import time
from pathlib import Path

import httpx

from bench.core import latency as lease_latency
from bench.peers.measure import latency_loop, log, parse_args, report, stopwatch
from tests.harness import Agent, Coordinator, wait_for

STAMP = re.compile(r"(\d{9,}\.\d+)")
AGENTS, SLOTS = 2, 32  # bench.core's defaults


def started_at(coord: Coordinator) -> float:
    """Submit one stamping task and wait for it to finish; returns the stamp it printed."""
    resp = coord.http.post("/api/v1/tasks", json={"taskType": "command", "command": ["date", "+%s.%N"]})
    resp.raise_for_status()
    task_id = resp.json()["id"]
    # follow the logs: the server holds this request and ends it when the task is final (no polling)
    text = coord.http.get(f"/api/v1/tasks/{task_id}/logs", params={"follow": "1"}, timeout=60).text
    m = STAMP.search(text)
    if m is None:
        raise RuntimeError(f"task {task_id} printed no time stamp: {text!r} ({coord.task(task_id)['state']})")
    return float(m.group(1))


def throughput(coord: Coordinator, n: int) -> float:
    """Seconds from the first bulk submit to the last of n ``true`` tasks succeeded."""
    tasks = [{"taskType": "command", "command": ["true"]} for _ in range(n)]

    def done() -> bool:
        counted = coord.http.get("/api/v1/tasks", params={"state": "succeeded", "page_size": 1}).json()["total"]
        return counted >= n

    with stopwatch() as elapsed:
        for i in range(0, n, 500):
            resp = coord.http.post("/api/v1/tasks", content=json.dumps(tasks[i:i + 500]))
            assert resp.status_code == 201, resp.text
        wait_for(done, 600, f"{n} tasks succeeded", interval=0.02)
    failed = coord.http.get("/api/v1/tasks", params={"state": "failed", "page_size": 1}).json()["total"]
    if failed:
        raise RuntimeError(f"{failed} tasks failed")
    return elapsed[0]


def main() -> None:
    args = parse_args()
    from mloc_shared.version import __version__

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        coord = Coordinator(Path(tmp), heartbeat_s=10, lease_ttl_s=45, poll_hold_s=25, restart_grace_s=60,
                            extra_env={"MLOC_LOG_LEVEL": "WARNING"}).start()
        agents: list[Agent] = []
        try:
            lease_ms = asyncio.run(lease_latency(coord, args.latency_n))
            agents = [Agent(coord, f"bench-{i}", max_tasks=SLOTS, extra_env={"MLOC_LOG_LEVEL": "WARNING"}).start()
                      for i in range(AGENTS)]
            time.sleep(1.0)  # every agent is holding its poll
            latency_loop(5, lambda: started_at(coord))  # warm-up, not counted
            log(f"mloc: submit-to-start x{args.latency_n}")
            samples = latency_loop(args.latency_n, lambda: started_at(coord))
            log(f"mloc: throughput x{args.throughput_n}")
            seconds = throughput(coord, args.throughput_n)
        except httpx.HTTPError as exc:
            raise SystemExit(f"mloc: {exc}\n{coord.proc.output()[-3000:] if coord.proc else ''}") from exc
        finally:
            for a in agents:
                a.stop()
            coord.stop()
    report("mloc", __version__, samples, args.throughput_n, seconds, lease_latency_ms=lease_ms)


if __name__ == "__main__":
    main()
