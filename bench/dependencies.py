"""What deciding blocked tasks costs a task's end: ``python -m bench.dependencies``.

    python -m bench.dependencies [--fanout 1,100,1000] [--unrelated 0,10000] [--rounds 20]

A coordinator's real state in-process (app.open_state on a temporary SQLite file, the system clock),
one agent. ``--unrelated`` tasks wait on a parent that never ends (they must cost an end nothing);
then, each round, a parent with ``--fanout`` dependents is claimed and completed, and the time from
the completion call to every dependent being in the queue is measured (the completion's commit, the
end hook's one transaction, the enqueue). Printed: p50 and p99 per (fanout, unrelated).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from mloc_server.app import open_state
from mloc_server.clock import SystemClock
from mloc_server.services.auth import Principal
from mloc_server.settings import CoordinatorSettings
from mloc_shared.protocol import Completion, Inventory, RegisterRequest
from mloc_shared.taskspec import TaskSpec

USER = Principal("bench", "user")


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _spec(**extra: object) -> TaskSpec:
    return TaskSpec.model_validate({"taskType": "command", "command": "true", **extra})


async def measure(fanout: int, unrelated: int, rounds: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        async with contextlib.AsyncExitStack() as resources:
            st = await open_state(CoordinatorSettings(data_dir=Path(tmp)), SystemClock(), resources)
            reg = await st.agents.register(RegisterRequest(
                agent_version="bench", name="bench", inventory=Inventory(hostname="bench", gpu_source="declared"),
                task_types=["command"], max_tasks=1), None)
            agent = st.fleet.agents[reg.agent_id]
            never, _ = await st.tasks.submit(_spec(name="never", resources={"labels": {"pool": "none"}}), USER)
            for start in range(0, unrelated, 5000):
                await st.tasks.submit_many([_spec(depends_on=[never["id"]])] * min(5000, unrelated - start), USER)
            times = []
            for _ in range(rounds):
                parent, _ = await st.tasks.submit(_spec(), USER)
                children = await st.tasks.submit_many([_spec(depends_on=[parent["id"]])] * fanout, USER)
                (offer,) = await st.leasing.claim(agent, 1, "bench")
                assert offer.task_id == parent["id"]
                start = time.perf_counter()
                await st.leasing.complete(agent, offer.task_id, Completion(epoch=offer.epoch, outcome="succeeded"))
                await st.dependencies.idle()
                times.append(time.perf_counter() - start)
                assert all(st.fleet.queue.get(c["id"]) is not None for c in children)
                for c in children:  # out of the way of the next round's claim
                    await st.tasks.cancel(c["id"], USER)
            return _p(times, 0.5), _p(times, 0.99)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fanout", default="1,100,1000")
    ap.add_argument("--unrelated", default="0,10000")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    print(f"{'fanout':>7} {'unrelated blocked':>18} {'end -> dependents queued p50':>30} {'p99':>9}")
    for unrelated in (int(x) for x in args.unrelated.split(",")):
        for fanout in (int(x) for x in args.fanout.split(",")):
            p50, p99 = asyncio.run(measure(fanout, unrelated, args.rounds))
            print(f"{fanout:>7} {unrelated:>18} {p50 * 1000:>27.2f} ms {p99 * 1000:>6.2f} ms")


if __name__ == "__main__":
    main()
