"""The warden: a tiny process that kills the agent's task processes if the agent dies.

Task processes run in their own process groups (so a signal to the agent's terminal does not
hit them and they can be stopped as a whole). That also means nothing stops them when the agent
is killed with -9. The agent starts one warden, holding a pipe to it, and marks every task
process with ``MLOC_AGENT_INSTANCE=<id>`` in its environment (children inherit it). When the pipe
closes — the agent is gone, however it died — the warden finds every process still carrying the
mark, SIGTERMs their process groups, waits a short grace, then SIGKILLs them, so no orphan keeps
holding a GPU. No per-task message is needed, so starting a task costs the agent nothing here.

``Warden`` is the agent's side; ``main`` is the warden process (``python -m mloc_agent.warden``),
which imports no more than it needs to wait on a pipe (asyncio is imported by the agent's side only).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import uuid
from typing import TYPE_CHECKING

from mloc_agent.task_contract import AGENT_INSTANCE, agent_mark, base_env

if TYPE_CHECKING:
    import asyncio

GRACE_S = 3.0


class Warden:
    """Starts the warden process and keeps the pipe whose closing wakes it."""

    def __init__(self, container_runtime: str | None = None) -> None:
        self.instance = uuid.uuid4().hex
        self.container_runtime = container_runtime  # its binary: the warden removes this agent's containers
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        import asyncio

        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mloc_agent.warden", self.instance,
            *([self.container_runtime] if self.container_runtime else []), stdin=asyncio.subprocess.PIPE,
            start_new_session=True, env=base_env())  # none of the agent's MLOC_* settings: it needs none

    def mark(self, env: dict[str, str]) -> dict[str, str]:
        """The environment of a task process, marked so the warden can find it."""
        return {**env, AGENT_INSTANCE: self.instance}

    async def stop(self) -> None:
        import asyncio

        if self._proc is None or self._proc.stdin is None:
            return
        self._proc.stdin.close()
        with contextlib.suppress(TimeoutError, ProcessLookupError):
            await asyncio.wait_for(self._proc.wait(), 10)


def marked_pids(*marks: bytes) -> list[int]:
    """Processes (not this one) whose environment carries every one of ``marks`` (``NAME=value``)."""
    pids = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                variables = fh.read().split(b"\0")
        except OSError:
            continue
        if all(mark in variables for mark in marks):
            pids.append(int(entry))
    return pids


def marked_groups(instance: str) -> set[int]:
    """Process groups of processes whose environment carries this agent instance's mark."""
    groups = set()
    for pid in marked_pids(agent_mark(instance).encode()):
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(pid))
    return groups


def _signal(groups: set[int], sig: int) -> set[int]:
    alive = set()
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
            alive.add(pgid)
        except (ProcessLookupError, PermissionError):
            pass
    return alive


def main() -> int:
    instance = sys.argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only the agent's death (EOF) stops us
    while sys.stdin.buffer.read(4096):
        pass
    alive = _signal(marked_groups(instance), signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = _signal(alive, 0)
    _signal(alive | marked_groups(instance), signal.SIGKILL)
    if len(sys.argv) > 2:  # image: tasks' containers (their processes may not be visible here: rootless)
        from mloc_agent.containers import remove_labelled

        remove_labelled(sys.argv[2], instance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
