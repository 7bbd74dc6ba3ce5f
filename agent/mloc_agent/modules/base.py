"""The task module interface (the original README's shape: ``execute(progress_callback)``).

A module runs inside a child process (task_host.py), never in the agent's event loop. It talks
to the agent through ``TaskContext``: progress, checkpoints and artifacts are JSON lines on a
pipe that the agent reads and turns into heartbeats and uploads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mloc_agent.modules.sources.path_policy import PathPolicy
from mloc_agent.modules.sources.url_policy import UrlPolicy
from mloc_agent.task_contract import ArtifactAdded, ChannelMessage, CheckpointSaved, ProgressReport, TaskEnv, encode

ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass
class TaskContext:
    task_id: str
    attempt: int
    spec: dict[str, Any]
    gpus: list[int]
    workdir: Path
    output_dir: Path
    checkpoint_dir: Path
    resume_dir: Path | None = None
    resume_step: int | None = None
    sources_dir: Path | None = None  # outputs of the finished tasks this one reads (see mloc_agent/sources.py)
    owner: str | None = None  # the task's user (None outside an agent, or from a coordinator that does not say)
    urls: UrlPolicy = field(default_factory=UrlPolicy)  # what task-named URLs may reach (strict outside an agent)
    paths: PathPolicy = field(default_factory=PathPolicy)  # what task-named paths may read (none outside an agent)
    channel_fd: int | None = None
    channel_path: Path | None = None  # torchrun's ranks: the FIFO (task_contract.RANK_CHANNEL)
    rank: int = 0  # global rank under torchrun: only rank 0 reports, so progress and checkpoints are sent once
    _channel: Any = field(default=None, repr=False)

    @classmethod
    def from_env(cls, spec: dict[str, Any]) -> TaskContext:
        env = TaskEnv.from_env()
        return cls(
            task_id=env.task_id, attempt=env.attempt, spec=spec, gpus=env.gpus, workdir=env.workdir,
            output_dir=env.output_dir, checkpoint_dir=env.checkpoint_dir, resume_dir=env.resume_dir,
            resume_step=env.resume_step, sources_dir=env.sources_dir, owner=env.owner, channel_fd=env.progress_fd,
            channel_path=env.rank_channel, rank=env.rank,
            urls=UrlPolicy(env.allow_private_urls, env.coordinator_url),
            paths=PathPolicy(env.path_roots, env.agent_data_dir),
        )

    def send(self, message: ChannelMessage) -> None:
        """Write one message to the agent (no-op outside an agent, and on ranks other than 0)."""
        if self.rank != 0 or (self.channel_fd is None and self.channel_path is None):
            return
        if self._channel is None:
            self._channel = (os.fdopen(self.channel_fd, "w", buffering=1) if self.channel_fd is not None
                             else open(self.channel_path, "w", buffering=1))  # noqa: SIM115 (kept open)
        self._channel.write(encode(message))

    def progress(self, update: dict[str, Any]) -> None:
        self.send(ProgressReport(update))

    def save_checkpoint(self, path: Path | str, step: int | None = None) -> None:
        """Ask the agent to upload a checkpoint (file or folder); the next attempt resumes from it."""
        self.send(CheckpointSaved(str(path), step))

    def add_artifact(self, path: Path | str, name: str | None = None) -> None:
        self.send(ArtifactAdded(str(path), name))


class BaseModule:
    """Subclass, set ``task_type``, implement ``execute``; register in the registry or an entry point."""

    task_type: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()  # importable names the module needs (checked without import)
    # what a warm runtime's template imports before it forks this module's tasks (docs/warm-starts.md): the
    # heavy libraries ``execute`` imports; a name the runtime lacks is skipped
    warm_imports: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.spec = ctx.spec

    @classmethod
    def checkpoints_on_preempt(cls, spec: dict[str, Any]) -> bool:
        """Whether the task saves a checkpoint and exits when asked (the preempt file and signal,
        docs/modules.md); otherwise a preemption stops it at once and it starts over elsewhere."""
        return False

    @classmethod
    def direct_argv(cls, spec: dict[str, Any]) -> list[str] | None:
        """For modules that are just a program: the argv the agent runs directly (no Python host)."""
        return None

    async def execute(self, progress_callback: ProgressCallback | None = None) -> dict[str, Any] | None:
        raise NotImplementedError
