"""Reporting task completions in batches: while one report is in flight the next ones gather,
so a burst of short tasks costs a few requests, not one each. Each completion still resolves on
its own (a lost lease for one task does not fail the others)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mloc_shared.errors import LeaseLost, MlocError
from mloc_shared.protocol import Completion, CompletionBatch, CompletionRef

from mloc_agent.client import CoordinatorClient
from mloc_agent.retries import with_retries

log = logging.getLogger(__name__)
MAX_BATCH = 500
BUDGET_S = 600.0
COALESCE_S = 0.01  # keep trying to report a result for ten minutes (Buildkite's finish budget)


class CompletionReporter:
    def __init__(self, client: CoordinatorClient) -> None:
        self.client = client
        self._pending: list[tuple[CompletionRef, asyncio.Future[str]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="completions")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def report(self, task_id: str, completion: Completion) -> str:
        """The task's final state as the coordinator recorded it; LeaseLost if it refused."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append((CompletionRef(task_id=task_id, **completion.model_dump()), fut))
        self._wake.set()
        return await fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # a few ms of patience lets a burst of short tasks share one request (and the freed
            # slots come back in one poll reply); invisible next to a task's own run time
            await asyncio.sleep(COALESCE_S)
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                body = CompletionBatch(completions=[ref for ref, _ in batch])
                try:
                    results = await with_retries(lambda b=body: self.client.complete_many(b), BUDGET_S, "completions")
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc if isinstance(exc, MlocError) else MlocError(str(exc)))
                    continue
                by_id = {r.task_id: r for r in results.results}
                for ref, fut in batch:
                    r = by_id.get(ref.task_id)
                    if fut.done():
                        continue
                    if r is not None and r.state is not None:
                        fut.set_result(r.state)
                    elif r is not None and r.code == "lease_lost":
                        fut.set_exception(LeaseLost(r.error or "lease lost"))
                    else:
                        fut.set_exception(MlocError(r.error if r else "no result for this completion"))
