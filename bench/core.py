"""Coordinator benchmark (issue 2): submit-to-lease latency and end-to-end throughput.

    python -m bench.core [--latency-n 200] [--throughput-n 2000] [--agents 4] [--slots 8]

Latency: a light in-process agent holds a long poll; 200 tasks are submitted one at a time and
we time from sending the submit to the poll reply carrying its lease (same clock, loopback).
Throughput: real agent processes (``mloc start --node-type worker``) run 2,000 no-op command
tasks (``true``) submitted in bulk; we time from the submit to the last task succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.peers.measure import percentile
from tests.harness import Agent, Coordinator, wait_for

PROTO = {"X-MLOC-Protocol": "1"}


async def register(http: aiohttp.ClientSession, url: str, join_token: str, name: str) -> str:
    body = {"agent_version": "bench", "name": name, "inventory": {"hostname": name}, "task_types": ["command"],
            "max_tasks": 1}
    headers = {**PROTO, "X-MLOC-Join-Token": join_token}
    return (await post_json(http, f"{url}/api/v1/agents/register", body, headers))["credential"]


async def post_json(http: aiohttp.ClientSession, url: str, body: dict, headers: dict | None = None) -> dict:
    async with http.post(url, json=body, headers=headers or {}) as resp:
        resp.raise_for_status()
        return await resp.json()


async def latency(coord: Coordinator, n: int) -> list[float]:
    """ms from sending a submit to the waiting agent's poll reply carrying the lease. The client is
    aiohttp, as the agent's protocol client is (httpx would add ~0.6 ms per call here)."""
    url = coord.url
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        cred = await register(http, url, coord.join_token, f"lat-{uuid.uuid4().hex[:6]}")
        auth = {**PROTO, "Authorization": f"Bearer {cred}"}
        admin = {"Authorization": f"Bearer {coord.admin_token}"}  # loopback is no admin
        samples = []
        for _ in range(n):
            poll = asyncio.create_task(post_json(http, f"{url}/api/v1/agents/poll", {
                "poll_id": uuid.uuid4().hex, "free_slots": 1, "running": []}, auth))
            await asyncio.sleep(0.01)  # let the poll be held
            t0 = time.perf_counter()
            await post_json(http, f"{url}/api/v1/tasks", {"taskType": "command", "command": "true"}, admin)
            lease = (await poll)["leases"][0]
            t1 = time.perf_counter()
            samples.append((t1 - t0) * 1000)
            await post_json(http, f"{url}/api/v1/leases/{lease['task_id']}/complete",
                            {"epoch": lease["epoch"], "outcome": "succeeded", "exit_code": 0}, auth)
        return samples


def throughput(coord: Coordinator, n: int, agents: int, slots: int) -> tuple[float, float]:
    procs = [Agent(coord, f"tp-{i}", max_tasks=slots).start() for i in range(agents)]
    try:
        time.sleep(1.0)
        tasks = [{"taskType": "command", "command": ["true"]} for _ in range(n)]
        t0 = time.perf_counter()
        for i in range(0, n, 500):
            resp = coord.http.post("/api/v1/tasks", content=json.dumps(tasks[i:i + 500]))
            assert resp.status_code == 201, resp.text
        submit_s = time.perf_counter() - t0

        def done() -> bool:
            total = coord.http.get("/api/v1/tasks", params={"state": "succeeded", "page_size": 1}).json()["total"]
            return total >= n

        wait_for(done, 600, f"{n} tasks succeeded", interval=0.02)
        elapsed = time.perf_counter() - t0
        failed = coord.http.get("/api/v1/tasks", params={"state": "failed", "page_size": 1}).json()["total"]
        assert failed == 0, f"{failed} tasks failed"
        return n / elapsed, submit_s
    finally:
        for p in procs:
            p.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency-n", type=int, default=200)
    ap.add_argument("--throughput-n", type=int, default=2000)
    ap.add_argument("--agents", type=int, default=2)
    ap.add_argument("--slots", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        coord = Coordinator(Path(tmp), heartbeat_s=10, lease_ttl_s=45, poll_hold_s=25, restart_grace_s=60,
                            extra_env={"MLOC_LOG_LEVEL": "WARNING"}).start()
        try:
            samples = asyncio.run(latency(coord, args.latency_n))
            rate, submit_s = throughput(coord, args.throughput_n, args.agents, args.slots)
        finally:
            coord.stop()
    print(f"submit-to-lease latency ({args.latency_n} tasks, one at a time, idle agent holding a poll):")
    print(f"  p50 {statistics.median(samples):.2f} ms   p99 {percentile(samples, 99):.2f} ms   "
          f"max {max(samples):.2f} ms")
    print(f"end-to-end throughput ({args.throughput_n} no-op command tasks, "
          f"{args.agents} agents x {args.slots} slots):")
    print(f"  {rate:.0f} tasks/s   (bulk submit took {submit_s * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
