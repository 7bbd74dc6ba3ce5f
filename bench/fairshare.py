"""What fair share costs a claim: ``python -m bench.fairshare``.

    python -m bench.fairshare [--tasks 10000] [--owners 1,10,100,1000] [--shapes 1,4] [--claims 300]

For each (owners, shapes): a coordinator's real state in-process (app.open_state on a temporary
SQLite file, the system clock), one agent with 8 GPUs, ``--tasks`` queued tasks spread evenly over
the owners and shapes (bulk submits). Then ``--claims`` times: claim one task for the agent (the
pick in memory and the claim's commit to SQLite), and finish it. Printed: the pick alone
(TaskQueue.pick: one head per (shape, owner) bucket, sorted by class, priority, fair-share rank and
queued time) and the whole claim, p50 and p99, with fair share on and off, and the time of a queue
listing (GET /api/v1/queue's work) of 200 and of every task. A pick must grow with shapes x owners,
not with queued tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from mloc_server.app import open_state
from mloc_server.clock import SystemClock
from mloc_server.services.auth import Principal
from mloc_server.settings import CoordinatorSettings, FairShareSettings
from mloc_shared.protocol import Completion, Gpu, Inventory, RegisterRequest
from mloc_shared.taskspec import TaskSpec

ADMIN = Principal("bench", "admin")


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(tasks: int, owners: int, shapes: int, claims: int, fair: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = CoordinatorSettings(data_dir=Path(tmp), fair_share=FairShareSettings(enabled=fair))
        async with contextlib.AsyncExitStack() as resources:
            st = await open_state(settings, SystemClock(), resources)
            inv = Inventory(hostname="bench", gpu_source="declared", gpus=[
                Gpu(index=i, uuid=f"b-{i}", name="Bench GPU", memory_total_mb=81920, compute_capability="9.0")
                for i in range(8)])
            reg = await st.agents.register(RegisterRequest(agent_version="bench", name="bench", inventory=inv,
                                                           task_types=["command"], max_tasks=8), None)
            agent = st.fleet.agents[reg.agent_id]
            per_owner = tasks // owners
            for o in range(owners):
                specs = [TaskSpec.model_validate({
                    "taskType": "command", "command": "true", "user": f"user{o:04d}",
                    # shapes differ in the memory they ask for; all fit the agent's 80 GB GPUs
                    "resources": {"gpus": 1, "gpu_memory_gb": 10 * (1 + i % shapes)}}) for i in range(per_owner)]
                for start in range(0, len(specs), 5000):
                    await st.tasks.submit_many(specs[start:start + 5000], ADMIN)
            picks, whole = [], []
            for n in range(claims):
                view = agent.view(1)
                t0 = time.perf_counter()
                st.fleet.queue.first_fitting(view)  # the pick's work, leaving the queue as it is
                picks.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                offers = await st.leasing.claim(agent, 1, f"p{n}")
                whole.append(time.perf_counter() - t0)
                assert offers, "a claim found nothing to take"
                for offer in offers:
                    await st.leasing.complete(agent, offer.task_id, Completion(epoch=offer.epoch, outcome="succeeded"))
            t0 = time.perf_counter()
            st.queue_admin.listing(ADMIN, 200)
            list_200 = time.perf_counter() - t0
            t0 = time.perf_counter()
            st.queue_admin.listing(ADMIN, tasks)
            list_all = time.perf_counter() - t0
            return {"pick_p50_us": _p(picks, 0.5) * 1e6, "pick_p99_us": _p(picks, 0.99) * 1e6,
                    "claim_p50_ms": statistics.median(whole) * 1e3, "claim_p99_ms": _p(whole, 0.99) * 1e3,
                    "list200_ms": list_200 * 1e3, "list_all_ms": list_all * 1e3, "queued": len(st.fleet.queue)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--owners", default="1,10,100,1000")
    ap.add_argument("--shapes", default="1,4")
    ap.add_argument("--claims", type=int, default=300)
    args = ap.parse_args()
    print(f"{args.tasks} queued tasks, {args.claims} claims each; times per claim of one task")
    print(f"{'owners':>6} {'shapes':>6} {'fair':>5} {'pick p50':>10} {'pick p99':>10} {'claim p50':>10} "
          f"{'claim p99':>10} {'list 200':>9} {'list all':>9}")
    for shapes in (int(s) for s in args.shapes.split(",")):
        for owners in (int(o) for o in args.owners.split(",")):
            for fair in (True, False):
                r = asyncio.run(measure(args.tasks, owners, shapes, args.claims, fair))
                print(f"{owners:>6} {shapes:>6} {'on' if fair else 'off':>5} {r['pick_p50_us']:>8.0f}µs "
                      f"{r['pick_p99_us']:>8.0f}µs {r['claim_p50_ms']:>8.2f}ms {r['claim_p99_ms']:>8.2f}ms "
                      f"{r['list200_ms']:>7.1f}ms {r['list_all_ms']:>7.0f}ms", flush=True)


if __name__ == "__main__":
    main()
