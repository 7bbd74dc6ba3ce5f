"""The queue as people see it: its order with each task's reason, and an admin's change of a task's
priority class (``mloc queue``, ``mloc priority``; GET /api/v1/queue, PATCH /api/v1/tasks/{id}).

The listed order is the order the picks would take the tasks in if agents of every shape were free
now: each step takes the best head (class, priority, fair-share rank, queued time) and charges its
owner as a pick does, so the owners alternate as their shares say. Tasks held back by a GPU quota
come after the others, then tasks in retry backoff.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import Counter
from dataclasses import dataclass

from mloc_shared.errors import ValidationFailed

from mloc_server.clock import Clock
from mloc_server.schemas import PriorityChanged, QueueEntry, QueueListing
from mloc_server.services.auth import Principal
from mloc_server.services.fairshare import Pending, ReasonContext, queue_reason
from mloc_server.services.fleet import Fleet
from mloc_server.services.leasing import Leasing
from mloc_server.services.queue import BucketKey, QueuedTask, TaskMeta
from mloc_server.settings import CoordinatorSettings
from mloc_server.store import Store


def simulated_order(fleet: Fleet, limit: int) -> tuple[list[QueuedTask], list[QueuedTask]]:
    """(up to ``limit`` ready tasks in pick order, the ready tasks a GPU quota holds back now).

    A heap of bucket heads: a step charges the owner it took from, which makes that owner's (and,
    with teams on, its team's) entries stale; a stale entry is re-ranked when it comes up. So a
    step costs O(log buckets) plus the re-ranking of the charged owner's buckets.
    """
    queue, policy = fleet.queue, fleet.policy
    pending: Pending = {}
    teams_on = policy is not None and policy.shares.settings.teams_on
    lanes: dict[BucketKey, list[QueuedTask]] = {
        queue.bucket_of(h): queue.bucket_tasks(queue.bucket_of(h))[::-1] for h in queue.heads()}  # popped from the end
    versions: Counter[tuple[str, str]] = Counter()  # ("user", owner) / ("team", team) -> charges so far

    def stamp(task: QueuedTask) -> tuple[int, int]:
        return versions[("user", task.meta.owner)], versions[("team", task.meta.team)] if teams_on else 0

    def entry(bucket: BucketKey) -> tuple:
        head = lanes[bucket][-1]
        return (queue.order_key(head, pending), stamp(head), bucket)

    heap = [entry(b) for b in lanes]
    heapq.heapify(heap)
    capped = {b for b, lane in lanes.items()
              if policy is not None and policy.quotas.has_gpu_cap(lane[-1].meta.owner, lane[-1].meta.team)}
    order: list[QueuedTask] = []
    held: list[QueuedTask] = []
    while heap and len(order) < limit:
        _, seen, bucket = heapq.heappop(heap)
        lane = lanes[bucket]
        if seen != stamp(lane[-1]):
            heapq.heappush(heap, entry(bucket))  # its owner was charged since: re-rank it
            continue
        if bucket in capped and queue.blocked(lane[-1], pending) is not None:
            held.extend(reversed(lane))  # a quota that holds the head holds the lane
            continue
        task = lane.pop()
        order.append(task)
        if policy is not None:
            policy.note(pending, task.meta.owner, task.meta.team, task.req.gpus)
            versions[("user", task.meta.owner)] += 1
            versions[("team", task.meta.team)] += 1
        if lane:
            heapq.heappush(heap, entry(bucket))
    return order, held


@dataclass(eq=False)
class QueueAdmin:
    db: Store
    fleet: Fleet
    leasing: Leasing
    settings: CoordinatorSettings
    clock: Clock

    def listing(self, principal: Principal, limit: int) -> QueueListing:
        """The queue in order with reasons; a user sees their own tasks (at their place in it)."""
        queue = self.fleet.queue
        order, held = simulated_order(self.fleet, limit)
        ctx = ReasonContext.of(self.fleet)  # once for the listing
        now = self.clock.time()
        delayed = sorted((t for t in queue.live() if t.not_before > now), key=lambda t: t.not_before)
        entries: list[QueueEntry] = []
        for position, task in enumerate([*order, *held, *delayed][:limit], start=1):
            if not principal.is_admin and task.meta.owner != principal.user:
                continue
            if task.not_before > now:
                reason = f"retry backoff: eligible again in {task.not_before - now:.0f}s"
            else:
                reason = queue_reason(self.fleet, task, ctx)
            entries.append(QueueEntry(
                position=position, id=task.id, user=task.meta.owner, team=task.meta.team or None,
                priority_class=task.meta.priority_class, priority=task.meta.priority, gpus=task.req.gpus,
                task_type=task.req.task_type, queued_at=task.sort_key[2], reason=reason))
        return QueueListing(tasks=entries, total=len(queue))

    async def set_priority(self, task_id: str, priority_class: str | None, priority: int | None) -> PriorityChanged:
        """Move a queued task in the queue at once, or change a running one's preemptibility."""
        classes = self.settings.priority_classes
        if priority_class is not None and priority_class not in classes:
            raise ValidationFailed(f"priority_class {priority_class!r} is not one of {', '.join(sorted(classes))} "
                                   "(the coordinator's priority_classes)", field="priority_class")
        if priority_class is None and priority is None:
            raise ValidationFailed("send priority_class and/or priority", field="priority_class")
        now = self.clock.time()
        ok = await self.db.write(lambda tx: tx.set_priority(task_id, priority_class, priority, now))
        if not ok:
            await self.leasing.raise_not_active(task_id)
        queued = self.fleet.queue.get(task_id)
        lease = self.fleet.leases.get(task_id)
        if queued is not None:
            meta = self._changed(queued.meta, priority_class, priority)
            self.fleet.queue.remove(task_id)
            self.fleet.enqueue(QueuedTask.make(task_id, queued.req, meta, queued.sort_key[2], queued.not_before),
                               now)
        elif lease is not None:
            meta = lease.meta = self._changed(lease.meta, priority_class, priority)
        else:  # claimed or finishing right now: the store has the change; nothing in memory to move
            row = await self.db.get_task(task_id)
            return PriorityChanged(id=task_id, state=row.state if row else "unknown",
                                   priority_class=priority_class, priority=priority)
        return PriorityChanged(id=task_id, state="queued" if queued is not None else "running",
                               priority_class=meta.priority_class, priority=meta.priority,
                               preemptible=meta.preemptible)

    def _changed(self, meta: TaskMeta, priority_class: str | None, priority: int | None) -> TaskMeta:
        name = priority_class or meta.priority_class
        pc = self.settings.priority_classes.get(name)
        return dataclasses.replace(
            meta, priority_class=name, priority=meta.priority if priority is None else priority,
            class_priority=pc.priority if pc is not None else meta.class_priority,
            preemptible=pc.preemptible if pc is not None else meta.preemptible)
