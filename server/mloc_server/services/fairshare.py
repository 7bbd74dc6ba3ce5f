"""Fair share: which owner's task goes first among tasks of the same priority class and priority.

Usage is GPU-seconds decayed exponentially with ``half_life_s`` (Slurm's fair-share), kept per user
and per team in O(1) each: a running lease adds its GPUs to a rate, and usage integrates that rate
as time passes. For the order, a running lease also counts ``running_charge_s`` more, so that two
owners' running counts balance from the first pick rather than once their decayed usage differs.
An owner's rank is that charged usage over its weight; the lowest goes first. With teams on, the
team's rank comes before the user's (the team furthest below its share first, then its user
furthest below theirs). A task that asks for no GPU counts as ``no_gpu_charge`` GPUs.

``SharePolicy`` is what the queue asks (services/queue.py): a head's rank, whether a quota holds
it back (services/quotas.py), and what a pick within one claim has already taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mloc_server.clock import Clock
from mloc_server.services.quotas import Key, Quotas, owner_keys
from mloc_server.settings import FairShareSettings

if TYPE_CHECKING:
    from mloc_server.services.fleet import Fleet
    from mloc_server.services.queue import QueuedTask

Pending = dict[Key, tuple[float, int]]  # taken within one pick, not yet leases: (charge, GPUs)


@dataclass
class Account:
    value: float = 0.0  # decayed GPU-seconds, as of ``at``
    at: float = 0.0
    rate: float = 0.0  # GPU-equivalents running now
    gpus: int = 0  # GPUs held by running leases now (for max_gpus)
    leases: int = 0


class FairShare:
    def __init__(self, settings: FairShareSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._decay = math.log(2) / settings.half_life_s
        self._accounts: dict[Key, Account] = {}

    def charge(self, gpus: int) -> float:
        return float(gpus) if gpus else self.settings.no_gpu_charge

    def keys(self, owner: str, team: str) -> list[Key]:
        """The accounts a task counts against (a team's, "" for no team, when teams are on)."""
        if self.settings.teams_on:
            return [("user", owner), ("team", team)]
        return owner_keys(owner, team)

    def _account(self, key: Key, now: float) -> Account:
        acc = self._accounts.get(key)
        if acc is None:
            acc = self._accounts[key] = Account(at=now)
        elif now > acc.at:
            d = math.exp(-self._decay * (now - acc.at))
            acc.value = acc.value * d + acc.rate / self._decay * (1 - d)
            acc.at = now
        return acc

    def started(self, owner: str, team: str, gpus: int) -> None:
        """A lease began holding ``gpus`` GPUs (0: a GPU-less task)."""
        now = self.clock.time()
        for key in self.keys(owner, team):
            acc = self._account(key, now)
            acc.rate += self.charge(gpus)
            acc.gpus += gpus
            acc.leases += 1

    def stopped(self, owner: str, team: str, gpus: int) -> None:
        now = self.clock.time()
        for key in self.keys(owner, team):
            acc = self._account(key, now)
            acc.rate = max(0.0, acc.rate - self.charge(gpus))
            acc.gpus = max(0, acc.gpus - gpus)
            acc.leases = max(0, acc.leases - 1)
            if acc.leases == 0:
                acc.rate, acc.gpus = 0.0, 0  # no float residue once nothing runs

    def add_past(self, owner: str, team: str, gpus: int, start: float, end: float) -> None:
        """Usage of an attempt that ran from ``start`` to ``end`` (recovery: rebuilt from the store)."""
        now = self.clock.time()
        end = min(end, now)
        if end <= start:
            return
        part = self.charge(gpus) / self._decay * (math.exp(-self._decay * (now - end))
                                                  - math.exp(-self._decay * (now - start)))
        for key in self.keys(owner, team):
            self._account(key, now).value += part

    # -- reading -------------------------------------------------------------------------------

    def usage_s(self, key: Key) -> float:
        """Decayed GPU-seconds of ``key`` up to now, running leases included as far as they ran."""
        return self._account(key, self.clock.time()).value

    def running_gpus(self, key: Key) -> int:
        acc = self._accounts.get(key)
        return acc.gpus if acc is not None else 0

    def running(self, key: Key) -> float:
        acc = self._accounts.get(key)
        return acc.rate if acc is not None else 0.0

    def weight(self, key: Key) -> float:
        weights = self.settings.users if key[0] == "user" else self.settings.teams
        return weights.get(key[1], 1.0)

    def norm(self, key: Key, pending: float = 0.0) -> float:
        """Charged usage over weight: the lower, the further below its share (what the order compares)."""
        return (self.usage_s(key) + (self.running(key) + pending) * self.settings.running_charge_s) / self.weight(key)

    def known(self) -> list[Key]:
        return list(self._accounts)


class SharePolicy:
    """The queue's view of fair share and quotas."""

    def __init__(self, shares: FairShare, quotas: Quotas) -> None:
        self.shares = shares
        self.quotas = quotas

    def rank(self, owner: str, team: str, pending: Pending) -> tuple[float, ...]:
        if not self.shares.settings.enabled:
            return ()
        keys = self.shares.keys(owner, team)
        user = self.shares.norm(keys[0], pending.get(keys[0], (0.0, 0))[0])
        if len(keys) > 1 and self.shares.settings.teams_on:
            return (self.shares.norm(keys[1], pending.get(keys[1], (0.0, 0))[0]), user)
        return (user,)

    def blocked(self, owner: str, team: str, gpus: int, pending: Pending) -> str | None:
        def held(key: Key) -> int:
            return self.shares.running_gpus(key) + pending.get(key, (0.0, 0))[1]

        return self.quotas.gpu_block(owner, team, gpus, held)

    def note(self, pending: Pending, owner: str, team: str, gpus: int) -> None:
        """A pick took this task: count it for the rest of the same pick (its lease is made after)."""
        keys = set(self.shares.keys(owner, team)) | set(owner_keys(owner, team))
        for key in keys:
            charge, held = pending.get(key, (0.0, 0))
            pending[key] = (charge + self.shares.charge(gpus), held + gpus)

    def started(self, owner: str, team: str, gpus: int) -> None:
        self.shares.started(owner, team, gpus)

    def stopped(self, owner: str, team: str, gpus: int) -> bool:
        """Returns whether the owner has a GPU cap (then the freed GPUs may unblock its queued tasks)."""
        self.shares.stopped(owner, team, gpus)
        return self.quotas.has_gpu_cap(owner, team)


# -- explanations: why a queued task is next, or waits ------------------------------------------

def active_users(fleet: Fleet, kind: str = "user") -> list[Key]:
    """Users (or teams) with a task queued or running: those whose weights make up the shares."""
    queued = {k for k in fleet.queue.active_keys() if k[0] == kind}
    running = {(kind, lease.meta.owner if kind == "user" else lease.meta.team) for lease in fleet.leases.values()}
    return sorted(queued | running)


def standing(shares: FairShare, key: Key, active: list[Key]) -> tuple[bool, str]:
    """(whether ``key`` is below its share, 'usage 3.10 GPU-h, share 33 %')."""
    active = active if key in active else [*active, key]
    charged = {k: shares.norm(k) * shares.weight(k) for k in active}
    total_w = sum(shares.weight(k) for k in active)
    total_u = sum(charged.values())
    below = charged[key] / shares.weight(key) <= total_u / total_w + 1e-9
    line = f"usage {shares.usage_s(key) / 3600:.2f} GPU-h, share {100 * shares.weight(key) / total_w:.0f} %"
    return below, line


def queue_reason(fleet: Fleet, task: QueuedTask, *, heads: list[QueuedTask] | None = None,
                 active: list[Key] | None = None) -> str:
    """Why a ready queued task is next for agents of its shape, or what goes first. ``heads`` and
    ``active`` may be computed once for a listing (they are the O(shapes x owners) part)."""
    queue = fleet.queue
    block = queue.blocked(task)
    if block:
        return f"waiting: {block}"
    owner = task.meta.owner
    if queue.head_of(task.bucket) is not task:
        return (f"waiting: behind other tasks of {owner} with the same needs (an owner's own tasks go by "
                "priority class, priority, then submission)")
    heads = queue.heads() if heads is None else heads
    rivals = sorted((h for h in heads if h.req == task.req and queue.blocked(h) is None), key=queue.order_key)
    first = rivals[0] if rivals else task
    policy = fleet.policy
    fair = policy is not None and policy.shares.settings.enabled
    others = {h.meta.owner for h in rivals} - {owner}
    # with teams on, the team decides between tasks of different teams: explain at that level
    by_team = fair and policy is not None and policy.shares.settings.teams_on and first.meta.team != task.meta.team
    who, their, theirs = (f"team {task.meta.team or '(none)'}", "its", "its") if by_team else (owner, "their", "theirs")
    rival = f"team {first.meta.team or '(none)'}" if by_team else first.meta.owner
    if fair and policy is not None:
        key = ("team", task.meta.team) if by_team else ("user", owner)
        pool = active_users(fleet, "team") if by_team else active if active is not None else active_users(fleet)
        below, line = standing(policy.shares, key, pool)
    if first is task:
        if fair and others:
            if below:
                return f"next: {who} is below {their} share ({line})"
            return f"next: {who}'s task is first in line though above {their} share ({line})"
        return "next: waiting for a fitting agent to have free GPUs"
    if first.sort_key[:2] < task.sort_key[:2]:
        ahead = sum(1 for h in rivals if h.sort_key[:2] < task.sort_key[:2])
        return f"waiting: {ahead} task(s) of a higher priority class or priority go first (next: {first.id})"
    if fair:
        where = "below" if below else "above"
        return f"waiting: {who} is {where} {their} share ({line}); {rival} is further below {theirs}"
    return f"waiting: {first.id} was queued earlier"
