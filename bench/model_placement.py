"""What the model preference costs a submit: waking one waiting agent out of N, for a task without a
hub model (one fit check per group) and for one on a model that a few of them hold (every waiting agent
of the fitting groups is scored). In process, on the fleet's own WaitingPolls; prints µs per wake.

    python -m bench.model_placement
"""

from __future__ import annotations

import time

from mloc_server.services.fleet import AgentState, Fleet, prefers
from mloc_server.services.scheduler import Requirement, pick_gpus
from mloc_shared.protocol import HeldModel, Inventory

MODEL = "org/model-7b"


def fleet_of(n: int, holders: int, models_each: int) -> Fleet:
    fleet = Fleet()
    for i in range(n):
        held = [HeldModel(id=f"org/other-{i}-{j}", bytes=1) for j in range(models_each)]
        if i % max(1, n // max(1, holders)) == 0 and holders:
            held.append(HeldModel(id=MODEL, bytes=1))
        agent = AgentState(id=f"a{i}", name=f"a{i}", credential_hash=f"c{i}", labels={},
                           inventory=Inventory(hostname=f"a{i}", models=held), task_types=frozenset({"command"}),
                           max_tasks=1)
        fleet.add_agent(agent)
        fleet.waiting.add(agent)
    return fleet


def wake_us(fleet: Fleet, req: Requirement, rounds: int) -> float:
    """µs to wake one agent (and park it again), averaged."""
    fits, prefer = (lambda view: pick_gpus(req, view) is not None), prefers(req)
    start = time.perf_counter()
    for _ in range(rounds):
        agent = next(fleet.waiting.pop_fitting(fits, prefer))
        fleet.waiting.add(agent)
    return (time.perf_counter() - start) / rounds * 1e6


def main() -> None:
    plain = Requirement("command")
    on_model = Requirement("command", model=MODEL)
    print(f"{'waiting agents':>15} {'no model (µs)':>14} {'on a model (µs)':>16} {'held by':>8}")
    for n in (100, 1_000, 10_000):
        fleet = fleet_of(n, holders=max(1, n // 100), models_each=20)
        rounds = max(20, 20_000 // n)
        print(f"{n:>15} {wake_us(fleet, plain, rounds):>14.1f} {wake_us(fleet, on_model, rounds):>16.1f} "
              f"{max(1, n // 100):>8}")


if __name__ == "__main__":
    main()
