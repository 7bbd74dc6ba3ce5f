"""What a process per task costs on this machine, with no scheduler at all.

    python -m bench.floor [--n 2000] [--concurrency 32]

MLOC runs every task in a new child process. This measures the two floors that puts under its
submit-to-start latency and its throughput, so they can be told apart from MLOC's own overhead:

- **start**: ``time.time()``, then start ``date +%s.%N`` (vfork + exec, its stdout on a pipe) and
  read its stamp back: the latency of starting a process and having it run, nothing else;
- **throughput**: N ``true`` processes from one asyncio loop, ``concurrency`` at a time, each with
  the three pipes MLOC's agent gives a task (stdout, stderr, progress) followed by ``add_reader``
  and its exit seen through a pidfd (what ``agent/mloc_agent/runner.py`` does), and the CPU that
  costs the parent and the children per process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import time

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


async def _one(loop: asyncio.AbstractEventLoop, argv: list[str], stdin: int, env: dict[str, str]) -> None:
    pipes = [os.pipe() for _ in range(3)]
    proc = subprocess.Popen(argv, stdin=stdin, stdout=pipes[0][1], stderr=pipes[1][1], env=env, cwd="/",
                            start_new_session=True, pass_fds=(pipes[2][1],))
    for _, w in pipes:
        os.close(w)
    closed = []
    for r, _ in pipes:
        fut = loop.create_future()
        closed.append(fut)

        def readable(r: int = r, fut: asyncio.Future[None] = fut) -> None:
            if not os.read(r, 65536):
                loop.remove_reader(r)
                os.close(r)
                fut.set_result(None)

        loop.add_reader(r, readable)
    pidfd = os.pidfd_open(proc.pid)
    exited = loop.create_future()

    def on_exit() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        exited.set_result(proc.wait())

    loop.add_reader(pidfd, on_exit)
    await exited
    await asyncio.gather(*closed)


async def spawn_throughput(n: int, concurrency: int) -> tuple[float, float, float]:
    """(processes/s, parent CPU ms per process, children CPU ms per process)."""
    loop = asyncio.get_running_loop()
    argv, env = [shutil.which("true") or "true"], dict(os.environ)
    stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    gate = asyncio.Semaphore(concurrency)

    async def gated() -> None:
        async with gate:
            await _one(loop, argv, stdin, env)

    before, t0 = os.times(), time.perf_counter()
    await asyncio.gather(*(gated() for _ in range(n)))
    elapsed, after = time.perf_counter() - t0, os.times()
    os.close(stdin)
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
