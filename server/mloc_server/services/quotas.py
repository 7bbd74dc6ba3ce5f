"""Quotas per user and team: the most GPUs held at once, and the most tasks queued at once.

A submit over ``max_queued`` is refused (429, naming the quota). A queued task that would take its
owner over ``max_gpus`` is skipped by the queue's picks (services/queue.py asks ``gpu_block``), so
it waits without holding back other owners' tasks behind it, and its queue reason says why.
"""

from __future__ import annotations

from collections.abc import Callable

from mloc_shared.errors import TooManyRequests

from mloc_server.settings import Quota, QuotaSettings

Key = tuple[str, str]  # ("user", name) or ("team", name)


def owner_keys(owner: str, team: str) -> list[Key]:
    """The accounts a task counts against: its user's, and its team's when it has one."""
    return [("user", owner), ("team", team)] if team else [("user", owner)]


def describe(key: Key) -> str:
    return f"{key[0]} {key[1]}"


class Quotas:
    def __init__(self, settings: QuotaSettings) -> None:
        self.settings = settings

    def limits(self, key: Key) -> Quota | None:
        kind, name = key
        if kind == "user":
            return self.settings.users.get(name, self.settings.default)
        return self.settings.teams.get(name)

    def has_gpu_cap(self, owner: str, team: str) -> bool:
        return any((q := self.limits(k)) is not None and q.max_gpus is not None for k in owner_keys(owner, team))

    def gpu_block(self, owner: str, team: str, gpus: int, running_gpus: Callable[[Key], int]) -> str | None:
        """Why a task of ``gpus`` GPUs may not start now (its owner or team is at ``max_gpus``); None if it may."""
        if gpus <= 0:
            return None
        for key in owner_keys(owner, team):
            q = self.limits(key)
            if q is None or q.max_gpus is None:
                continue
            held = running_gpus(key)
            if held + gpus > q.max_gpus:
                return (f"quota: {describe(key)} may use at most {q.max_gpus} GPU(s) at once (max_gpus); "
                        f"{held} in use, this task needs {gpus}")
        return None

    def check_queued(self, owner: str, team: str, adding: int, queued: Callable[[Key], int]) -> None:
        """Refuse a submit that would take its owner or team over ``max_queued`` (429, one line)."""
        for key in owner_keys(owner, team):
            q = self.limits(key)
            if q is None or q.max_queued is None:
                continue
            now = queued(key)
            if now + adding > q.max_queued:
                more = f"; this submit adds {adding}" if adding > 1 else ""
                exc = TooManyRequests(
                    f"quota: {describe(key)} may have at most {q.max_queued} queued tasks (max_queued); "
                    f"{now} are queued{more}",
                    retry_after_s=30, hint="wait for some to start, or cancel some (mloc queue lists them)")
                exc.code = "quota_exceeded"
                raise exc
