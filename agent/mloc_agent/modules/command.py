"""``taskType: command``: a shell string run by /bin/sh, or an argument list run directly."""

from __future__ import annotations

import asyncio
from typing import Any

from mloc_agent.modules.base import BaseModule, ProgressCallback


class CommandModule(BaseModule):
    task_type = "command"

    @classmethod
    def checkpoints_on_preempt(cls, spec: dict[str, Any]) -> bool:
        return bool(spec.get("checkpoint_on_preempt"))  # opted in: it handles SIGUSR1 / the preempt file

    @classmethod
    def direct_argv(cls, spec: dict[str, Any]) -> list[str]:
        command = spec["command"]
        if isinstance(command, str):
            return ["/bin/sh", "-c", command]
        return [str(part) for part in command]

    async def execute(self, progress_callback: ProgressCallback | None = None) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(*self.direct_argv(self.spec))
        code = await proc.wait()
        if code != 0:
            raise RuntimeError(f"command exited with code {code}")
        return {"exit_code": code}
