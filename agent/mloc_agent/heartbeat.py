"""Renewing one lease: a heartbeat every ``interval_s`` (carrying the task's progress), and
self-fencing when the lease cannot be renewed within its TTL.

Heartbeats come from the agent, never from the task process, so a busy task cannot starve them.
A task whose lease could not be renewed must stop here: by then the coordinator may have given it
to another agent.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from mloc_shared.errors import LeaseLost, MlocError
from mloc_shared.protocol import HeartbeatRequest, Lease, PreemptNotice, Progress, RendezvousPoint

from mloc_agent.client import CoordinatorClient
from mloc_agent.progress_points import ProgressPoints
from mloc_agent.retries import Backoff, retryable


async def keep_lease(
    client: CoordinatorClient, lease: Lease, interval_s: float, *, finished: asyncio.Event,
    progress: Callable[[], Progress | None], on_cancel: Callable[[], None], on_fence: Callable[[str], None],
    on_preempt: Callable[[PreemptNotice], None] = lambda notice: None,
    rendezvous: Callable[[], RendezvousPoint | None] = lambda: None,
    points: ProgressPoints | None = None,
) -> None:
    """Renew ``lease`` until cancelled (once the run's outcome is acknowledged) or until it is gone:
    then ``on_fence`` gets the reason and this returns. ``on_cancel`` is called when the coordinator
    asks for the task to stop, ``on_preempt`` when it asks it to checkpoint and stop. ``rendezvous``:
    what a gang's node rank 0 publishes (docs/gangs.md). ``points``: the reports since the last renewal,
    sent with it and dropped once it is acknowledged (the loss curve between heartbeats)."""
    ttl = lease.ttl_s
    last_ok_sent = time.monotonic()
    # a renewal must land within the TTL, so failed ones are retried about every second, not backed off far
    retry = Backoff(min(1.0, interval_s / 2), 2 * min(1.0, interval_s / 2))

    def left() -> float:
        """Seconds until the task must be stopped. The lease is ours until last_ok_sent + ttl at best
        (the coordinator counts from a later receipt); stopping one heartbeat before that, and never
        waiting past it, ends the task before the coordinator can requeue it. A finished task has
        nothing to stop: it renews until its result is acknowledged, however long that takes."""
        if finished.is_set():
            return float("inf")
        return last_ok_sent + ttl - min(interval_s, ttl / 4) - time.monotonic()

    # the lease was just granted with a full TTL: the first renewal is due after one interval
    await asyncio.sleep(interval_s * random.uniform(0.5, 1.0))
    while True:
        sent = time.monotonic()
        batch = points.pending() if points is not None else []
        try:
            resp = await client.heartbeat(
                lease.task_id, HeartbeatRequest(epoch=lease.epoch, progress=progress(), rendezvous=rendezvous(),
                                                points=batch or None),
                timeout=max(0.1, min(max(1.0, min(interval_s, 10.0)), left())))
            last_ok_sent, ttl = sent, resp.ttl_s
            if points is not None:
                points.sent(len(batch))
            retry.reset()
            if resp.cancel:
                on_cancel()
            elif resp.preempt is not None:
                on_preempt(resp.preempt)
            wait = interval_s * random.uniform(0.9, 1.1)  # spread: a fleet's renewals do not bunch up
        except LeaseLost as exc:
            on_fence(f"lease lost: {exc.message}")
            return
        except MlocError as exc:
            if not retryable(exc):
                on_fence(f"heartbeat refused: {exc}")
                return
            if left() <= 0:
                on_fence(f"could not renew the lease within its TTL ({ttl:g}s): self-fencing")
                return
            wait = min(retry.next_s(), left())
        await asyncio.sleep(wait)
