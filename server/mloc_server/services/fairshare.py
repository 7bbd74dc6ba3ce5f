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

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mloc_server.clock import Clock
from mloc_server.services.quotas import Key, Quotas, owner_keys
from mloc_server.services.scheduler import Requirement
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

    def _value_at(self, acc: Account, now: float) -> float:
        """The account's decayed usage at ``now``: its value decayed, plus its running rate integrated."""
        if now <= acc.at or not (acc.value or acc.rate):
            return acc.value
        d = math.exp(-self._decay * (now - acc.at))
        return acc.value * d + acc.rate / self._decay * (1 - d)

    def _account(self, key: Key, now: float) -> Account:
        acc = self._accounts.get(key)
        if acc is None:
            acc = self._accounts[key] = Account(at=now)
        elif now > acc.at:
            acc.value, acc.at = self._value_at(acc, now), now
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
        return self.norms([key], {key: (pending, 0)} if pending else {})[key]

    def norms(self, keys: Iterable[Key], pending: Pending) -> dict[Key, float]:
        """``norm`` of many accounts at one instant, reading them without advancing them (a pick's hot loop)."""
        now, charge_s = self.clock.time(), self.settings.running_charge_s
        users, teams = self.settings.users, self.settings.teams
        out: dict[Key, float] = {}
        for key in keys:
            acc = self._accounts.get(key)
            usage, rate = (self._value_at(acc, now), acc.rate) if acc is not None else (0.0, 0.0)
            extra = pending.get(key)
            if extra is not None:
                rate += extra[0]
            out[key] = (usage + rate * charge_s) / (users if key[0] == "user" else teams).get(key[1], 1.0)
        return out

    def known(self) -> list[Key]:
        return list(self._accounts)


class SharePolicy:
    """The queue's view of fair share and quotas."""

    def __init__(self, shares: FairShare, quotas: Quotas) -> None:
        self.shares = shares
        self.quotas = quotas

    def rank(self, owner: str, team: str, pending: Pending) -> tuple[float, ...]:
        return self.ranks([(owner, team)], pending).get((owner, team), ())

    def ranks(self, whos: Iterable[tuple[str, str]], pending: Pending) -> dict[tuple[str, str], tuple[float, ...]]:
        """Each (owner, team)'s rank: (user norm,), or (team norm, user norm) with teams on; {} when off."""
        if not self.shares.settings.enabled:
            return {}
        whos = set(whos)
        teams_on = self.shares.settings.teams_on
        keys = {("user", o) for o, _ in whos} | ({("team", t) for _, t in whos} if teams_on else set())
        norm = self.shares.norms(keys, pending)
        if teams_on:
            return {(o, t): (norm[("team", t)], norm[("user", o)]) for o, t in whos}
        return {(o, t): (norm[("user", o)],) for o, t in whos}

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


@dataclass
class ReasonContext:
    """What every queued task's reason compares against, computed once for a listing: the heads of
    each shape in order (quota-held ones left out) and the active owners' total weight and usage.
    Each reason is then O(log heads), so a listing of every task costs O(tasks log heads)."""

    rivals: dict[Requirement, list[QueuedTask]] = field(default_factory=dict)
    prefixes: dict[Requirement, list[tuple[int, int]]] = field(default_factory=dict)
    owners: dict[Requirement, set[str]] = field(default_factory=dict)
    totals: dict[str, tuple[float, float]] = field(default_factory=dict)  # kind -> (Σ weight, Σ charged usage)

    @classmethod
    def of(cls, fleet: Fleet) -> ReasonContext:
        ctx = cls()
        queue = fleet.queue
        for head in queue.heads():
            if queue.blocked(head) is None:
                ctx.rivals.setdefault(head.req, []).append(head)
        for req, heads in ctx.rivals.items():
            heads.sort(key=queue.order_key)
            ctx.prefixes[req] = [h.sort_key[:2] for h in heads]
            ctx.owners[req] = {h.meta.owner for h in heads}
        if fleet.policy is not None:
            shares = fleet.policy.shares
            for kind in ("user", "team"):
                active = active_users(fleet, kind)
                ctx.totals[kind] = (sum(shares.weight(k) for k in active),
                                    sum(shares.norm(k) * shares.weight(k) for k in active))
        return ctx

    def standing(self, shares: FairShare, key: Key) -> tuple[bool, str]:
        """(whether ``key`` is at or below its share, 'usage 3.10 GPU-h, share 33 %')."""
        total_w, total_u = self.totals.get(key[0], (0.0, 0.0))
        weight = shares.weight(key)
        if total_w <= 0:
            total_w, total_u = weight, shares.norm(key) * weight
        below = shares.norm(key) <= total_u / total_w + 1e-9
        return below, f"usage {shares.usage_s(key) / 3600:.2f} GPU-h, share {100 * weight / total_w:.0f} %"


def queue_reason(fleet: Fleet, task: QueuedTask, ctx: ReasonContext | None = None) -> str:
    """Why a ready queued task is next for agents of its shape, or what goes first. Pass ``ctx``
    (ReasonContext.of) when explaining many tasks: it is the O(shapes x owners) part."""
    queue = fleet.queue
    block = queue.blocked(task)
    if block:
        return f"waiting: {block}"
    owner = task.meta.owner
    if queue.head_of(queue.bucket_of(task)) is not task:
        if not queue.per_owner:
            return "waiting: behind earlier tasks with the same needs (by priority class, priority, then submission)"
        return (f"waiting: behind other tasks of {owner} with the same needs (an owner's own tasks go by "
                "priority class, priority, then submission)")
    ctx = ReasonContext.of(fleet) if ctx is None else ctx
    rivals = ctx.rivals.get(task.req) or [task]
    first = rivals[0]
    owners = ctx.owners.get(task.req, set())
    others = len(owners) > 1 or bool(owners and owner not in owners)
    policy = fleet.policy
    shares = policy.shares if policy is not None and policy.shares.settings.enabled else None
    # with teams on, the team decides between tasks of different teams: explain at that level
    by_team = shares is not None and shares.settings.teams_on and first.meta.team != task.meta.team
    who, their, theirs = (f"team {task.meta.team or '(none)'}", "its", "its") if by_team else (owner, "their", "theirs")
    rival = f"team {first.meta.team or '(none)'}" if by_team else first.meta.owner
    below, line = ctx.standing(shares, ("team", task.meta.team) if by_team else ("user", owner)) if shares else (
        True, "")
    if first is task:
        if shares is not None and others:
            if below:
                return f"next: {who} is below {their} share ({line})"
            return f"next: {who}'s task is first in line though above {their} share ({line})"
        return "next: waiting for a fitting agent to have free GPUs"
    if first.sort_key[:2] < task.sort_key[:2]:
        ahead = bisect.bisect_left(ctx.prefixes[task.req], task.sort_key[:2])
        return f"waiting: {ahead} task(s) of a higher priority class or priority go first (next: {first.id})"
    if shares is not None:
        where = "below" if below else "above"
        return f"waiting: {who} is {where} {their} share ({line}); {rival} is further below {theirs}"
    return f"waiting: {first.id} was queued earlier"
