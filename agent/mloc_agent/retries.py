"""The agent's one retry policy: which failures are worth another try, and how long to wait first.

Network faults (``TransportFault``) and 5xx answers are retried; any other answer is definitive and
never retried (a 409 ``lease_lost`` means the lease is gone: the task is stopped, not retried).
Waits grow exponentially with full jitter — a uniform draw in ``[0, min(cap, first * 2**n)]`` — so
a fleet that lost its coordinator does not come back in lockstep when it returns.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mloc_shared.errors import Conflict, MlocError, TooManyRequests, TransportFault

log = logging.getLogger(__name__)
T = TypeVar("T")


def retryable(exc: BaseException) -> bool:
    """True for failures that may pass on their own: no answer at all, or a 5xx."""
    if isinstance(exc, TransportFault):
        return True
    return isinstance(exc, MlocError) and exc.status >= 500


def retryable_registration(exc: BaseException) -> bool:
    """Registration also waits out a 409 (the name is held by a connected agent, or one holding leases,
    until they expire or an operator acts) and a 429 (too many refused registrations from this address)."""
    return retryable(exc) or isinstance(exc, (Conflict, TooManyRequests))


class Backoff:
    """Successive waits between tries of one call; ``reset()`` after a success starts over."""

    def __init__(self, first_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        self.first_s, self.cap_s = first_s, cap_s
        self.tries = 0
        self._uniform = (rng or random).uniform

    def next_s(self) -> float:
        """The wait before the next try (full jitter)."""
        ceiling = min(self.cap_s, self.first_s * 2 ** min(self.tries, 32))  # min(): no float overflow
        self.tries += 1
        return self._uniform(0.0, ceiling)

    def reset(self) -> None:
        self.tries = 0


async def with_retries(
    call: Callable[[], Awaitable[T]], budget_s: float, what: str, *, clock: Callable[[], float] = time.monotonic,
) -> T:
    """Retry ``call`` on retryable failures for up to ``budget_s`` (waits 0.2 s doubling to 10 s).

    The budget bounds when the last try may start, not how long a try may take."""
    backoff = Backoff(0.2, 10.0)
    start = clock()
    while True:
        try:
            return await call()
        except Exception as exc:
            if not retryable(exc) or clock() - start >= budget_s:
                raise
            log.warning("%s failed (%s); retrying", what, exc)
        await asyncio.sleep(backoff.next_s())
