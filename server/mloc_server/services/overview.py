"""Fleet counts from the in-memory mirror, shared by /metrics and the status page (no query needed)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mloc_server.services.fleet import AgentState, Fleet

AGENT_STATES = ("active", "draining", "offline")


def agent_state(agent: AgentState, hold_s: float, now: float) -> str:
    """The state the listing shows: offline beats draining beats active."""
    if not agent.connected(hold_s, now):
        return "offline"
    if agent.self_draining or agent.state == "draining":
        return "draining"
    return "active"


@dataclass
class FleetCounts:
    agents: dict[str, int] = field(default_factory=lambda: dict.fromkeys(AGENT_STATES, 0))
    gpus_used: int = 0  # leased to a task
    gpus_free: int = 0  # on a connected agent that takes work, not leased
    gpus_unavailable: int = 0  # idle on an offline or draining agent
    leases: int = 0
    queued: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"agents": self.agents, "agents_total": sum(self.agents.values()),
                "gpus": {"used": self.gpus_used, "free": self.gpus_free, "unavailable": self.gpus_unavailable,
                         "total": self.gpus_used + self.gpus_free + self.gpus_unavailable},
                "leases": self.leases, "queued": self.queued}


def fleet_counts(fleet: Fleet, hold_s: float, now: float | None = None) -> FleetCounts:
    """One pass over the agents: O(agents + leases), about a millisecond for a thousand agents."""
    now = time.time() if now is None else now
    counts = FleetCounts(leases=len(fleet.leases), queued=len(fleet.queue))
    for agent in fleet.agents.values():
        st = agent_state(agent, hold_s, now)
        counts.agents[st] += 1
        used = len(agent.used_gpus()) if agent.leases else 0
        idle = len(agent.inventory.gpus) - used
        counts.gpus_used += used
        if st == "active":
            counts.gpus_free += idle
        else:
            counts.gpus_unavailable += idle
    return counts


def select_agents(fleet: Fleet, hold_s: float, state: str | None, text: str | None) -> list[AgentState]:
    """Agents in a state and/or matching a text (name, hostname, label), sorted by name."""
    now = time.time()
    needle = text.lower() if text else None
    out = []
    for agent in fleet.agents.values():
        if state and agent_state(agent, hold_s, now) != state:
            continue
        if needle:
            hay = " ".join([agent.name, agent.inventory.hostname or "",
                            *(f"{k}={v}" for k, v in agent.labels.items())]).lower()
            if needle not in hay:
                continue
        out.append(agent)
    out.sort(key=lambda a: a.name)
    return out
