"""Huey with SQLite storage under the shared rules (bench/peers/measure.py).

The consumer runs with Huey's default polling (it sleeps 0.1 s when the queue is empty, backing
off up to 10 s), 2 worker processes. The client waits for results with Huey's blocking ``get``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.peers.measure import latency_loop, log, parse_args, report, stopwatch

WORKERS = ["-k", "process", "-w", "2"]


def main() -> None:
    args = parse_args()
    os.environ["BENCH_HUEY_DB"] = os.path.join(args.workdir, "huey.db")
    import huey

    from bench.peers.huey_tasks import noop, stamp

    consumer_bin = Path(sys.executable).with_name("huey_consumer")
    with open(os.path.join(args.workdir, "huey.log"), "ab") as out:  # the child keeps its own descriptor
        consumer = subprocess.Popen([str(consumer_bin), "bench.peers.huey_tasks.huey", *WORKERS, "-q"],
                                    stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        latency_loop(5, lambda: stamp()(blocking=True, timeout=60))
        log(f"huey: submit-to-start x{args.latency_n}")
        samples = latency_loop(args.latency_n, lambda: stamp()(blocking=True, timeout=60))
        log(f"huey: throughput x{args.throughput_n}")
        with stopwatch() as elapsed:
            results = [noop() for _ in range(args.throughput_n)]
            for r in results:
                r.get(blocking=True, timeout=600)
    finally:
        consumer.terminate()
        try:
            consumer.wait(20)
        except subprocess.TimeoutExpired:
            consumer.kill()
    report("huey", huey.__version__, samples, args.throughput_n, elapsed[0], workers=" ".join(WORKERS))


if __name__ == "__main__":
    main()
