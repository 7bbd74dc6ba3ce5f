"""The reaper: expires leases whose agent went silent, times tasks out, moves tasks out of retry
backoff, and writes the progress and last-seen times gathered in memory, about once a second."""

from __future__ import annotations

import asyncio
import logging
import time

from mloc_shared.errors import Unavailable

from mloc_server.services.leasing import Leasing
from mloc_server.store import repo

log = logging.getLogger(__name__)


async def reap_once(leasing: Leasing) -> None:
    """One pass; runs about once a second (more often with short TTLs)."""
    mono, now = time.monotonic(), time.time()
    for lease in list(leasing.leases.values()):
        if lease.closing or lease.epoch < 0:
            continue
        if lease.expires_at < mono:
            agent = leasing.agents.get(lease.agent_id)
            name = agent.name if agent else lease.agent_id
            await leasing.expire(lease, f"lease expired: no heartbeat from agent {name} "
                                     f"within {leasing.settings.lease_ttl_s:g}s")
        elif lease.meta.timeout_s and not lease.cancel_requested and now - lease.started_at > lease.meta.timeout_s:
            lease.timed_out = True
            lease.cancel_requested = True
            agent = leasing.agents.get(lease.agent_id)
            if agent is not None:
                agent.wake("cancel")
    for task in leasing.queue.promote_due(now):
        leasing.wake_for(task.req)
    await flush(leasing)


async def flush(leasing: Leasing) -> None:
    """Write progress and agents' last-seen times gathered since the last flush."""
    progress = [(lease.task_id, lease.epoch, lease.progress) for lease in leasing.leases.values()
                if lease.progress_dirty and lease.progress is not None]
    seen = [(a.last_seen, a.id) for a in leasing.agents.values() if a.seen_dirty]
    if not progress and not seen:
        return
    for lease in leasing.leases.values():
        lease.progress_dirty = False
    for agent in leasing.agents.values():
        agent.seen_dirty = False

    def write(con):
        if progress:
            repo.save_progress(con, progress)
        if seen:
            repo.touch_agents(con, seen)

    await leasing.db.write(write)


async def run_reaper(leasing: Leasing) -> None:
    """Forever, until cancelled at shutdown; a failed pass is logged and retried."""
    interval = min(1.0, leasing.settings.lease_ttl_s / 4)
    while True:
        await asyncio.sleep(interval)
        try:
            await reap_once(leasing)
        except Unavailable as exc:  # the database is down or full: already logged, no stack trace
            log.warning("reaper pass skipped: %s; retrying", exc.message)
        except Exception:
            log.exception("reaper pass failed; retrying")
