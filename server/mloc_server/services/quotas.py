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

    @property
    def any_gpu_cap(self) -> bool:
        s = self.settings
        return any(q.max_gpus is not None for q in (s.default, *s.users.values(), *s.teams.values()))

    def has_gpu_cap(self, owner: str, team: str) -> bool:
        return any((q := self.limits(k)) is not None and q.max_gpus is not None for k in owner_keys(owner, team))

    def _over(self, owner: str, team: str, limit: str, adding: int,
              current: Callable[[Key], int]) -> tuple[Key, int, int] | None:
        """The first of the owner's and team's ``limit`` quotas that ``adding`` more would exceed:
        (its account, the limit, the count now); None when none would be."""
        for key in owner_keys(owner, team):
            q = self.limits(key)
            most = getattr(q, limit) if q is not None else None
            if most is not None and (now := current(key)) + adding > most:
                return key, most, now
        return None

    def gpu_block(self, owner: str, team: str, gpus: int, running_gpus: Callable[[Key], int]) -> str | None:
        """Why a task of ``gpus`` GPUs may not start now (its owner or team is at ``max_gpus``); None if it may."""
        over = self._over(owner, team, "max_gpus", gpus, running_gpus) if gpus > 0 else None
        if over is None:
            return None
        key, most, held = over
        return (f"quota: {describe(key)} may use at most {most} GPU(s) at once (max_gpus); "
                f"{held} in use, this task needs {gpus}")

    def check_queued(self, owner: str, team: str, adding: int, queued: Callable[[Key], int]) -> None:
        """Refuse a submit that would take its owner or team over ``max_queued`` (429, one line)."""
        over = self._over(owner, team, "max_queued", adding, queued)
        if over is None:
            return
        key, most, now = over
        more = f"; this submit adds {adding}" if adding > 1 else ""
        exc = TooManyRequests(
            f"quota: {describe(key)} may have at most {most} queued tasks (max_queued); {now} are queued{more}",
            retry_after_s=30, hint="wait for some to start, or cancel some (mloc queue lists them)")
        exc.code = "quota_exceeded"
        raise exc
