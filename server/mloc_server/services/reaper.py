"""The reaper: expires leases whose agent went silent, times tasks out, moves tasks out of retry
backoff, and writes the progress and last-seen times gathered in memory, about once a second."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from mloc_shared.errors import Unavailable

from mloc_server.clock import Clock
from mloc_server.services.fleet import Fleet
from mloc_server.services.history import note_stored, restore_points, take_points
from mloc_server.services.leasing import Leasing
from mloc_server.services.preemption import Preempter
from mloc_server.settings import CoordinatorSettings
from mloc_server.store import Store, StoreTx

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Reaper:
    db: Store
    fleet: Fleet
    leasing: Leasing
    settings: CoordinatorSettings
    clock: Clock

    async def reap_once(self) -> None:
        """One pass; runs about once a second (more often with short TTLs)."""
        fleet = self.fleet
        mono, now = self.clock.monotonic(), self.clock.time()
        for lease in list(fleet.leases.values()):
            if lease.closing or lease.epoch < 0:
                continue
            if lease.expires_at < mono:
                await self.leasing.expire(lease, f"lease expired: no heartbeat from agent "
                                                 f"{fleet.agent_name(lease.agent_id)} "
                                                 f"within {self.settings.lease_ttl_s:g}s")
            elif lease.meta.timeout_s and not lease.cancel_requested and now - lease.started_at > lease.meta.timeout_s:
                lease.timed_out = True
                lease.cancel_requested = True
                fleet.wake_agent(lease.agent_id, "cancel")
        if self.leasing.gangs is not None:
            await self.leasing.gangs.tick()
        for task in fleet.queue.promote_due(now):
            fleet.wake_for(task.req)
        Preempter(fleet, self.settings, self.clock).check()  # a task past its min runtime may now be preempted
        await self.flush()

    async def flush(self) -> None:
        """Write progress (the latest, and the history's new points), agents' last-seen times and changed
        inventories (held models) gathered since the last flush, in one transaction."""
        fleet = self.fleet
        progress = [(lease.task_id, lease.epoch, lease.progress) for lease in fleet.leases.values()
                    if lease.progress_dirty and lease.progress is not None]
        seen = [(a.last_seen, a.id) for a in fleet.agents.values() if a.seen_dirty]
        inventories = [(a.inventory, a.id) for a in fleet.agents.values() if a.inventory_dirty]
        points = take_points(fleet.leases.values())
        if not progress and not seen and not inventories and not points:
            return
        for lease in fleet.leases.values():
            lease.progress_dirty = False
        for agent in fleet.agents.values():
            agent.seen_dirty = agent.inventory_dirty = False

        def write(tx: StoreTx) -> dict[tuple[str, int], int]:
            if progress:
                tx.save_progress(progress)
            if seen:
                tx.touch_agents(seen)
            if inventories:
                tx.save_inventories(inventories)
            return tx.add_progress_points(b for _, b in points) if points else {}

        try:
            counts = await self.db.write(write)
        except Exception:
            restore_points(points)
            raise
        note_stored(points, counts)

    async def run(self) -> None:
        """Forever, until cancelled at shutdown; a failed pass is logged and retried. (The pause
        between passes is real time: in-process tests call ``reap_once`` after moving the clock.)"""
        interval = min(1.0, self.settings.lease_ttl_s / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap_once()
            except Unavailable as exc:  # the database is down or full: already logged, no stack trace
                log.warning("reaper pass skipped: %s; retrying", exc.message)
            except Exception:
                log.exception("reaper pass failed; retrying")
