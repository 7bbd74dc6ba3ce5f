"""What a process per task costs on this machine, with no scheduler at all.

    python -m bench.floor [--n 2000] [--concurrency 32]

MLOC runs every task in a new child process. This measures the two floors that puts under its
submit-to-start latency and its throughput, so they can be told apart from MLOC's own overhead:

- **start**: ``time.time()``, then start ``date +%s.%N`` (vfork + exec, its stdout on a pipe) and
  read its stamp back: the latency of starting a process and having it run, nothing else;
- **throughput**: N ``true`` processes from one asyncio loop, ``concurrency`` at a time, started by
  the agent's own ``TaskProcess`` (``agent/mloc_agent/runner.py``: the three pipes a task gets,
  followed with ``add_reader``, its exit seen through a pidfd), and the CPU that costs the parent
  and the children per process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from bench.peers.measure import percentile


def start_latency(n: int) -> list[float]:
    """ms from just before starting ``date`` to the time stamp it prints."""
    date = shutil.which("date") or "date"
    samples = []
    for _ in range(n + 20):
        r, w = os.pipe()
        t0 = time.time()
        proc = subprocess.Popen([date, "+%s.%N"], stdin=subprocess.DEVNULL, stdout=w, start_new_session=True)
        os.close(w)
        out = b""
        while chunk := os.read(r, 100):
            out += chunk
        os.close(r)
        proc.wait()
        samples.append((float(out) - t0) * 1000)
    return samples[20:]  # the first starts warm the page cache


async def spawn_throughput(n: int, concurrency: int) -> tuple[float, float, float]:
    """(processes/s, parent CPU ms per process, children CPU ms per process), each process started,
    followed and reaped by the agent's own ``TaskProcess`` (its pipes and pidfd), nothing else."""
    from mloc_agent.runner import TaskProcess  # the agent's code, not a copy of it
    from mloc_agent.warden import Warden

    argv, env, cwd = [shutil.which("true") or "true"], dict(os.environ), Path("/")
    warden = Warden()  # not started: only its environment mark is used
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            proc = TaskProcess.start(argv, env, cwd, warden, lambda _stream, _data: None, lambda _data: None)
            await proc.wait()
            await proc.output_closed()

    before, t0 = os.times(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    elapsed, after = time.perf_counter() - t0, os.times()
    parent = (after.user + after.system) - (before.user + before.system)
    children = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    return n / elapsed, parent / n * 1000, children / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="processes for the throughput floor")
    ap.add_argument("--latency-n", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    samples = start_latency(args.latency_n)
    rate, parent_ms, children_ms = asyncio.run(spawn_throughput(args.n, args.concurrency))
    print(f"start a process and have it run (date +%s.%N, {args.latency_n} one at a time, no scheduler):")
    print(f"  p50 {statistics.median(samples):.2f} ms   p99 {percentile(samples, 99):.2f} ms")
    print(f"process per task from one asyncio loop ({args.n} x true, {args.concurrency} at a time, 3 pipes + pidfd):")
    print(f"  {rate:,.0f} processes/s   CPU per process: parent {parent_ms:.2f} ms, child {children_ms:.2f} ms "
          f"({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
