"""In-memory state of the fleet: agents, their leases and their waiting polls.

SQLite is the truth; this mirror is rebuilt from it at start and updated after each commit, so
the hot paths (poll, heartbeat) answer without a query.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mloc_shared.protocol import GpuStat, Inventory, Lease

from mloc_server.services.queue import TaskMeta
from mloc_server.services.scheduler import AgentView, Requirement


@dataclass
class LeaseState:
    task_id: str
    agent_id: str
    epoch: int
    attempt: int
    gpus: tuple[int, ...]
    expires_at: float  # time.monotonic()
    started_at: float  # wall clock
    req: Requirement
    meta: TaskMeta
    offer: Lease | None = None
    claim_id: str | None = None
    cancel_requested: bool = False
    cancel_sent: bool = False
    timed_out: bool = False
    closing: bool = False  # a completion or requeue is being committed
    progress: dict[str, Any] | None = None
    progress_dirty: bool = False
    delivered: bool = True  # False while a handed-off offer waits for a poll reply to carry it


@dataclass
class AgentState:
    id: str
    name: str
    credential_hash: str
    labels: dict[str, str]
    inventory: Inventory
    task_types: frozenset[str]
    max_tasks: int
    state: str = "active"  # active | draining (cordoned by an operator)
    version: str = ""
    registered_at: float = 0.0
    last_seen: float = 0.0
    address: str | None = None  # where its last poll came from (behind NAT: the NAT's address)
    self_draining: bool = False  # the agent itself is shutting down (SIGTERM)
    leases: dict[str, LeaseState] = field(default_factory=dict)
    waiter: asyncio.Future[str] | None = None
    # whether the connection of its held poll is still open (a killed agent's poll is not read)
    peer_alive: Callable[[], bool] = field(default=lambda: True, repr=False)
    freed_since_poll: int = 0
    poll_id: str | None = None  # the held poll's id, and how many tasks it can take (for handoffs)
    poll_free: int = 0
    reserved: int = 0  # handoffs reserved for the held poll, not yet committed
    gpu_stats: list[GpuStat] | None = None
    seen_dirty: bool = False

    @property
    def accepting(self) -> bool:
        return self.state == "active" and not self.self_draining

    def used_gpus(self) -> set[int]:
        used: set[int] = set()
        for lease in self.leases.values():
            used.update(lease.gpus)
        return used

    def view(self, free_slots: int | None = None) -> AgentView:
        slots = self.max_tasks - len(self.leases)
        return AgentView(
            name=self.name,
            gpus=self.inventory.gpus,
            labels=self.labels,
            task_types=self.task_types,
            used_gpus=self.used_gpus(),
            free_slots=max(0, min(slots, slots if free_slots is None else free_slots)),
            accepting=self.accepting,
        )

    def wake(self, reason: str) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(reason)

    def connected(self, hold_s: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return now - self.last_seen < hold_s + 30
