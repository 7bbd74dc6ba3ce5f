"""The in-memory queue of runnable tasks, mirrored from SQLite at start.

Tasks are bucketed by requirement and owner (most fleets have a handful of distinct shapes), each
bucket a heap by (priority class desc, priority desc, queued time). Picking for an agent looks at
one head per bucket, sorted by (class, priority, the owner's fair-share rank, queued time), so a
claim costs O(shapes x owners), not O(queued tasks). A head whose owner is at a GPU quota is
skipped (services/fairshare.py, services/quotas.py). Tasks in retry backoff wait in a timed heap.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mloc_server.services.scheduler import AgentView, Requirement, pick_gpus
from mloc_server.settings import DEFAULT_PRIORITY_CLASSES, PriorityClass

if TYPE_CHECKING:
    from mloc_server.services.fairshare import Pending, SharePolicy

BucketKey = tuple[Requirement, str, str]  # (requirement, owner, team)


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
    def __init__(self, policy: SharePolicy | None = None) -> None:
        self.policy = policy  # fair share and quotas; None: plain (class, priority, queued time) order
        # one bucket per (requirement, owner) only where owners are told apart: fair share ranks them, a
        # GPU quota skips some; otherwise one per requirement, and a claim stays O(shapes)
        self.per_owner = policy is not None and (policy.shares.settings.enabled or policy.quotas.any_gpu_cap)
        self._buckets: dict[BucketKey, list[QueuedTask]] = {}
        self._live: dict[str, QueuedTask] = {}
        self._delayed: list[tuple[float, str]] = []
        self._gang_ids: set[str] = set()  # tasks on several agents: scanned by every poll, so kept apart
        self._counts: Counter[tuple[str, str]] = Counter()  # queued tasks per ("user"|"team", name)

    def active_keys(self) -> list[tuple[str, str]]:
        """Users and teams with a task queued."""
        return [k for k, n in self._counts.items() if n > 0]

    def queued(self, key: tuple[str, str]) -> int:
        """Tasks queued (backoff included) for a user or team: for ``max_queued``."""
        return self._counts[key]

    def bucket_of(self, task: QueuedTask) -> BucketKey:
        return (task.req, task.meta.owner, task.meta.team) if self.per_owner else (task.req, "", "")

    def _count(self, task: QueuedTask, n: int) -> None:
        self._counts[("user", task.meta.owner)] += n
        self._counts[("team", task.meta.team)] += n  # "" too: the no-team group has a share

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._live

    def live(self) -> list[QueuedTask]:
        """Every queued task, ready or in backoff, unordered."""
        return list(self._live.values())

    def get(self, task_id: str) -> QueuedTask | None:
        return self._live.get(task_id)

    def add(self, task: QueuedTask, now: float) -> bool:
        """Queue a task; returns True when it is runnable now (so waiting agents should wake)."""
        old = self._live.get(task.id)
        if old is not None:
            self._count(old, -1)
        self._live[task.id] = task
        self._count(task, 1)
        if task.req.nodes > 1:
            self._gang_ids.add(task.id)
        if task.not_before > now:
            heapq.heappush(self._delayed, (task.not_before, task.id))
            return False
        heapq.heappush(self._buckets.setdefault(self.bucket_of(task), []), task)
        return True

    def remove(self, task_id: str) -> bool:
        """Forget a task (cancelled, claimed). Heap entries are dropped lazily."""
        self._gang_ids.discard(task_id)
        task = self._live.pop(task_id, None)
        if task is not None:
            self._count(task, -1)
        return task is not None

    def promote_due(self, now: float) -> list[QueuedTask]:
        """Move tasks whose backoff has ended into their buckets; returns them."""
        due = []
        while self._delayed and self._delayed[0][0] <= now:
            _, task_id = heapq.heappop(self._delayed)
            task = self._live.get(task_id)
            if task is not None and task.not_before <= now:
                heapq.heappush(self._buckets.setdefault(self.bucket_of(task), []), task)
                due.append(task)
        return due

    def _head(self, key: BucketKey) -> QueuedTask | None:
        heap = self._buckets.get(key)
        while heap:
            head = heap[0]
            if self._live.get(head.id) is head:
                return head
            heapq.heappop(heap)
        self._buckets.pop(key, None)
        return None

    def head_of(self, key: BucketKey) -> QueuedTask | None:
        """The first ready task of one bucket."""
        return self._head(key)

    def heads(self) -> list[QueuedTask]:
        """The first ready task of each (requirement, owner) bucket, unordered (what preemption looks at)."""
        return [h for h in (self._head(k) for k in list(self._buckets)) if h is not None]

    def bucket_tasks(self, key: BucketKey) -> list[QueuedTask]:
        """A bucket's ready tasks in order (for the queue listing: O(n log n), not on a claim's path)."""
        return sorted(t for t in self._buckets.get(key, ()) if self._live.get(t.id) is t)

    def order_key(self, task: QueuedTask, pending: Pending | None = None) -> tuple:
        """(class, priority, the owner's fair-share rank, queued time, id): the lowest goes first."""
        rank = self.policy.rank(task.meta.owner, task.meta.team, pending or {}) if self.policy else ()
        return (*task.sort_key[:2], *rank, *task.sort_key[2:])

    def blocked(self, task: QueuedTask, pending: Pending | None = None) -> str | None:
        """Why a quota holds the task back now (its owner is at ``max_gpus``); None when it may start."""
        return self.blocked_meta(task.meta, task.req, pending)

    def blocked_meta(self, meta: TaskMeta, req: Requirement, pending: Pending | None = None) -> str | None:
        if self.policy is None:
            return None
        return self.policy.blocked(meta.owner, meta.team, req.gpus, pending or {})

    def pick(self, agent: AgentView, limit: int) -> list[tuple[QueuedTask, tuple[int, ...]]]:
        """Take up to ``limit`` tasks that fit ``agent`` now, best first; they leave the queue.

        ``agent.used_gpus`` and ``free_slots`` are updated as tasks are taken.
        """
        taken: list[tuple[QueuedTask, tuple[int, ...]]] = []
        pending: Pending = {}  # what this pick took, for the owners' ranks and quotas
        while len(taken) < limit and agent.free_slots > 0:
            best = self._best_fit(agent, pending)
            if best is None:
                break
            head, gpus = best
            heapq.heappop(self._buckets[self.bucket_of(head)])
            self.remove(head.id)
            if self.policy is not None:
                self.policy.note(pending, head.meta.owner, head.meta.team, len(gpus))
            agent.used_gpus.update(gpus)
            agent.free_slots -= 1
            taken.append(best)
        return taken

    def first_fitting(self, agent: AgentView) -> QueuedTask | None:
        """The best ready task ``agent`` could take now, left in the queue (None if there is none)."""
        best = self._best_fit(agent)
        return best[0] if best is not None else None

    def _best_fit(self, agent: AgentView, pending: Pending | None = None) -> tuple[QueuedTask, tuple[int, ...]] | None:
        """The best ready task that fits ``agent``, with the GPUs it would get (one head per bucket)."""
        heads = self.heads()
        ranks = self.policy.ranks(((h.meta.owner, h.meta.team) for h in heads), pending or {}) if self.policy else {}
        # a heap, not a sort: the first head usually fits, so a pick is O(heads), not O(heads log heads)
        keyed = [((*h.sort_key[:2], *ranks.get((h.meta.owner, h.meta.team), ()), *h.sort_key[2:]), i, h)
                 for i, h in enumerate(heads)]
        heapq.heapify(keyed)
        while keyed:
            head = heapq.heappop(keyed)[2]
            if self.blocked(head, pending) is not None:
                continue  # its owner is at a GPU quota: the next owner's task may start
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
        return list(dict.fromkeys(h.req for h in self.heads()))
