"""The held polls, grouped by what their agents could take now, so waking one is O(shapes).

A submit wakes one waiting agent that fits. Checking each waiting agent costs ~10 µs, so a scan
over all of them blocked the event loop for 100+ ms per call at 10,000 agents whenever no waiting
agent fitted: every submit to a busy fleet, and every registration while such a task was queued
(quadratic in fleet size). Agents with the same ``match_key`` fit the same requirements, so one
check stands for its whole group; a fleet has a few hardware shapes, not thousands.

A task may prefer agents that already hold its image or its hub model (fleet.prefers). Those are
found through an index of what each waiting agent holds, not by scoring every waiting agent: scoring
10,000 of them cost 35 ms a submit (bench/model_placement.py).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mloc_server.services.scheduler import AgentView, match_key

if TYPE_CHECKING:  # fleet.py holds a WaitingPolls
    from mloc_server.services.fleet import AgentState


@dataclass(frozen=True)
class Preference:
    """What a task would rather find on its agent: keys of ``AgentState.held_keys`` ("image:…", "model:…").
    An agent holding more of them is woken before one holding fewer, and one holding none comes last."""

    keys: tuple[str, ...]

    def __call__(self, agent: AgentState) -> int:
        """How many of the keys ``agent`` holds."""
        return sum(key in agent.held_keys for key in self.keys)


class WaitingPolls:
    def __init__(self) -> None:
        self._groups: dict[tuple[object, ...], dict[str, AgentState]] = {}
        self._key_of: dict[str, tuple[object, ...]] = {}
        self._holders: dict[str, dict[str, AgentState]] = {}  # held key -> the waiting agents holding it
        self._held_of: dict[str, frozenset[str]] = {}  # agent id -> its held keys when it was parked
        self._since: dict[str, int] = {}  # agent id -> when it was parked (an order, not a time)
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._key_of)

    def __contains__(self, agent_id: str) -> bool:
        return agent_id in self._key_of

    def add(self, agent: AgentState) -> None:
        """Park an agent whose poll waits; its key is taken now (a change of state wakes it anyway)."""
        self._remove(agent.id)
        key = match_key(agent.view())
        self._key_of[agent.id] = key
        self._groups.setdefault(key, {})[agent.id] = agent
        self._since[agent.id] = next(self._order)
        self._held_of[agent.id] = agent.held_keys
        for held in agent.held_keys:
            self._holders.setdefault(held, {})[agent.id] = agent

    def discard(self, agent: AgentState) -> None:
        """Unpark this agent object (not a newer one registered under the same id since)."""
        key = self._key_of.get(agent.id)
        if key is not None and self._groups[key].get(agent.id) is agent:
            self._remove(agent.id)

    def _remove(self, agent_id: str) -> None:
        key = self._key_of.pop(agent_id, None)
        if key is None:
            return
        group = self._groups[key]
        group.pop(agent_id, None)
        if not group:
            del self._groups[key]
        del self._since[agent_id]
        for held in self._held_of.pop(agent_id, ()):
            holders = self._holders[held]
            holders.pop(agent_id, None)
            if not holders:
                del self._holders[held]

    def pop_fitting(self, fits: Callable[[AgentView], bool],
                    prefer: Preference | None = None) -> Iterator[AgentState]:
        """Unpark and yield waiting agents that fit, longest-waiting group first; one check per group.
        ``prefer``: agents holding more of what the task names come first (longest waiting among equals),
        a preference only: the others that fit still follow at once."""
        fitting: dict[tuple[object, ...], bool] = {}

        def group_fits(key: tuple[object, ...]) -> bool:
            if key not in fitting:
                group = self._groups.get(key)
                fitting[key] = bool(group) and fits(next(iter(group.values())).view())
            return fitting[key]

        if prefer is not None:
            candidates = {a.id: a for k in prefer.keys for a in self._holders.get(k, {}).values()}
            # a heap: the caller usually takes the first (parked times are unique, so agents are never compared)
            ranked = [(-prefer(a), self._since[a.id], a) for a in candidates.values() if group_fits(self._key_of[a.id])]
            heapq.heapify(ranked)
            while ranked:
                agent = heapq.heappop(ranked)[2]
                if self._groups.get(self._key_of.get(agent.id, ()), {}).get(agent.id) is agent:
                    self._remove(agent.id)
                    yield agent
        for key in list(self._groups):
            group = self._groups.get(key)
            if not group or not group_fits(key):
                continue
            while group:  # one at a time: the caller usually stops at the first
                agent = next(iter(group.values()))
                self._remove(agent.id)
                yield agent
