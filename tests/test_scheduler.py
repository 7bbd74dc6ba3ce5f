"""Matching is a pure function of a requirement and an agent: tables of cases, no processes."""

from __future__ import annotations

import pytest
from mloc_server.services.queue import QueuedTask, TaskMeta, TaskQueue
from mloc_server.services.scheduler import AgentView, Requirement, pick_gpus, unplaceable_reason
from mloc_shared.protocol import Gpu


def gpu(i: int, name: str, gb: float, cc: str = "8.0") -> Gpu:
    return Gpu(index=i, uuid=f"GPU-{i}", name=name, memory_total_mb=int(gb * 1024), compute_capability=cc)


A100 = "NVIDIA A100-SXM4-80GB"
R4090 = "NVIDIA GeForce RTX 4090"
T4 = "Tesla T4"


def view(*gpus: Gpu, used=(), labels=None, types=("command", "sft"), slots=4, accepting=True) -> AgentView:
    return AgentView(name="a", gpus=list(gpus), labels=labels or {}, task_types=frozenset(types),
                     used_gpus=set(used), free_slots=slots, accepting=accepting)


@pytest.mark.parametrize(
    ("req", "agent", "expected"),
    [
        (Requirement("command"), view(), ()),
        (Requirement("sft", gpus=1), view(), None),
        (Requirement("sft", gpus=1, gpu_memory_gb=80), view(gpu(0, R4090, 23.99)), None),
        (Requirement("sft", gpus=1, gpu_memory_gb=24), view(gpu(0, R4090, 23.99)), (0,)),  # 3 % tolerance
        (Requirement("sft", gpus=1, gpu_memory_gb=80), view(gpu(0, R4090, 24), gpu(1, A100, 80)), (1,)),
        (Requirement("sft", gpus=2), view(gpu(0, A100, 80), gpu(1, A100, 80), used={0}), None),
        (Requirement("sft", gpus=1), view(gpu(0, A100, 80), gpu(1, T4, 16)), (1,)),  # best fit: smallest
        (Requirement("sft", gpus=1, gpu_models=("a100", "h100")), view(gpu(0, T4, 16), gpu(1, A100, 80)), (1,)),
        (Requirement("sft", gpus=1, min_compute_capability=8.0), view(gpu(0, T4, 16, "7.5")), None),
        (Requirement("sft", gpus=1, min_compute_capability=7.5), view(gpu(0, T4, 16, "7.5")), (0,)),
        (Requirement("sft", gpus=1, labels=(("site", "lab-a"),)), view(gpu(0, T4, 16)), None),
        (Requirement("sft", gpus=1, labels=(("site", "lab-a"),)), view(gpu(0, T4, 16), labels={"site": "lab-a"}),
         (0,)),
        (Requirement("ppo", gpus=1), view(gpu(0, A100, 80)), None),  # task type not offered
        (Requirement("command"), view(slots=0), None),
        (Requirement("command"), view(accepting=False), None),
    ],
)
def test_pick_gpus(req: Requirement, agent: AgentView, expected) -> None:
    assert pick_gpus(req, agent) == expected


def test_unplaceable_reasons_name_the_gap() -> None:
    small = view(gpu(0, R4090, 23.99))
    small.name = "box-24g"
    reason = unplaceable_reason(Requirement("sft", gpus=1, gpu_memory_gb=80), [small])
    assert reason is not None and "box-24g" in reason and "80" in reason
    assert unplaceable_reason(Requirement("sft", gpus=1, gpu_memory_gb=24), [small]) is None
    assert "no agent is registered" in unplaceable_reason(Requirement("command"), [])
    assert "task type 'rag_inference'" in unplaceable_reason(Requirement("rag_inference"), [small])


def test_queue_orders_by_priority_then_age_and_skips_what_does_not_fit() -> None:
    q = TaskQueue()
    big = Requirement("sft", gpus=1, gpu_memory_gb=80)
    small = Requirement("sft", gpus=1)
    q.add(QueuedTask.make("old-big", big, TaskMeta(priority=0), 1.0), now=10)
    q.add(QueuedTask.make("new-small", small, TaskMeta(priority=0), 2.0), now=10)
    q.add(QueuedTask.make("urgent-small", small, TaskMeta(priority=5), 3.0), now=10)
    agent = view(gpu(0, T4, 16), gpu(1, T4, 16))
    taken = [t.id for t, _ in q.pick(agent, 3)]
    assert taken == ["urgent-small", "new-small"]  # old-big does not fit a 16 GB card
    assert len(q) == 1 and "old-big" in q


def test_backoff_hides_a_task_until_it_is_due() -> None:
    q = TaskQueue()
    assert not q.add(QueuedTask.make("later", Requirement("command"), TaskMeta(), 1.0, not_before=50.0), now=10)
    assert q.pick(view(), 1) == []
    assert [t.id for t in q.promote_due(now=51)] == ["later"]
    assert [t.id for t, _ in q.pick(view(), 1)] == ["later"]
