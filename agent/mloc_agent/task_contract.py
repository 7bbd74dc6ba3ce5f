"""What the agent and a task process agree on, in one place: the ``MLOC_*`` variables a task starts
with, and the messages it sends back on its channel (one JSON line each, written to ``$MLOC_PROGRESS``).

The agent writes the variables (``TaskEnv.to_env`` in lease_run.py, ``channel_env`` in runner.py) and
reads the messages (``decode``); the task side reads the variables (``TaskEnv.from_env``: modules/base.py,
task_host.py) and writes the messages (``encode``). Shell tasks use the same names and lines, so these
names are public (docs/modules.md). Standard library only: the task process and the warden import it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

# -- the variables -----------------------------------------------------------------------------------

TASK_ID = "MLOC_TASK_ID"
ATTEMPT = "MLOC_ATTEMPT"
GPUS = "MLOC_GPUS"  # the agent's GPU indices, comma-separated (CUDA_VISIBLE_DEVICES holds the same)
WORKDIR = "MLOC_WORKDIR"
OUTPUT_DIR = "MLOC_OUTPUT_DIR"  # every file left here is uploaded as an artifact
CHECKPOINT_DIR = "MLOC_CHECKPOINT_DIR"
AGENT_DATA_DIR = "MLOC_AGENT_DATA_DIR"  # outlives the task: caches, persistent vector stores
RESUME_DIR = "MLOC_RESUME_DIR"  # the checkpoint this attempt resumes from, unpacked
RESUME_STEP = "MLOC_RESUME_STEP"
SOURCES_DIR = "MLOC_SOURCES_DIR"  # outputs of the finished tasks this one reads
TASK_FILE = "MLOC_TASK_FILE"  # for task_host: the spec, the module to load, the agent's python_path
RESULT_FILE = "MLOC_RESULT_FILE"  # from task_host: the module's result or error
PROGRESS_FD = "MLOC_PROGRESS_FD"  # the channel's write end, as an fd number
PROGRESS = "MLOC_PROGRESS"  # the same as a path: any shell can write to it (dash cannot redirect to fds > 9)
# torchrun's ranks: torchrun closes inherited fds, so ranks write their messages to this FIFO (a path in the
# work dir) instead of the pipe; only global rank 0 writes (RANK, set by torchrun)
RANK_CHANNEL = "MLOC_RANK_CHANNEL"
AGENT_INSTANCE = "MLOC_AGENT_INSTANCE"  # the warden's mark: inherited by everything the task starts
TASK_OWNER = "MLOC_TASK_OWNER"  # the task's user: what the task keeps on the agent (RAG collections) is scoped to it
ALLOW_PRIVATE_URLS = "MLOC_ALLOW_PRIVATE_URLS"  # "true": task URLs may reach loopback and private addresses
COORDINATOR_URL = "MLOC_COORDINATOR_ORIGIN"  # where the coordinator is: no task URL may reach it (url_policy.py)
# a sweep's child (docs/pipelines.md): its place among the sweep's tasks, 0-based, and how many there are
ARRAY_INDEX = "MLOC_ARRAY_INDEX"
ARRAY_COUNT = "MLOC_ARRAY_COUNT"
TASK_PATH_ROOTS = "MLOC_TASK_PATH_ROOTS"  # the folders task-named paths must lie in, os.pathsep-separated
# preemption (docs/modules.md): the agent writes this file ({"grace_s", "reason"}) and sends PREEMPT_SIGNAL to
# every process of the task; the task checkpoints, sends ``Preempted`` and exits within the grace
PREEMPT_FILE = "MLOC_PREEMPT_FILE"
PREEMPT_SIGNAL_NAME = "SIGUSR1"


def array_env(spec: Mapping[str, Any]) -> dict[str, str]:
    """MLOC_ARRAY_INDEX / MLOC_ARRAY_COUNT of a sweep's child (the coordinator puts ``array`` in its spec)."""
    array = spec.get("array")
    if not isinstance(array, dict) or "index" not in array or "count" not in array:
        return {}
    return {ARRAY_INDEX: str(int(array["index"])), ARRAY_COUNT: str(int(array["count"]))}


@dataclass(frozen=True)
class TaskEnv:
    """The variables of one task process, built by the agent and read back by the task."""

    task_id: str
    attempt: int
    gpus: list[int]
    workdir: Path
    output_dir: Path
    checkpoint_dir: Path
    agent_data_dir: Path | None = None
    resume_dir: Path | None = None
    resume_step: int | None = None
    sources_dir: Path | None = None
    task_file: Path | None = None  # set when task_host hosts a Python module
    result_file: Path | None = None
    progress_fd: int | None = None  # runner.py adds it as the process starts (channel_env); read back here
    owner: str | None = None
    allow_private_urls: bool = False
    coordinator_url: str | None = None
    path_roots: tuple[Path, ...] = ()
    preempt_file: Path | None = None
    rank_channel: Path | None = None  # launch.RankChannel adds it for torchrun tasks; read back here
    rank: int = 0  # the global rank (torchrun's RANK); 0 outside torchrun

    def to_env(self) -> dict[str, str]:
        """The variables to lay over the task's base environment (unset fields are left out)."""
        gpus = ",".join(str(g) for g in self.gpus)
        env = {
            "CUDA_VISIBLE_DEVICES": gpus, TASK_ID: self.task_id, ATTEMPT: str(self.attempt), WORKDIR: str(self.workdir),
            GPUS: gpus, OUTPUT_DIR: str(self.output_dir), CHECKPOINT_DIR: str(self.checkpoint_dir),
            "PYTHONUNBUFFERED": "1",
        }
        optional = ((AGENT_DATA_DIR, self.agent_data_dir), (RESUME_DIR, self.resume_dir),
                    (RESUME_STEP, self.resume_step), (SOURCES_DIR, self.sources_dir), (TASK_FILE, self.task_file),
                    (RESULT_FILE, self.result_file), (TASK_OWNER, self.owner),
                    (ALLOW_PRIVATE_URLS, "true" if self.allow_private_urls else "false"),
                    (COORDINATOR_URL, self.coordinator_url),
                    (TASK_PATH_ROOTS, os.pathsep.join(str(p) for p in self.path_roots) or None),
                    (PREEMPT_FILE, self.preempt_file))
        if self.progress_fd is not None:
            env.update(channel_env(self.progress_fd))
        env.update({name: str(value) for name, value in optional if value is not None})
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TaskEnv:
        """Read inside the task process; KeyError when a variable every task gets is missing."""
        env = os.environ if env is None else env
        return cls(
            task_id=env[TASK_ID], attempt=int(env.get(ATTEMPT, "1")),
            gpus=[int(g) for g in env.get(GPUS, "").split(",") if g], workdir=Path(env.get(WORKDIR, ".")),
            output_dir=Path(env[OUTPUT_DIR]), checkpoint_dir=Path(env[CHECKPOINT_DIR]),
            agent_data_dir=_path(env, AGENT_DATA_DIR), resume_dir=_path(env, RESUME_DIR),
            resume_step=int(env[RESUME_STEP]) if env.get(RESUME_STEP) else None,
            sources_dir=_path(env, SOURCES_DIR), task_file=_path(env, TASK_FILE), result_file=_path(env, RESULT_FILE),
            # a rank's PROGRESS_FD names an fd torchrun closed: it writes to the rank channel instead
            progress_fd=int(env[PROGRESS_FD]) if env.get(PROGRESS_FD) and not env.get(RANK_CHANNEL) else None,
            rank_channel=_path(env, RANK_CHANNEL), rank=int(env.get("RANK") or 0), owner=env.get(TASK_OWNER) or None,
            allow_private_urls=env.get(ALLOW_PRIVATE_URLS) == "true", coordinator_url=env.get(COORDINATOR_URL) or None,
            path_roots=tuple(Path(p) for p in env.get(TASK_PATH_ROOTS, "").split(os.pathsep) if p),
            preempt_file=_path(env, PREEMPT_FILE),
        )


# the agent's own secrets: never in a task's environment (base_env drops every MLOC_*), and gone from the
# agent's own environment once it has started (secret_handover.py), so no process of it shows them in /proc
AGENT_SECRETS = ("MLOC_JOIN_TOKEN", "MLOC_TOKEN", "MLOC_ADMIN_TOKEN", "MLOC_S3_SECRET_ACCESS_KEY")


def base_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What every task process starts from: the agent's environment without its own ``MLOC_*``
    settings (the join token, S3 keys and the like among them). Built once per agent: filtering
    os.environ costs ~0.1 ms, on every task start."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if not k.startswith("MLOC_")}


def host_argv(interpreter: str) -> list[str]:
    """How the agent starts the Python task host: isolated (``-I``: no ``PYTHON*`` variable, no user
    site, no script or working dir on sys.path, whatever the environment holds) and unbuffered
    (``-u``: what ``PYTHONUNBUFFERED`` does for other processes, which ``-I`` ignores)."""
    return [interpreter, "-I", "-u", "-m", "mloc_agent.task_host"]


def host_python_path(environ: Mapping[str, str]) -> list[str]:
    """The folders of the agent's own ``PYTHONPATH`` (its operator's choice: plugins, reward functions),
    absolute. The isolated task host ignores the variable, so the agent hands them over in the task file
    (``python_path``) and the host puts them on sys.path."""
    return [os.path.abspath(p) for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]


def _path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name)
    return Path(value) if value else None


def channel_env(write_fd: int) -> dict[str, str]:
    """Where the task writes its messages: the pipe's write end, as an fd number and as a path."""
    return {PROGRESS_FD: str(write_fd), PROGRESS: f"/dev/fd/{write_fd}"}


def agent_mark(instance: str) -> str:
    """``NAME=value`` as it appears in /proc/<pid>/environ of a process carrying the warden's mark."""
    return f"{AGENT_INSTANCE}={instance}"


# -- the messages ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressReport:
    """How far the task is. ``fields`` are those of the wire's ``Progress`` (step, total, loss, message,
    metrics...); the agent validates them there (this module loads no wire models)."""

    kind: ClassVar[str] = "progress"
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointSaved:
    """A checkpoint (file or folder) to upload; the next attempt resumes from the latest one."""

    kind: ClassVar[str] = "checkpoint"
    path: str
    step: int | None = None
    name: str | None = None


@dataclass(frozen=True)
class ArtifactAdded:
    """A file or folder to upload as an artifact now, without waiting for the task to end."""

    kind: ClassVar[str] = "artifact"
    path: str
    name: str | None = None


@dataclass(frozen=True)
class Preempted:
    """The task's acknowledgement of a preemption request: it saved (and sent) its checkpoint at ``step``
    and is exiting for that reason, so the agent reports ``preempted`` whatever its exit code."""

    kind: ClassVar[str] = "preempted"
    step: int | None = None


class PreemptedExit(Exception):
    """Raised by a module that stopped for preemption (not an error: the way out once ``Preempted`` is
    sent); the task host exits 0 without a result."""


ChannelMessage = ProgressReport | CheckpointSaved | ArtifactAdded | Preempted


def preempt_requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether the agent asked this task to checkpoint and stop (its preempt file exists). Cheap: a stat."""
    env = os.environ if env is None else env
    path = env.get(PREEMPT_FILE)
    return bool(path) and os.path.exists(path)


def encode(message: ChannelMessage) -> str:
    """One line, newline included."""
    if isinstance(message, ProgressReport):
        body: dict[str, Any] = {"type": message.kind, **message.fields}
    elif isinstance(message, CheckpointSaved):
        body = {"type": message.kind, "path": message.path, "step": message.step, "name": message.name}
    elif isinstance(message, Preempted):
        body = {"type": message.kind, "step": message.step}
    else:
        body = {"type": message.kind, "path": message.path, "name": message.name}
    return json.dumps(body) + "\n"


def decode(line: bytes | str) -> ChannelMessage | None:
    """A line from the channel, or None when it is not a message (a line without ``type`` is progress:
    what a shell's ``echo '{"step": 3, "total": 10}'`` writes). Lenient: a bad line is dropped, never
    fatal to the agent."""
    try:
        body = json.loads(line)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    kind = body.pop("type", ProgressReport.kind)
    if kind == ProgressReport.kind:
        return ProgressReport(body)
    path, name, step = body.get("path"), body.get("name"), body.get("step")
    if isinstance(step, float) and step.is_integer():
        step = int(step)
    if kind == Preempted.kind:
        return None if isinstance(step, bool) or not isinstance(step, int | None) else Preempted(step)
    if not isinstance(path, str) or not path or not isinstance(name, str | None):
        return None
    if kind == ArtifactAdded.kind:
        return ArtifactAdded(path, name)
    if kind != CheckpointSaved.kind:
        return None
    if isinstance(step, bool) or not isinstance(step, int | None):
        return None
    return CheckpointSaved(path, step, name)
