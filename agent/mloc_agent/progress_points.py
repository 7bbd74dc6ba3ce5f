"""The progress reports a task made between two heartbeats, so the coordinator's loss curve gets every
step, not one point per renewal (docs/pages.md). Bounded: a task reporting faster than heartbeats can carry
keeps the most recent ones."""

from __future__ import annotations

from mloc_shared.protocol import MAX_HEARTBEAT_POINTS, Progress


class ProgressPoints:
    def __init__(self, limit: int = MAX_HEARTBEAT_POINTS) -> None:
        self.limit = limit
        self._points: list[Progress] = []
        self._last_step: int | None = None

    def add(self, p: Progress) -> None:
        """One report; only a new step carrying a value is a point (a bare step/total or message is not)."""
        if p.step is None or p.step == self._last_step or (
                p.loss is None and p.learning_rate is None and not p.metrics):
            return
        self._last_step = p.step
        self._points.append(p)
        if len(self._points) > self.limit:
            del self._points[0]

    def pending(self) -> list[Progress]:
        return list(self._points)

    def sent(self, count: int) -> None:
        """The first ``count`` pending points reached the coordinator (a renewal was acknowledged)."""
        del self._points[:count]
