"""The cost of keeping progress history on the heartbeat path: ``python -m bench.history``.

    python -m bench.history [--leases 1000] [--rounds 20] [--thin-leases 20]

The coordinator's real state (every service, a real SQLite file) in-process on a ManualClock, as
tests/test_leasing_clock.py builds it: one agent holds ``--leases`` leases, and each round heartbeats
every lease with a new step and loss, then runs the reaper's flush (one write: latest progress and
the new points). Timed twice in the same process: with the history (as shipped) and without it
(the point-keeping step replaced by a no-op), alternating, ``--repeat`` times each, and the best run of
each is shown: on a shared machine the load moves single runs by 2x. A last pass
runs ``--thin-leases`` leases past the 2,000-point bound to time the flushes that thin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mloc_server.app import open_state
from mloc_server.clock import ManualClock
from mloc_server.services import leasing as leasing_module
from mloc_server.services.auth import Principal
from mloc_server.settings import CoordinatorSettings
from mloc_server.store.repo.progress import MAX_POINTS
from mloc_shared.protocol import HeartbeatRequest, Inventory, PollRequest, Progress, RegisterRequest
from mloc_shared.taskspec import TaskSpec

ADMIN = Principal(user="admin", role="admin")


async def run(leases: int, rounds: int, keep: bool) -> dict[str, float]:
    """µs per heartbeat and ms per flush over ``rounds`` rounds of ``leases`` heartbeats."""
    real_keep = leasing_module.keep_point
    if not keep:
        leasing_module.keep_point = lambda lease, p, now: None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = CoordinatorSettings(data_dir=Path(tmp), lease_ttl_s=3600, heartbeat_s=10, poll_hold_s=1,
                                           restart_grace_s=60)
            clock = ManualClock()
            async with contextlib.AsyncExitStack() as resources:
                st = await open_state(settings, clock, resources)
                held = []
                while len(held) < leases:  # one agent per 1,024 leases (the protocol's max_tasks)
                    n = min(1024, leases - len(held))
                    resp = await st.agents.register(RegisterRequest(
                        agent_version="bench", name=f"bench-{len(held)}", inventory=Inventory(hostname="b"),
                        task_types=["command"], max_tasks=n), None)
                    agent = st.fleet.agents[resp.agent_id]
                    await st.tasks.submit_many([TaskSpec.model_validate({"taskType": "command", "command": "true"})
                                                for _ in range(n)], ADMIN)
                    got = await st.polling.poll(agent, PollRequest(poll_id=f"bench-poll-{len(held):06d}",
                                                                   free_slots=n))
                    held += [(agent, lease) for lease in got.leases]
                hb_s, flush_ms = 0.0, []
                for step in range(1, rounds + 1):
                    reqs = [HeartbeatRequest(epoch=lease.epoch, progress=Progress(
                        step=step, total=rounds, loss=1.0 / step, learning_rate=1e-4, metrics={"grad_norm": 0.5}))
                        for _, lease in held]
                    clock.advance(1.0)
                    t0 = time.perf_counter()
                    for (agent, lease), req in zip(held, reqs, strict=True):
                        st.leasing.heartbeat(agent, lease.task_id, req)
                    hb_s += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    await st.reaper.flush()
                    flush_ms.append((time.perf_counter() - t0) * 1000)
                rows = len(await st.db.progress_points(held[0][1].task_id))
    finally:
        leasing_module.keep_point = real_keep
    return {"hb_us": hb_s / (leases * rounds) * 1e6, "flush_p50": statistics.median(flush_ms),
            "flush_max": max(flush_ms), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--leases", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--thin-leases", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, alternating; the best of each is shown")
    args = ap.parse_args()
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(args.repeat):
        for keep in (False, True):
            runs[keep].append(asyncio.run(run(args.leases, args.rounds, keep=keep)))
    off, on = ({k: min(r[k] for r in runs[keep]) for k in runs[keep][0]} for keep in (False, True))
    thin = asyncio.run(run(args.thin_leases, MAX_POINTS + 600, keep=True))
    print(f"{args.leases} leases, {args.rounds} rounds (a heartbeat per lease with a new step, then a flush):")
    for label, r in (("without history", off), ("with history", on)):
        print(f"  {label:<16} heartbeat {r['hb_us']:6.1f} us   flush p50 {r['flush_p50']:6.1f} ms   "
              f"max {r['flush_max']:6.1f} ms")
    print(f"{args.thin_leases} leases, {MAX_POINTS + 600} rounds (past the {MAX_POINTS}-point bound): "
          f"flush p50 {thin['flush_p50']:.2f} ms, max {thin['flush_max']:.2f} ms; rows kept {thin['rows']}")


if __name__ == "__main__":
    main()
