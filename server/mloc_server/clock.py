"""The coordinator's clock, injected so that tests move time instead of waiting it out.

Lease expiry, the restart grace, retry backoff and poll holds are all decided by reading this
clock, so a test with a ``ManualClock`` checks a 30-second TTL in microseconds, in-process.

Two readings, as in the standard library: ``time()`` is wall-clock seconds (what SQLite stores
and users see); ``monotonic()`` measures intervals in this process (a lease's expiry, a poll's
hold), immune to the wall clock being set. ``call_later`` runs on the same clock: a held poll
ends when this clock says its hold is over.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start that never go back."""
        ...

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` once ``delay`` seconds have passed on this clock."""
        ...


class SystemClock:
    """The real clock; ``call_later`` is the running event loop's."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback, *args)


class _ManualTimer:
    def __init__(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.callback, self.args, self.cancelled = callback, args, False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that stands still until ``advance``: timers that fall due run inside it, in order.

    For tests: what a woken coroutine does next happens when the test next yields to the loop
    (``await asyncio.sleep(0)``, or awaiting the coroutine itself).
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = start
        self._mono = 0.0
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._order = itertools.count()  # equal due times run in the order they were set

    def time(self) -> float:
        return self._wall + self._mono

    def monotonic(self) -> float:
        return self._mono

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        timer = _ManualTimer(callback, args)
        heapq.heappush(self._timers, (self._mono + max(0.0, delay), next(self._order), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move both readings forward by ``seconds``, running each timer due by then at its time."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        until = self._mono + seconds
        while self._timers and self._timers[0][0] <= until:
            due, _, timer = heapq.heappop(self._timers)
            self._mono = max(self._mono, due)
            if not timer.cancelled:
                timer.callback(*timer.args)
        self._mono = until

    @property
    def pending_timers(self) -> int:
        """Timers set and not yet run or cancelled (a held poll has one)."""
        return sum(1 for *_, t in self._timers if not t.cancelled)
