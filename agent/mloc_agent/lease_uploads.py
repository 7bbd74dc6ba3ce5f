"""One lease's uploads: checkpoints and artifacts the task announces on its channel go up at once (the
next attempt, on any agent, resumes from the newest checkpoint), and what is left in its output folder
goes up when it ends. A gang's node rank 0 alone uploads (docs/gangs.md)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mloc_shared.protocol import Lease

from mloc_agent.client import CoordinatorClient
from mloc_agent.task_contract import ArtifactAdded, CheckpointSaved
from mloc_agent.uploads import upload


class LeaseUploads:
    def __init__(self, client: CoordinatorClient, lease: Lease, workdir: Path, say: Callable[[str], None]) -> None:
        self.client, self.lease, self.workdir, self.say = client, lease, workdir, say
        self._pending: list[asyncio.Task[Any]] = []
        # a gang's other members upload nothing: node rank 0 holds the checkpoint and the outputs
        self.uploads = lease.gang is None or lease.gang.node_rank == 0

    def soon(self, message: CheckpointSaved | ArtifactAdded) -> None:
        """Upload what a channel message names, in the background."""
        if not self.uploads:
            return
        path = Path(message.path)
        if not path.is_absolute():
            path = self.workdir / path
        if not path.exists():
            self.say(f"[mloc] {message.kind} {path} does not exist; not uploaded\n")
            return
        if isinstance(message, CheckpointSaved):
            step, default_name = message.step, f"checkpoints/step-{message.step}.tar"
        else:
            step, default_name = None, path.name
        self._pending.append(asyncio.create_task(self.one(path, message.name or default_name, message.kind, step)))

    async def one(self, path: Path, name: str, kind: str, step: int | None) -> None:
        try:
            await upload(self.client, self.lease.task_id, self.lease.epoch, path, name=name, kind=kind, step=step)
            self.say(f"[mloc] uploaded {kind} {name}\n")
        except Exception as exc:
            self.say(f"[mloc] upload of {name} failed: {exc}\n")

    async def finish(self, output_dir: Path) -> None:
        """Wait for the announced uploads, then upload every file left in the output folder."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if not self.uploads or not any(os.scandir(output_dir)):  # the common case: no recursive walk
            return
        for path in sorted(p for p in output_dir.rglob("*") if p.is_file()):
            await self.one(path, str(path.relative_to(output_dir)), "artifact", None)
