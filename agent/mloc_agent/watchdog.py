"""The stall watchdog: stops a task whose reported step has not moved for ``stall_timeout_s``.

Why: a rank stuck in a collective (a peer died mid all-reduce, a NCCL hang) is noticed by
torch.distributed only after the process group's timeout (1,800 s by default, years in some
recipes), and meanwhile the task holds every GPU of its lease while renewing it. The agent already
reads the task's progress (its channel): when the step stops changing, the task is stopped and
failed with error_code ``stalled``, which the coordinator requeues like a lost box (from the last
checkpoint), whatever ``retry.on_failure`` says.

The clock starts at the first report that carries a step: model downloads and loading before
training report none and are not watched (``timeout_s`` bounds them). Any change of the step, up or
down (a resumed attempt), restarts it, so a slow task that keeps stepping is never stopped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]


class StallWatchdog:
    """Pure bookkeeping plus a small polling loop; ``clock`` is injectable for tests."""

    def __init__(self, timeout_s: float, clock: Clock = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.clock = clock
        self.step: int | float | None = None
        self.changed_at: float | None = None  # None: not armed (no step seen yet)

    def observe(self, step: int | float | None) -> None:
        """A progress report: a new step (re)starts the clock; the same step or none leaves it."""
        if step is not None and step != self.step:
            self.step, self.changed_at = step, self.clock()

    def stalled_for(self) -> float | None:
        """Seconds since the step last changed, when that is past the timeout; else None."""
        if self.changed_at is None:
            return None
        idle = self.clock() - self.changed_at
        return idle if idle >= self.timeout_s else None

    def message(self, idle_s: float) -> str:
        return (f"no progress for {idle_s:.0f}s: the step stayed at {self.step} past hyperparameters.stall_timeout_s "
                f"({self.timeout_s:g}s); stopped, and retried from the last checkpoint (a hung rank or collective?)")

    async def watch(self, on_stall: Callable[[str], Awaitable[None]], interval_s: float | None = None) -> None:
        """Check every ``interval_s`` (a quarter of the timeout, at most 5 s) until the task stalls."""
        interval = interval_s if interval_s is not None else min(5.0, max(0.05, self.timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            idle = self.stalled_for()
            if idle is not None:
                await on_stall(self.message(idle))
                return
