"""Tasks that bring their own image (``image:``): the task's process runs inside a container.

The agent drives the container runtime's CLI (``MLOC_CONTAINER_RUNTIME=podman|docker``); the
client process (``podman run``, attached) is the task process, so logs, exit codes, cancel and the
process-group rules stay those of a process task. What crosses into the container:
- the work folder, mounted at the same path (outputs, checkpoints, the resume checkpoint, the task
  file, the channel FIFO), plus the agent's models/ and datasets/ folders read-only when they exist;
- the task's environment and secrets, passed by name (``-e NAME``: the values come from the client's
  environment, never its command line), and nothing of the agent's: its credential stays outside;
- the leased GPUs only (CDI ``--device nvidia.com/gpu=N`` for podman, ``--gpus device=N`` for docker),
  numbered from 0 inside, with ``CUDA_VISIBLE_DEVICES`` to match;
- ``--init`` (signals reach the task, zombies are reaped), a PID limit, and the operator's limits.
Every container carries the labels ``mloc.agent`` (the warden's instance) and ``mloc.task``, so the
warden removes what a killed agent left (warden.py), and cancel stops it by name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mloc_agent.task_contract import AGENT_INSTANCE, PROGRESS, RANK_CHANNEL

if TYPE_CHECKING:
    from mloc_shared.protocol import Lease

    from mloc_agent.settings import AgentSettings

log = logging.getLogger(__name__)

Runtime = Literal["podman", "docker"]
PullPolicy = Literal["always", "missing", "never"]
LABEL_AGENT = "mloc.agent"
LABEL_TASK = "mloc.task"
# what a container needs from the client's environment besides the task's own variables
_CLIENT_ENV = ("PATH", "HOME", "XDG_RUNTIME_DIR", "CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "DOCKER_HOST",
               "DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "TMPDIR", "LANG")


class ImageUnavailable(Exception):
    """The task's image cannot be had (not pulled with policy never, or the pull failed)."""


@dataclass(frozen=True)
class ContainerRuntime:
    kind: Runtime
    binary: str
    pids_limit: int = 8192
    extra_args: tuple[str, ...] = ()

    @classmethod
    def find(cls, kind: Runtime | None, pids_limit: int = 8192,
             extra_args: Sequence[str] = ()) -> ContainerRuntime | None:
        """The configured runtime, or None (not configured, or its program is not installed)."""
        if kind is None:
            return None
        binary = shutil.which(kind)
        if binary is None:
            log.error("MLOC_CONTAINER_RUNTIME=%s but %s is not installed: image: tasks will not be taken", kind, kind)
            return None
        return cls(kind, binary, pids_limit, tuple(extra_args))

    # -- what the agent holds -----------------------------------------------------------------

    def images(self, timeout_s: float = 30) -> list[str]:
        """The images present here (``repository:tag``), reported so placement can prefer this agent."""
        try:
            out = subprocess.run([self.binary, "images", "--format", "{{.Repository}}:{{.Tag}}"],
                                 capture_output=True, text=True, timeout=timeout_s, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("%s images failed: %s", self.kind, exc)
            return []
        return sorted({line.strip() for line in out.stdout.splitlines() if line.strip() and "<none>" not in line})

    async def has_image(self, image: str) -> bool:
        proc = await asyncio.create_subprocess_exec(self.binary, "image", "inspect", image,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL)
        return await proc.wait() == 0

    async def ensure_image(self, image: str, policy: PullPolicy, say: Callable[[str], None]) -> bool:
        """Pull ``image`` as the policy says, its progress lines going to ``say``; True if it was pulled."""
        if policy != "always" and await self.has_image(image):
            return False
        if policy == "never":
            raise ImageUnavailable(f"image {image} is not on this agent and image_pull_policy is never")
        say(f"[mloc] pulling image {image}\n")
        proc = await asyncio.create_subprocess_exec(self.binary, "pull", image, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        assert proc.stdout is not None
        tail: list[str] = []
        async for raw in proc.stdout:
            line = raw.decode(errors="replace")
            tail = [*tail[-4:], line.strip()]
            say(line)
        if await proc.wait() != 0:
            raise ImageUnavailable(f"could not pull image {image}: {' / '.join(t for t in tail if t)[-300:]}")
        return True

    # -- one task's container -----------------------------------------------------------------

    def run_argv(self, spec: ContainerSpec) -> list[str]:
        """``<runtime> run`` for one task, attached (its output is the task's output)."""
        argv = [self.binary, "run", "--rm", "--init", "--name", spec.name, "--label", f"{LABEL_AGENT}={spec.agent}",
                "--label", f"{LABEL_TASK}={spec.task_id}", f"--pids-limit={self.pids_limit}",
                "--workdir", str(spec.workdir), "--volume", f"{spec.workdir}:{spec.workdir}:rw"]
        if self.kind == "podman":
            argv.append("--pull=never")  # pulled before (ensure_image), with progress on the task
        if spec.user is not None:
            argv += ["--user", spec.user]
        for path in spec.read_only:
            argv += ["--volume", f"{path}:{path}:ro"]
        if spec.gpus and not spec.declared_gpus:
            if self.kind == "podman":
                for index in spec.gpus:
                    argv += ["--device", f"nvidia.com/gpu={index}"]
            else:
                argv += ["--gpus", "device=" + ",".join(str(i) for i in spec.gpus)]
        for name in sorted(spec.env):
            argv += ["--env", name]  # the value from this client's environment: never in argv
        for name, value in sorted(spec.fixed_env.items()):  # not secret, and set apart from the client's own
            argv += ["--env", f"{name}={value}"]
        return [*argv, *self.extra_args, spec.image, *spec.argv]

    def client_env(self, spec: ContainerSpec, base: Mapping[str, str]) -> dict[str, str]:
        """The environment of the ``run`` client: what the runtime itself needs, plus the container's
        variables (named in its argv). The agent's other variables stay out."""
        env = {k: base[k] for k in _CLIENT_ENV if k in base}
        env.update(spec.env)
        return env

    async def stop(self, name: str, grace_s: float) -> None:
        """Stop a task's container (SIGTERM, SIGKILL after the grace) and remove it."""
        for args in (["stop", f"--time={max(0, round(grace_s))}", name], ["rm", "--force", name]):
            proc = await asyncio.create_subprocess_exec(self.binary, *args, stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.DEVNULL)
            try:
                await asyncio.wait_for(proc.wait(), grace_s + 30)
            except TimeoutError:
                proc.kill()

    def remove_labelled(self, agent: str) -> list[str]:
        """Remove every container of this agent instance (the warden calls it when the agent is gone)."""
        return remove_labelled(self.binary, agent)


def remove_labelled(binary: str, agent: str, timeout_s: float = 60) -> list[str]:
    """``rm --force`` every container labelled with this agent instance; the names removed."""
    try:
        found = subprocess.run([binary, "ps", "--all", "--quiet", "--filter", f"label={LABEL_AGENT}={agent}"],
                               capture_output=True, text=True, timeout=timeout_s).stdout.split()
        if found:
            subprocess.run([binary, "rm", "--force", "--time=0", *found], capture_output=True, timeout=timeout_s)
        return found
    except (OSError, subprocess.SubprocessError):
        return []


@dataclass(frozen=True)
class ContainerSpec:
    """One task's container: what it runs, in what, with what."""

    name: str
    image: str
    argv: list[str]
    env: dict[str, str]
    workdir: Path
    task_id: str
    agent: str  # the warden's instance id
    gpus: list[int] = field(default_factory=list)
    declared_gpus: bool = False  # declared in config (no real device to hand over)
    read_only: tuple[Path, ...] = ()
    user: str | None = None
    # variables whose value inside differs from the client's (the channel: a FIFO, not the client's fd)
    fixed_env: dict[str, str] = field(default_factory=dict)


def container_name(task_id: str, attempt: int) -> str:
    return f"mloc-{task_id}-{attempt}"


def inside_gpus(gpus: Sequence[int]) -> str:
    """CUDA_VISIBLE_DEVICES inside the container: the leased devices are all it sees, from 0."""
    return ",".join(str(i) for i in range(len(gpus)))


def task_user() -> str:
    """Run as the agent's own user, so what the task writes in the work folder stays the agent's."""
    return f"{os.getuid()}:{os.getgid()}"


def task_container(image: str, argv: list[str], env: Mapping[str, str], own: set[str], agent_env: Mapping[str, str],
                   lease: Lease, workdir: Path, instance: str, settings: AgentSettings) -> ContainerSpec:
    """One lease's container. It gets the task's variables (the spec's and its secrets, named in
    ``own``, and the MLOC_* ones) but none of the agent's own environment (``agent_env``)."""
    inside = {k: v for k, v in env.items() if k not in agent_env or k in own}
    # the channel is the FIFO in the mounted work dir (launch.RankChannel): what a shell writes to inside,
    # where the client's /dev/fd/N is not
    fixed = {PROGRESS: inside[RANK_CHANNEL]}
    inside.pop(PROGRESS, None)
    inside["CUDA_VISIBLE_DEVICES"] = inside_gpus(lease.gpus)
    inside[AGENT_INSTANCE] = instance  # the warden's mark, inside too
    read_only = tuple(p for p in settings.task_read_roots if p.is_dir())
    return ContainerSpec(name=container_name(lease.task_id, lease.attempt), image=image, argv=argv, env=inside,
                         workdir=workdir, task_id=lease.task_id, agent=instance, gpus=list(lease.gpus),
                         declared_gpus=settings.declared_gpus is not None, read_only=read_only, user=task_user(),
                         fixed_env=fixed)
