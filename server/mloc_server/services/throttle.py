"""Refused registrations, counted per client address: guessing join tokens, or hammering a known
agent's name, from one address runs into 429s within a dozen tries, while agents that register
fine are never slowed (a fleet of boxes behind one NAT joins at once).

A token bucket per address on the coordinator's monotonic clock: ``burst`` refusals at once, then
``per_minute``. Buckets live in memory only (a restart forgets them, as it should: a guesser
gains a burst per restart, nothing more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mloc_shared.errors import TooManyRequests

from mloc_server.clock import Clock


@dataclass
class _Bucket:
    tokens: float
    at: float  # clock.monotonic() of the last refill


class RefusalThrottle:
    def __init__(self, clock: Clock, *, burst: int = 10, per_minute: float = 10.0,
                 max_addresses: int = 10_000) -> None:
        self.clock = clock
        self.burst = float(burst)
        self.rate = per_minute / 60.0  # tokens per second
        self.max_addresses = max_addresses
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        """How many addresses are being counted."""
        return len(self._buckets)

    def check(self, address: str | None) -> None:
        """Raise TooManyRequests when ``address`` has used up its refusals; changes nothing."""
        bucket = self._refilled(address or "")
        if bucket is not None and bucket.tokens < 1.0:
            wait = math.ceil((1.0 - bucket.tokens) / self.rate)
            raise TooManyRequests(
                f"too many refused registrations from {address}; try again in {wait}s", retry_after_s=wait,
                hint="check the agent's join token (MLOC_JOIN_TOKEN) and name (MLOC_AGENT_NAME)")

    def refused(self, address: str | None) -> None:
        """Count one refused registration against ``address``."""
        key = address or ""
        bucket = self._refilled(key)
        if bucket is None:
            if len(self._buckets) >= self.max_addresses:
                self._forget_full()
            bucket = self._buckets[key] = _Bucket(self.burst, self.clock.monotonic())
        bucket.tokens -= 1.0

    def _refilled(self, key: str) -> _Bucket | None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            now = self.clock.monotonic()
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        return bucket

    def _forget_full(self) -> None:
        """Addresses whose bucket has filled up again are as good as new: drop them (memory stays bounded)."""
        now = self.clock.monotonic()
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.at) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_addresses:  # all still counting: the oldest goes
            del self._buckets[min(self._buckets, key=lambda k: self._buckets[k].at)]
