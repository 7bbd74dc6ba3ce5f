"""Waking a held poll costs one match per agent shape, not per agent (bench/scale.py found why)."""

from __future__ import annotations

from mloc_server.services.fleet import AgentState, LeaseState
from mloc_server.services.queue import TaskMeta
from mloc_server.services.scheduler import AgentView, Requirement, match_key, pick_gpus
from mloc_server.services.waiting import WaitingPolls
from mloc_shared.protocol import Gpu, Inventory

A100 = "NVIDIA A100-SXM4-80GB"
T4 = "Tesla T4"


def agent(i: int, model: str = A100, gpus: int = 2, busy: tuple[int, ...] = ()) -> AgentState:
    inv = Inventory(hostname=f"h{i}", gpus=[Gpu(index=g, uuid=f"GPU-{i}-{g}", name=model, memory_total_mb=81920,
                                              compute_capability="8.0") for g in range(gpus)])
    a = AgentState(id=f"a{i}", name=f"agent-{i}", credential_hash="x", labels={}, inventory=inv,
                   task_types=frozenset({"command"}), max_tasks=gpus)
    for g in busy:
        a.leases[f"t{i}-{g}"] = LeaseState(task_id=f"t{i}-{g}", agent_id=a.id, epoch=1, attempt=1, gpus=(g,),
                                           expires_at=0.0, started_at=0.0, req=Requirement("command", gpus=1),
                                           meta=TaskMeta())
    return a


def test_match_key_ignores_names_and_indices_but_not_free_gpus() -> None:
    assert match_key(agent(1).view()) == match_key(agent(2).view())
    assert match_key(agent(1).view()) != match_key(agent(2, busy=(0,)).view())
    assert match_key(agent(1, busy=(0,)).view()) == match_key(agent(2, busy=(1,)).view())
    assert match_key(agent(1).view()) != match_key(agent(2, model=T4).view())


def test_a_task_nobody_fits_costs_one_check_per_shape() -> None:
    waiting = WaitingPolls()
    for i in range(1000):
        waiting.add(agent(i, busy=(0, 1)))  # a busy fleet: every GPU taken
    checks: list[AgentView] = []

    def fits(view: AgentView) -> bool:
        checks.append(view)
        return pick_gpus(Requirement("command", gpus=1), view) is not None

    assert list(waiting.pop_fitting(fits)) == []
    assert len(checks) == 1 and len(waiting) == 1000


def test_the_longest_waiting_fitting_agent_is_woken_first() -> None:
    waiting = WaitingPolls()
    busy, first, second = agent(0, busy=(0, 1)), agent(1), agent(2)
    for a in (busy, first, second):
        waiting.add(a)
    woken = waiting.pop_fitting(lambda view: pick_gpus(Requirement("command", gpus=1), view) is not None)
    assert next(woken) is first
    assert "a1" not in waiting and "a2" in waiting and "a0" in waiting


def test_a_stale_poll_does_not_unpark_the_agent_that_replaced_it() -> None:
    waiting = WaitingPolls()
    old, new = agent(7), agent(7)  # the same agent id, re-registered while its old poll was held
    waiting.add(old)
    waiting.add(new)
    waiting.discard(old)
    assert "a7" in waiting
    waiting.discard(new)
    assert len(waiting) == 0
