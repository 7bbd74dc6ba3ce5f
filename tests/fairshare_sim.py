"""A fleet driven in-process on the injected clock, for the fair-share and quota tests.

The coordinator's real state (app.open_state on a real SQLite file, a ManualClock); agents are
registered through the real registration and take work through the real claim and completion
paths. Each task runs a fixed time of the clock: the simulation jumps from one end to the next.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from mloc_server.app import open_state
from mloc_server.clock import ManualClock
from mloc_server.services.auth import Principal
from mloc_server.services.fleet import AgentState
from mloc_server.settings import CoordinatorSettings
from mloc_server.state import AppState
from mloc_shared.protocol import Completion, Gpu, Inventory, RegisterRequest
from mloc_shared.taskspec import TaskSpec


@contextlib.asynccontextmanager
async def coordinator_on(settings: CoordinatorSettings, clock: ManualClock) -> AsyncIterator[AppState]:
    async with contextlib.AsyncExitStack() as resources:
        yield await open_state(settings, clock, resources)


async def gpu_agent(st: AppState, name: str, gpus: int = 1, max_tasks: int = 1) -> AgentState:
    inv = Inventory(hostname=name, gpu_source="declared", gpus=[
        Gpu(index=i, uuid=f"{name}-{i}", name="Test GPU", memory_total_mb=24576, compute_capability="8.9")
        for i in range(gpus)])
    resp = await st.agents.register(RegisterRequest(agent_version="test", name=name, inventory=inv,
                                                    task_types=["command"], max_tasks=max_tasks), None)
    return st.fleet.agents[resp.agent_id]


async def submit_as(st: AppState, user: str, n: int, *, team: str = "", gpus: int = 1,
                    **spec: Any) -> list[str]:
    who = Principal(user=user, role="user", team=team)
    ids = []
    for _ in range(n):
        body = {"taskType": "command", "command": "true", "resources": {"gpus": gpus}, **spec}
        record, _ = await st.tasks.submit(TaskSpec.model_validate(body), who)
        ids.append(record["id"])
        if isinstance(st.clock, ManualClock):
            st.clock.advance(0.01)  # submissions in order, as they would arrive
    return ids


def running_by_owner(st: AppState) -> Counter[str]:
    return Counter(lease.meta.owner for lease in st.fleet.leases.values())


def running_gpus_by_owner(st: AppState) -> Counter[str]:
    out: Counter[str] = Counter()
    for lease in st.fleet.leases.values():
        out[lease.meta.owner] += len(lease.gpus)
    return out


@dataclass
class Sim:
    """Agents claim whenever they have a free slot; every task runs ``duration`` seconds."""

    st: AppState
    agents: list[AgentState]
    duration: float = 60.0
    started: list[str] = field(default_factory=list)  # owners, in start order
    samples: list[Counter[str]] = field(default_factory=list)  # running counts after each fill
    gpu_samples: list[Counter[str]] = field(default_factory=list)  # running GPUs after each fill
    _ends: list[tuple[float, int, AgentState, str, int]] = field(default_factory=list)
    _seq: itertools.count = field(default_factory=itertools.count)

    @property
    def clock(self) -> ManualClock:
        assert isinstance(self.st.clock, ManualClock)
        return self.st.clock

    async def fill(self) -> None:
        for agent in self.agents:
            free = agent.max_tasks - len(agent.leases)
            if free <= 0:
                continue
            for offer in await self.st.leasing.claim(agent, free, f"poll-{next(self._seq)}"):
                self.started.append(self.st.fleet.leases[offer.task_id].meta.owner)
                heapq.heappush(self._ends, (self.clock.time() + self.duration, next(self._seq), agent,
                                            offer.task_id, offer.epoch))
        self.samples.append(running_by_owner(self.st))
        self.gpu_samples.append(running_gpus_by_owner(self.st))

    async def step(self) -> bool:
        """Finish the next task to end (and fill its slot); False when nothing runs."""
        if not self._ends:
            return False
        end, _, agent, task_id, epoch = heapq.heappop(self._ends)
        self.clock.advance(max(0.0, end - self.clock.time()))
        await self.st.leasing.complete(agent, task_id, Completion(epoch=epoch, outcome="succeeded"))
        await self.fill()
        return True

    async def run(self, max_starts: int | None = None) -> None:
        await self.fill()
        for _ in range(10_000):  # bounded: a bug that never ends a task fails, not hangs
            if max_starts is not None and len(self.started) >= max_starts:
                return
            if not await self.step():
                return
        raise AssertionError("the simulation did not end")
