"""Child processes: start a task in its own process group, stop it (SIGTERM, then SIGKILL after
a grace), and make sure it dies with the agent (through the warden)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import uuid
from pathlib import Path

log = logging.getLogger(__name__)


class Warden:
    """Starts the warden process (see warden.py) and keeps the pipe whose closing wakes it."""

    def __init__(self) -> None:
        self.instance = uuid.uuid4().hex
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mloc_agent.warden", self.instance, stdin=asyncio.subprocess.PIPE,
            start_new_session=True)

    def mark(self, env: dict[str, str]) -> dict[str, str]:
        """The environment of a task process, marked so the warden can find it."""
        return {**env, "MLOC_AGENT_INSTANCE": self.instance}

    async def stop(self) -> None:
        if self._proc is None or self._proc.stdin is None:
            return
        self._proc.stdin.close()
        with contextlib.suppress(asyncio.TimeoutError, ProcessLookupError):
            await asyncio.wait_for(self._proc.wait(), 10)


class TaskProcess:
    """One running task process (the leader of its own process group)."""

    def __init__(self, proc: asyncio.subprocess.Process, channel: asyncio.StreamReader | None) -> None:
        self.proc = proc
        self.pgid = proc.pid
        self.channel = channel
        self._reaped = False

    @classmethod
    async def start(
        cls, argv: list[str], env: dict[str, str], cwd: Path, warden: Warden
    ) -> TaskProcess:
        read_fd, write_fd = os.pipe()
        # MLOC_PROGRESS is a path any shell can write to (dash cannot redirect to fds above 9)
        env = warden.mark({**env, "MLOC_PROGRESS_FD": str(write_fd), "MLOC_PROGRESS": f"/dev/fd/{write_fd}"})
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env, cwd=str(cwd), start_new_session=True,
                pass_fds=(write_fd,),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb"))
        return cls(proc, reader)

    def signal_group(self, sig: int) -> bool:
        try:
            os.killpg(self.pgid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    async def stop(self, grace_s: float) -> int | None:
        """SIGTERM the whole group, SIGKILL it after ``grace_s``; returns the exit code."""
        if self.proc.returncode is None:
            self.signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace_s)
            except TimeoutError:
                log.warning("task process %d ignored SIGTERM for %.0fs: SIGKILL", self.pgid, grace_s)
        self.reap_group()
        return await self.proc.wait()

    def reap_group(self) -> None:
        """Kill what is left of the group (children the task left behind)."""
        if not self._reaped:
            self._reaped = True
            self.signal_group(signal.SIGKILL)
