"""What every runner shares: its command line, the timing rules, and the one line it reports.

Stdlib only (it runs inside each peer's venv). The rules, the same for every system:
- **submit-to-start**: ``time.time()`` just before the client's submit call, and ``time.time()``
  (or ``date +%s.%N``, the same clock) as the first thing the task body does on the worker; the
  latency is start - submit. Tasks go one at a time: the next is submitted only after the previous
  one finished, so workers are idle when each task arrives.
- **throughput**: N no-op tasks submitted as fast as the client allows (in bulk where the system
  has a bulk call); the clock runs from the first submit to the moment the client knows all N
  finished.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

RESULT_TAG = "BENCH_RESULT "


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (the same rule as bench.core)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(samples_ms: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(samples_ms), "p99": percentile(samples_ms, 99), "max": max(samples_ms),
            "mean": statistics.fmean(samples_ms)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency-n", type=int, default=200)
    ap.add_argument("--throughput-n", type=int, default=2000)
    ap.add_argument("--workdir", required=True, help="scratch space (databases, logs); the driver removes it")
    return ap.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = predicate()
        except Exception:
            got = None
        if got:
            return got
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def latency_loop(n: int, one: Callable[[], float]) -> list[float]:
    """Run ``one`` n times; it returns the task's start stamp, and submit stamps are taken here."""
    samples = []
    for _ in range(n):
        t_submit = time.time()
        t_start = one()
        samples.append((t_start - t_submit) * 1000)
    return samples


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as s:`` ... ``s[0]`` is the elapsed seconds afterwards."""
    out: list[float] = []
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - t0)


def report(system: str, version: str, latency_ms: list[float], throughput_n: int, throughput_s: float,
           **extra: Any) -> None:
    """Print the one line the driver reads (everything else a runner prints is its log)."""
    body = {"system": system, "version": version, "latency_n": len(latency_ms), "latency_ms": latency_ms,
            "throughput_n": throughput_n, "throughput_s": throughput_s,
            "tasks_per_s": throughput_n / throughput_s if throughput_s > 0 else 0.0,
            "python": sys.version.split()[0], "pid": os.getpid(), **extra}
    sys.stdout.write(RESULT_TAG + json.dumps(body) + "\n")
    sys.stdout.flush()


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()
