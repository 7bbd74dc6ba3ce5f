"""The held polls, grouped by what their agents could take now, so waking one is O(shapes).

A submit wakes one waiting agent that fits. Checking each waiting agent costs ~10 µs, so a scan
over all of them blocked the event loop for 100+ ms per call at 10,000 agents whenever no waiting
agent fitted: every submit to a busy fleet, and every registration while such a task was queued
(quadratic in fleet size). Agents with the same ``match_key`` fit the same requirements, so one
check stands for its whole group; a fleet has a few hardware shapes, not thousands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from mloc_server.services.scheduler import AgentView, match_key

if TYPE_CHECKING:  # fleet.py holds a WaitingPolls
    from mloc_server.services.fleet import AgentState


class WaitingPolls:
    def __init__(self) -> None:
        self._groups: dict[tuple[object, ...], dict[str, AgentState]] = {}
        self._key_of: dict[str, tuple[object, ...]] = {}

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

    def pop_fitting(self, fits: Callable[[AgentView], bool],
                    prefer: Callable[[AgentState], int] | None = None) -> Iterator[AgentState]:
        """Unpark and yield waiting agents that fit, longest-waiting group first; one check per group.
        ``prefer`` scores an agent by what it holds of the task (its image, its model: fleet.prefers):
        higher scores come before the others that fit, a preference only: the others still follow at once."""
        if prefer is not None:
            fitting = [g for g in list(self._groups.values()) if g and fits(next(iter(g.values())).view())]
            scored = [(score, order, group, agent) for order, (group, agent) in
                      enumerate((g, a) for g in fitting for a in g.values()) if (score := prefer(agent)) > 0]
            scored.sort(key=lambda item: (-item[0], item[1]))  # stable: longest-waiting first among equals
            for _, _, group, agent in scored:
                if self._key_of.get(agent.id) is not None and group.get(agent.id) is agent:
                    self._remove(agent.id)
                    yield agent
            groups = fitting
        else:
            groups = list(self._groups.values())
        for group in groups:
            if not group or (prefer is None and not fits(next(iter(group.values())).view())):
                continue
            while group:  # one at a time: the caller usually stops at the first
                agent = next(iter(group.values()))
                self._remove(agent.id)
                yield agent
