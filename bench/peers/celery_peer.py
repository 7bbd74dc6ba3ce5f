"""Celery with a Redis broker under the shared rules (bench/peers/measure.py).

Starts its own ``redis-server`` (Debian's) on a free loopback port with persistence off, and a
prefork worker with 2 processes (one per core), then stops both.
"""

from __future__ import annotations

import os
import subprocess
import sys

from bench.peers.measure import free_port, latency_loop, log, parse_args, report, stopwatch, wait_until


def main() -> None:
    args = parse_args()
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    os.environ["BENCH_REDIS_URL"] = url
    log_path = os.path.join(args.workdir, "celery.log")
    with open(log_path, "ab") as out:  # the children keep their own copy of the descriptor
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", args.workdir], stdout=out, stderr=subprocess.STDOUT)
    worker = None
    try:
        import celery
        import redis as redis_client
        from celery.result import ResultSet

        from bench.peers.celery_tasks import app, noop, stamp

        wait_until(lambda: redis_client.Redis.from_url(url).ping(), 20, "redis-server")
        with open(log_path, "ab") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "bench.peers.celery_tasks", "worker", "-P", "prefork", "-c",
                 "2", "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "BENCH_REDIS_URL": url})
        wait_until(lambda: app.control.ping(timeout=0.5), 60, "the celery worker")
        latency_loop(5, lambda: stamp.delay().get(timeout=30))
        log(f"celery: submit-to-start x{args.latency_n}")
        samples = latency_loop(args.latency_n, lambda: stamp.delay().get(timeout=30))
        log(f"celery: throughput x{args.throughput_n}")
        with stopwatch() as elapsed:  # a loop of delay() publishes faster than group(...).apply_async()
            ResultSet([noop.delay() for _ in range(args.throughput_n)]).join_native(timeout=600)
    finally:
        for proc in (worker, redis):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    report("celery", celery.__version__, samples, args.throughput_n, elapsed[0])


if __name__ == "__main__":
    main()
