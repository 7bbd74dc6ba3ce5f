"""Ray tasks under the shared rules (bench/peers/measure.py), on a local ``ray.init``.

Ray runs a task as a call in a pooled, already-started worker process and keeps everything in
memory (no disk), so it is the fastest of the peers: the figure MLOC aims at.
"""

from __future__ import annotations

import os
import time

from bench.peers.measure import latency_loop, log, parse_args, report, stopwatch


def main() -> None:
    args = parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 << 20,
             _temp_dir=os.path.join(args.workdir, "ray"))

    @ray.remote
    def stamp() -> float:
        return time.time()

    @ray.remote
    def noop() -> None:
        return None

    try:
        ray.get([noop.remote() for _ in range(50)])  # start the worker pool before timing
        latency_loop(5, lambda: ray.get(stamp.remote()))
        log(f"ray: submit-to-start x{args.latency_n}")
        samples = latency_loop(args.latency_n, lambda: ray.get(stamp.remote()))
        log(f"ray: throughput x{args.throughput_n}")
        with stopwatch() as elapsed:
            ray.get([noop.remote() for _ in range(args.throughput_n)])
    finally:
        ray.shutdown()
    report("ray", ray.__version__, samples, args.throughput_n, elapsed[0])


if __name__ == "__main__":
    main()
