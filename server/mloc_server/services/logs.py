"""Task logs: numbered chunks per attempt, stored idempotently, with live followers woken on write."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator

from mloc_shared.protocol import FINAL_STATES, LogBatch

from mloc_server.schemas import LogCursor, LogLine, LogPage
from mloc_server.services.fleet import AgentState
from mloc_server.services.leasing import Leasing
from mloc_server.store import Store


class Logs:
    def __init__(self, db: Store, leasing: Leasing) -> None:
        self.db = db
        self.leasing = leasing
        self._events: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.closing = False
        leasing.on_task_final.append(lambda task_id, _state: self._wake(task_id))

    def release_followers(self) -> None:
        """Wake every follower (shutting down) so open log streams end promptly."""
        self.closing = True
        for event in list(self._events.values()):
            event.set()

    def _wake(self, task_id: str) -> None:
        event = self._events.pop(task_id, None)
        if event is not None:
            event.set()

    async def append(self, agent: AgentState, task_id: str, batch: LogBatch) -> None:
        lease = self.leasing.own_lease(agent, task_id, batch.epoch)
        # a gang's members number their chunks each from 0: interleaved, so that none overwrites another's
        chunks = [(c.seq * lease.nodes + lease.node_rank, c.stream, c.data) for c in batch.chunks]
        now = time.time()
        await self.db.write(lambda tx: tx.insert_logs(task_id, lease.attempt, chunks, now))
        self._wake(task_id)

    async def read(self, task_id: str, attempt: int | None, cursor: tuple[int, int]) -> list[LogLine]:
        rows = await self.db.task_logs(task_id, attempt, cursor)
        return [LogLine(attempt=r.attempt, seq=r.seq, stream=r.stream, data=r.data) for r in rows]

    async def page(self, task_id: str, attempt: int | None, cursor: tuple[int, int]) -> LogPage:
        """The chunks after ``cursor`` and the cursor to ask for the next page with."""
        chunks = await self.read(task_id, attempt, cursor)
        after = (chunks[-1].attempt, chunks[-1].seq) if chunks else cursor
        return LogPage(chunks=chunks, next=LogCursor(after_attempt=after[0], after_seq=after[1]))

    async def follow(
        self, task_id: str, attempt: int | None, cursor: tuple[int, int], heartbeat_s: float = 15.0
    ) -> AsyncIterator[list[LogLine]]:
        """Yield new chunks as they arrive until the task is final and everything was sent.

        An empty list is yielded every ``heartbeat_s`` so proxies keep the stream open.
        """
        while True:
            event = self._events[task_id]
            chunks = await self.read(task_id, attempt, cursor)
            if chunks:
                cursor = (chunks[-1].attempt, chunks[-1].seq)
                yield chunks
                continue
            row = await self.db.get_task(task_id)
            if row is None or row.state in FINAL_STATES or self.closing:
                return
            try:
                await asyncio.wait_for(event.wait(), heartbeat_s)
            except TimeoutError:
                yield []
