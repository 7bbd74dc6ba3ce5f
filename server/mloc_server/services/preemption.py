"""Preemption: when a queued task fits nowhere, which running tasks to ask to checkpoint and stop.

The rules (docs/scheduling.md), as pure functions of views of the fleet, tested with tables
(tests/test_preemption_policy.py):
- Only running tasks whose priority class is ``preemptible`` and of a lower class priority than
  the waiting task's may be preempted, and only on ONE agent whose GPUs and slots would then let
  the waiting task fit (``scheduler.pick_gpus``). A gang across agents is a later extension.
- The smallest such set wins; among sets of one size, the lowest classes, then the most recently
  started (the least work lost since their last checkpoint is likeliest).
- Anti-thrash: an attempt that has run less than ``preempt_min_runtime_s``, or a task already
  preempted ``preempt_max_per_hour`` times in the last hour, is not preempted.
- A task already asked to stop counts as gone: a waiting task that it makes fit waits for it,
  and no second victim is chosen for it.

``Preempter.check`` applies the decision to the in-memory fleet (no I/O): the victims' leases get
a ``PreemptNotice`` that their agent's held poll and heartbeats carry (services/polling.py,
leasing.py); the task's ack comes back as the completion outcome ``preempted``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import combinations

from mloc_shared.protocol import PreemptNotice

from mloc_server.clock import Clock
from mloc_server.services.fleet import Fleet, LeaseState
from mloc_server.services.scheduler import AgentView, Requirement, pick_gpus, static_mismatch
from mloc_server.settings import CoordinatorSettings

WINDOW_S = 3600.0  # the window preempt_max_per_hour counts in
EXHAUSTIVE_UP_TO = 10  # eligible tasks on one agent searched exhaustively; more: cheapest first, greedily


@dataclass(frozen=True)
class Policy:
    min_runtime_s: float = 300.0
    max_per_hour: int = 2
    grace_s: float = 120.0

    @classmethod
    def from_settings(cls, s: CoordinatorSettings) -> Policy:
        return cls(min_runtime_s=s.preempt_min_runtime_s, max_per_hour=s.preempt_max_per_hour,
                   grace_s=s.preempt_grace_s)


@dataclass(frozen=True)
class Running:
    """A running task as preemption sees it."""

    task_id: str
    gpus: tuple[int, ...]
    priority_class: str
    class_priority: int
    preemptible: bool
    started_at: float
    preempted_at: tuple[float, ...] = ()
    stopping: bool = False  # already asked to preempt (or to cancel): its GPUs are as good as free


@dataclass(frozen=True)
class Waiting:
    task_id: str
    req: Requirement
    priority_class: str
    class_priority: int


@dataclass(frozen=True)
class Choice:
    """On ``agent``: preempt ``victims`` (none: tasks already stopping make room) for the waiting task."""

    agent: str
    victims: tuple[str, ...]


def protection(run: Running, waiting: Waiting, policy: Policy, now: float) -> str | None:
    """Why ``run`` may not be preempted for ``waiting``; None when it may."""
    if not run.preemptible:
        return f"task {run.task_id} (class {run.priority_class}) is not preemptible"
    if run.class_priority >= waiting.class_priority:
        return f"task {run.task_id} (class {run.priority_class}) is not of a lower class"
    ran = now - run.started_at
    if ran < policy.min_runtime_s:
        return (f"task {run.task_id} has run {ran:.0f}s of the {policy.min_runtime_s:g}s before it may be "
                "preempted (preempt_min_runtime_s)")
    recent = sum(1 for t in run.preempted_at if now - t < WINDOW_S)
    if recent >= policy.max_per_hour:
        return (f"task {run.task_id} was preempted {recent} time(s) in the last hour "
                f"(preempt_max_per_hour {policy.max_per_hour})")
    return None


def _fits_without(req: Requirement, view: AgentView, gone: Iterable[Running]) -> bool:
    gone = list(gone)
    freed = {g for r in gone for g in r.gpus}
    trial = replace(view, used_gpus=set(view.used_gpus) - freed, free_slots=view.free_slots + len(gone))
    return pick_gpus(req, trial) is not None


def _cost(runs: Sequence[Running]) -> tuple[int, float]:
    """Lower first: the lowest classes, then the latest started (least work lost)."""
    return sum(r.class_priority for r in runs), -sum(r.started_at for r in runs)


def victims_on(waiting: Waiting, view: AgentView, running: Sequence[Running], policy: Policy,
               now: float) -> tuple[tuple[Running, ...] | None, list[str]]:
    """The smallest set of ``running`` (tasks on ``view``'s agent) to preempt so that ``waiting`` fits
    there, or None with the reasons the tasks that would be needed are protected. ``()`` means that tasks
    already stopping make room (nothing more to preempt)."""
    if not view.accepting or static_mismatch(waiting.req, view) is not None:
        return None, []
    stopping = [r for r in running if r.stopping]
    if _fits_without(waiting.req, view, stopping):
        return (), []
    eligible, reasons = [], []
    for r in running:
        if r.stopping:
            continue
        why = protection(r, waiting, policy, now)
        if why is None:
            eligible.append(r)
        else:
            reasons.append(why)
    eligible.sort(key=lambda r: _cost([r]))
    if len(eligible) > EXHAUSTIVE_UP_TO:  # greedy: the cheapest prefix that makes room
        for k in range(1, len(eligible) + 1):
            if _fits_without(waiting.req, view, [*stopping, *eligible[:k]]):
                return tuple(eligible[:k]), reasons
        return None, reasons
    for k in range(1, len(eligible) + 1):
        fitting = [c for c in combinations(eligible, k) if _fits_without(waiting.req, view, [*stopping, *c])]
        if fitting:
            return min(fitting, key=_cost), reasons
    return None, reasons


def choose(waiting: Waiting, agents: Sequence[tuple[AgentView, Sequence[Running]]], policy: Policy,
           now: float) -> tuple[Choice | None, str | None]:
    """Where to make room for ``waiting`` (None when nowhere), else why it waits. Call it only when
    ``waiting`` fits on no agent now."""
    best: tuple[tuple[int, tuple[int, float]], Choice] | None = None
    reasons: list[tuple[str, str]] = []
    for view, running in agents:
        victims, why = victims_on(waiting, view, running, policy, now)
        if victims is None:
            reasons.extend((view.name, w) for w in why)
            continue
        key = (len(victims), _cost(victims))
        if best is None or key < best[0]:
            best = key, Choice(view.name, tuple(r.task_id for r in victims))
    if best is not None:
        return best[1], None
    if not reasons:
        return None, None
    shown = "; ".join(f"{agent}: {why}" for agent, why in reasons[:3])
    more = f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else ""
    return None, f"no running task can be preempted for it ({waiting.priority_class}): {shown}{more}"


def running_view(lease: LeaseState, preempted_at: Sequence[float]) -> Running:
    m = lease.meta
    return Running(task_id=lease.task_id, gpus=lease.gpus, priority_class=m.priority_class,
                   class_priority=m.class_priority, preemptible=m.preemptible, started_at=lease.started_at,
                   preempted_at=tuple(preempted_at),
                   stopping=lease.preempt is not None or lease.cancel_requested or lease.closing)


@dataclass(eq=False)
class Preempter:
    """Runs the rules over the fleet on submit and on the reaper's tick; cheap unless a task of a
    higher class waits that fits nowhere."""

    fleet: Fleet
    settings: CoordinatorSettings
    clock: Clock

    def check(self) -> list[str]:
        """Ask the chosen victims to checkpoint and stop; returns their task ids."""
        fleet, now = self.fleet, self.clock.time()
        policy = Policy.from_settings(self.settings)
        fleet.preempt_reasons.clear()
        heads = fleet.queue.heads()
        if not heads or not fleet.leases:
            return []
        views = {a.id: a.view() for a in fleet.agents.values()}
        taken: set[str] = set()  # an agent making room for one task is not counted on for another
        asked: list[str] = []
        for head in sorted(heads):
            if any(pick_gpus(head.req, v) is not None for v in views.values()):
                continue
            waiting = Waiting(head.id, head.req, head.meta.priority_class, head.meta.class_priority)
            candidates = [(views[a.id], [running_view(le, fleet.preempted_at.get(le.task_id, ()))
                                         for le in a.leases.values() if le.epoch >= 0])
                          for a in fleet.agents.values() if a.id not in taken]
            choice, why = choose(waiting, candidates, policy, now)
            if choice is None:
                if why:
                    fleet.preempt_reasons[head.req] = why
                continue
            agent = fleet.agent_named(choice.agent)
            if agent is None:
                continue
            taken.add(agent.id)
            if not choice.victims:
                fleet.preempt_reasons[head.req] = f"waiting for preempted task(s) on {agent.name} to checkpoint"
            for task_id in choice.victims:
                lease = agent.leases[task_id]
                lease.preempt = PreemptNotice(grace_s=policy.grace_s,
                                              reason=f"preempted for task {head.id} (class {head.meta.priority_class})")
                fleet.preempted_at.setdefault(task_id, []).append(now)
                fleet.counters["preemptions_requested"] += 1
                asked.append(task_id)
            if choice.victims:
                fleet.preempt_reasons[head.req] = (f"preempting {', '.join(choice.victims)} on {agent.name}; "
                                                   "starts once they have checkpointed")
                agent.wake("preempt")
        return asked
