"""The in-memory queue of runnable tasks, mirrored from SQLite at start.

Tasks are bucketed by requirement (most fleets have a handful of distinct shapes), each bucket a
heap by (priority desc, queued time). Picking for an agent looks at one head per bucket, so a
claim costs O(shapes), not O(queued tasks). Tasks in retry backoff wait in a timed heap.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field

from mloc_server.services.scheduler import AgentView, Requirement, pick_gpus
from mloc_server.settings import DEFAULT_PRIORITY_CLASSES, PriorityClass


@dataclass(frozen=True)
class TaskMeta:
    """What the coordinator needs of a spec after submit, without parsing it again."""

    priority: int = 0
    backoff_s: float = 5.0
    backoff_max_s: float = 300.0
    retry_on_failure: bool = False
    timeout_s: float | None = None
    owner: str = ""  # who may see the task on its agent in the fleet listing (besides an admin)
    # the task's priority class (settings.priority_classes): ordered by class first, then ``priority``
    priority_class: str = "normal"
    class_priority: int = 0
    preemptible: bool = False
    team: str = ""  # the submitting token's team (fair share and quotas), "" when none

    @classmethod
    def from_spec(cls, spec: dict, owner: str = "", classes: Mapping[str, PriorityClass] | None = None,
                  default_class: str = "normal", team: str = "") -> TaskMeta:
        retry = spec.get("retry") or {}
        name = spec.get("priority_class") or default_class
        pc = (classes or DEFAULT_PRIORITY_CLASSES).get(name) or PriorityClass(priority=0)
        return cls(
            priority=int(spec.get("priority", 0)),
            backoff_s=float(retry.get("backoff_s", 5.0)),
            backoff_max_s=float(retry.get("backoff_max_s", 300.0)),
            retry_on_failure=bool(retry.get("on_failure", False)),
            timeout_s=spec.get("timeout_s"),
            owner=owner,
            priority_class=name,
            class_priority=pc.priority,
            preemptible=pc.preemptible,
            team=team,
        )


@dataclass(order=True)
class QueuedTask:
    sort_key: tuple[int, int, float, str]
    id: str = field(compare=False)
    req: Requirement = field(compare=False)
    meta: TaskMeta = field(compare=False)
    not_before: float = field(default=0.0, compare=False)

    @classmethod
    def make(cls, task_id: str, req: Requirement, meta: TaskMeta, queued_at: float, not_before: float = 0.0):
        return cls((-meta.class_priority, -meta.priority, queued_at, task_id), task_id, req, meta, not_before)


class TaskQueue:
    def __init__(self) -> None:
        self._buckets: dict[Requirement, list[QueuedTask]] = {}
        self._live: dict[str, QueuedTask] = {}
        self._delayed: list[tuple[float, str]] = []
        self._gang_ids: set[str] = set()  # tasks on several agents: scanned by every poll, so kept apart

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._live

    def get(self, task_id: str) -> QueuedTask | None:
        return self._live.get(task_id)

    def add(self, task: QueuedTask, now: float) -> bool:
        """Queue a task; returns True when it is runnable now (so waiting agents should wake)."""
        self._live[task.id] = task
        if task.req.nodes > 1:
            self._gang_ids.add(task.id)
        if task.not_before > now:
            heapq.heappush(self._delayed, (task.not_before, task.id))
            return False
        heapq.heappush(self._buckets.setdefault(task.req, []), task)
        return True

    def remove(self, task_id: str) -> bool:
        """Forget a task (cancelled, claimed). Heap entries are dropped lazily."""
        self._gang_ids.discard(task_id)
        return self._live.pop(task_id, None) is not None

    def promote_due(self, now: float) -> list[QueuedTask]:
        """Move tasks whose backoff has ended into their buckets; returns them."""
        due = []
        while self._delayed and self._delayed[0][0] <= now:
            _, task_id = heapq.heappop(self._delayed)
            task = self._live.get(task_id)
            if task is not None and task.not_before <= now:
                heapq.heappush(self._buckets.setdefault(task.req, []), task)
                due.append(task)
        return due

    def _head(self, req: Requirement) -> QueuedTask | None:
        heap = self._buckets.get(req)
        while heap:
            head = heap[0]
            if self._live.get(head.id) is head:
                return head
            heapq.heappop(heap)
        self._buckets.pop(req, None)
        return None

    def pick(self, agent: AgentView, limit: int) -> list[tuple[QueuedTask, tuple[int, ...]]]:
        """Take up to ``limit`` tasks that fit ``agent`` now, best first; they leave the queue.

        ``agent.used_gpus`` and ``free_slots`` are updated as tasks are taken.
        """
        taken: list[tuple[QueuedTask, tuple[int, ...]]] = []
        while len(taken) < limit and agent.free_slots > 0:
            best = self._best_fit(agent)
            if best is None:
                break
            head, gpus = best
            heapq.heappop(self._buckets[head.req])
            del self._live[head.id]
            agent.used_gpus.update(gpus)
            agent.free_slots -= 1
            taken.append(best)
        return taken

    def first_fitting(self, agent: AgentView) -> QueuedTask | None:
        """The best ready task ``agent`` could take now, left in the queue (None if there is none)."""
        best = self._best_fit(agent)
        return best[0] if best is not None else None

    def _best_fit(self, agent: AgentView) -> tuple[QueuedTask, tuple[int, ...]] | None:
        """The best ready task that fits ``agent``, with the GPUs it would get (one head per requirement)."""
        heads = sorted(h for h in (self._head(r) for r in list(self._buckets)) if h is not None)
        for head in heads:
            if head.req.nodes > 1:  # a gang is leased to several agents at once (services/gangs.py)
                continue
            gpus = pick_gpus(head.req, agent)
            if gpus is not None:
                return head, gpus
        return None

    def gangs(self, now: float) -> list[QueuedTask]:
        """The ready tasks that span several agents, best first (services/gangs.py schedules them)."""
        return sorted(t for t in (self._live.get(i) for i in self._gang_ids) if t is not None and t.not_before <= now)

    def requirements(self) -> list[Requirement]:
        return [r for r in list(self._buckets) if self._head(r) is not None]
