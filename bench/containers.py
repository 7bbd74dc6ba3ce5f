"""What running a task in its image costs over a process task, on this machine.

    python -m bench.containers [--n 8] [--image localhost/mloc-test-task:1]

A real coordinator and one agent with MLOC_CONTAINER_RUNTIME=podman (the test containers.conf from
tests/setup/containers.sh when CONTAINERS_CONF is unset); the same ``command`` task (it prints the
time it starts) run n times as a process task and n times with ``image:``, one at a time. Printed:
submit → the task's first instruction (its own clock; same host), and submit → succeeded, median and
max, for each, and the difference: the start overhead of an image: task.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from tests.harness import Agent, Coordinator

SCRIPT = "date +%s.%N"


def run(coord: Coordinator, image: str | None) -> tuple[float, float]:
    spec = {"taskType": "command", "command": SCRIPT, **({"image": image} if image else {})}
    t0 = time.time()
    task = coord.submit(spec)
    coord.wait_state(task["id"], "succeeded", timeout=120)
    done = time.time()
    stamp = float(coord.logs(task["id"], "stdout").strip().splitlines()[-1])
    return (stamp - t0) * 1000, (done - t0) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--image", default="localhost/mloc-test-task:1")
    args = parser.parse_args()
    if "CONTAINERS_CONF" not in os.environ:
        conf = Path.home() / ".cache" / "mloc" / "containers" / "containers.conf"
        if conf.exists():
            os.environ["CONTAINERS_CONF"] = str(conf)
    root = Path(tempfile.mkdtemp(prefix="mloc-bench-containers-"))
    coord = Coordinator(root).start()
    agent = Agent(coord, "bench", extra_env={"MLOC_CONTAINER_RUNTIME": "podman"}).start()
    try:
        run(coord, args.image)  # warm: the image is read once, the agent's first task
        rows = {}
        for label, image in (("process task", None), ("image: task", args.image)):
            samples = [run(coord, image) for _ in range(args.n)]
            rows[label] = ([s[0] for s in samples], [s[1] for s in samples])
        print(f"{'':14} {'submit→first instruction ms':>30} {'submit→succeeded ms':>24}   (n={args.n})")
        for label, (first, total) in rows.items():
            print(f"{label:14} {statistics.median(first):>14.0f} med {max(first):>8.0f} max "
                  f"{statistics.median(total):>10.0f} med {max(total):>8.0f} max")
        overhead = statistics.median(rows["image: task"][0]) - statistics.median(rows["process task"][0])
        print(f"start overhead of an image: task: {overhead:.0f} ms (median)")
    finally:
        agent.stop()
        coord.stop()


if __name__ == "__main__":
    main()
