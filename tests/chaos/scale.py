"""How big each chaos scenario runs: ``MLOC_CHAOS_SCALE=full`` (``make chaos``) or ``ci`` (the default,
so a plain ``pytest`` run, as CI's, stays within a few minutes)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Scale:
    name: str
    # coordinator killed with -9 under load
    coord_tasks: int
    coord_kills: int
    coord_agents: int
    coord_slots: int
    # agents killed with -9 mid-task
    agent_tasks: int
    agent_count: int
    agent_kills: int
    # WAN through NAT
    wan_tasks: int
    wan_probes: int


FULL = Scale("full", coord_tasks=1000, coord_kills=5, coord_agents=3, coord_slots=4,
             agent_tasks=40, agent_count=5, agent_kills=3, wan_tasks=120, wan_probes=10)
CI = Scale("ci", coord_tasks=300, coord_kills=2, coord_agents=3, coord_slots=4,
           agent_tasks=16, agent_count=4, agent_kills=2, wan_tasks=36, wan_probes=5)


def current() -> Scale:
    name = os.environ.get("MLOC_CHAOS_SCALE", "ci").strip().lower() or "ci"
    scales = {s.name: s for s in (FULL, CI)}
    if name not in scales:
        raise ValueError(f"MLOC_CHAOS_SCALE must be one of {', '.join(scales)}, not {name!r}")
    return scales[name]
