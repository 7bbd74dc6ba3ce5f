"""The life of one lease on the agent: prepare, run the child, renew the lease (heartbeat.py),
stream logs, upload, complete. A run gets what it needs from the agent as a ``LeaseDeps``, not the
agent itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mloc_shared.env_policy import refused_variable
from mloc_shared.errors import LeaseLost
from mloc_shared.hyperparams import stall_timeout
from mloc_shared.protocol import Completion, Lease, PreemptNotice, Progress, RendezvousPoint

from mloc_agent.client import CoordinatorClient
from mloc_agent.completions import CompletionReporter
from mloc_agent.containers import ContainerRuntime, ImageUnavailable, task_container
from mloc_agent.gang import free_port, gang_rendezvous, lan_addresses, transport_env
from mloc_agent.heartbeat import keep_lease
from mloc_agent.launch import (
    PREFIX_VARIABLE,
    RANK_PREFIX,
    RankChannel,
    Rendezvous,
    launch_env,
    plan_launch,
    torchrun_argv,
)
from mloc_agent.lease_preemption import LeasePreemption
from mloc_agent.lease_uploads import LeaseUploads
from mloc_agent.log_streamer import LogStreamer
from mloc_agent.mirror import fetch_mirror
from mloc_agent.model_cache import ModelCache, model_line
from mloc_agent.modules.registry import load
from mloc_agent.progress_points import ProgressPoints
from mloc_agent.runner import LineSplitter, TaskProcess
from mloc_agent.settings import AgentSettings
from mloc_agent.sources import fetch_sources
from mloc_agent.task_contract import (
    Preempted,
    ProgressReport,
    TaskEnv,
    array_env,
    decode,
    host_argv,
)
from mloc_agent.task_outcome import base_result, completion_of, read_result_file
from mloc_agent.task_secrets import fetch_secrets
from mloc_agent.uploads import fetch_checkpoint
from mloc_agent.warden import Warden
from mloc_agent.warm_runtimes import WarmRuntimes
from mloc_agent.watchdog import StallWatchdog
from mloc_agent.workdirs import Janitor, make_dirs

log = logging.getLogger(__name__)
PIPE_DRAIN_S = 5.0


@dataclass(frozen=True)
class LeaseDeps:
    """What a lease's run takes from the agent: its clients and helpers, and the settings of the moment
    (the agent builds a new one when registration changes them)."""

    client: CoordinatorClient
    settings: AgentSettings
    modules: Mapping[str, str]  # task type -> module reference
    task_env: Mapping[str, str]  # what every task process's environment starts from
    host_python_path: tuple[str, ...]  # the agent's PYTHONPATH folders, for the isolated task host
    warden: Warden
    janitor: Janitor
    completions: CompletionReporter
    heartbeat_s: float
    spawn: Callable[[Coroutine[Any, Any, None]], None]  # runs a coroutine in the background
    containers: ContainerRuntime | None = None  # runs image: tasks (None: this agent takes none)
    model_cache: ModelCache | None = None  # what the agent holds, for the task's log (model_cache.py)
    warm: WarmRuntimes | None = None  # hosted tasks' warm starts (warm_runtimes.py; None: always cold)


@dataclass(frozen=True)
class RunningContainer:
    runtime: ContainerRuntime
    name: str


class LeaseRun:
    def __init__(self, deps: LeaseDeps, lease: Lease) -> None:
        self.deps = deps
        self.lease = lease
        self.task_id = lease.task_id
        self.client = deps.client
        self.proc: TaskProcess | None = None
        self.progress: Progress | None = None
        self.points = ProgressPoints()
        self.cancel_reason: str | None = None
        self.fenced: str | None = None
        self.done = asyncio.Event()
        self.started = asyncio.Event()  # its process was started (or it ended without one)
        self.workdir = deps.settings.data_dir / "work" / f"{lease.task_id}-{lease.attempt}"
        self.logs = LogStreamer(self.client, lease.task_id, lease.epoch, deps.settings.log_flush_s)
        self.uploads = LeaseUploads(self.client, lease, self.workdir, lambda line: self.logs.write("system", line))
        self.preemption = LeasePreemption(self.workdir / "preempt", lambda line: self.logs.write("system", line),
                                          deps.settings.cancel_grace_s, lease.task_type)
        self.rendezvous: RendezvousPoint | None = None  # a gang's node rank 0: where its ranks listen
        self.gang_env: dict[str, str] = {}  # a gang member's transport settings (gang.transport_env)
        timeout = stall_timeout(lease.task_type, lease.spec.get("hyperparameters"))
        self.watchdog = StallWatchdog(timeout) if timeout else None
        self.container: RunningContainer | None = None  # an image: task's container, once it is started
        self.stalled: str | None = None  # the watchdog's one-line error once it stopped the task
        self.start_kind: str | None = None  # "warm" | "cold" once its process started (Completion.start)

    # -- control from the agent -------------------------------------------------------------

    async def cancel(self, reason: str) -> None:
        if self.cancel_reason is None and self.fenced is None:
            self.cancel_reason = reason
            self.logs.write("system", f"[mloc] {reason}: stopping the task\n")
            await self._stop_process()

    async def fence(self, reason: str) -> None:
        """Stop the task without reporting: the lease is no longer ours."""
        if self.fenced is None:
            self.fenced = reason
            log.warning("task %s: %s; stopping it", self.task_id, reason)
            await self._stop_process()

    async def _stop_process(self) -> None:
        """SIGTERM, SIGKILL after the grace; an image: task's container is stopped by name as well."""
        grace = self.deps.settings.cancel_grace_s
        stops = [self.proc.stop(grace)] if self.proc is not None else []
        if self.container is not None:
            stops.append(self.container.runtime.stop(self.container.name, grace))
        await asyncio.gather(*stops)

    # -- image: tasks (containers.py) ----------------------------------------------------------

    async def _pull(self, image: str) -> None:
        runtime = self.deps.containers
        if runtime is None:  # the coordinator gives image: tasks only to agents with a runtime
            raise ImageUnavailable(f"this agent has no container runtime for image {image} (MLOC_CONTAINER_RUNTIME)")
        self.progress = Progress(message=f"pulling image {image}")
        policy = self.lease.spec.get("image_pull_policy") or "missing"
        if await runtime.ensure_image(image, policy, lambda line: self.logs.write("system", line)):
            self.logs.write("system", f"[mloc] pulled image {image}\n")

    def _containerize(self, image: str, argv: list[str], env: dict[str, str],
                      own: set[str]) -> tuple[list[str], dict[str, str]]:
        """The task's command inside its image (containers.task_container): its argv and the client's env."""
        runtime = self.deps.containers
        assert runtime is not None  # checked by _pull
        spec = task_container(image, argv, env, own, self.deps.task_env, self.lease, self.workdir,
                              self.deps.warden.instance, self.deps.settings)
        self.container = RunningContainer(runtime, spec.name)
        self.logs.write("system", f"[mloc] running in image {image} ({runtime.kind}, container {spec.name})\n")
        return runtime.run_argv(spec), runtime.client_env(spec, os.environ)

    async def preempt(self, notice: PreemptNotice) -> None:
        """Checkpoint and stop (the coordinator wants the GPUs, or this agent stops with notice):
        lease_preemption.py. Before the process starts, _execute sees the notice."""
        p = self.preemption
        if p.notice is not None or self.cancel_reason is not None or self.fenced is not None or self.done.is_set():
            return
        p.notice = notice
        self.logs.write("system", f"[mloc] {notice.reason or 'preempted'}: checkpoint and stop within "
                                  f"{notice.grace_s:g}s\n")
        if self.proc is not None:
            await p.deliver(self.proc)

    def _on_preempt(self, notice: PreemptNotice) -> None:
        if self.preemption.notice is None and not self.done.is_set():
            self.deps.spawn(self.preempt(notice))

    def _on_cancel_requested(self) -> None:
        if self.cancel_reason is None and not self.done.is_set():
            self.deps.spawn(self.cancel("cancel requested"))

    def _on_lease_gone(self, reason: str) -> None:
        self.deps.spawn(self.fence(reason))

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> None:
        heartbeats = asyncio.create_task(keep_lease(
            self.client, self.lease, self.deps.heartbeat_s, finished=self.done, progress=lambda: self.progress,
            on_cancel=self._on_cancel_requested, on_fence=self._on_lease_gone, on_preempt=self._on_preempt,
            rendezvous=lambda: self.rendezvous, points=self.points), name=f"hb-{self.task_id}")
        self.logs.start()
        completion: Completion | None = None
        try:
            completion = await self._execute()
        except Exception as exc:  # an agent-side failure (download, spawn): report it as the task's
            log.exception("task %s failed on the agent", self.task_id)
            completion = Completion(epoch=self.lease.epoch, outcome="failed", error=f"agent error: {exc}")
        finally:
            if completion is not None and self.proc is not None:
                completion.start = self.start_kind
            self.started.set()
            self.done.set()
            if self.proc is not None:
                self.proc.reap_group()
        if self.fenced is None:
            await self.logs.close()
            # renewals go on until the result is acknowledged: a completion held up (the coordinator
            # restarting, its database full) must not let the lease expire and the task run again
            await self._complete(completion)
            heartbeats.cancel()
        else:
            heartbeats.cancel()
            await self.logs.close(timeout=2)
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeats
        self.deps.janitor.discard(self.workdir)

    async def _execute(self) -> Completion:
        lease, settings = self.lease, self.deps.settings
        module_ref = self.deps.modules.get(lease.task_type)
        if module_ref is None:
            return Completion(epoch=lease.epoch, outcome="failed",
                              error=f"this agent cannot run task type {lease.task_type!r}")
        # checked at submit too; a spec stored by an older coordinator reaches here unchecked
        refused = refused_variable(lease.task_type, lease.spec.get("env") or {}, lease.spec.get("secrets") or {})
        if refused is not None:
            return Completion(epoch=lease.epoch, outcome="failed", error=f"{refused[0]}: {refused[1]}",
                              error_code="bad_input", retryable=False)
        output_dir, ckpt_dir = self.workdir / "output", self.workdir / "checkpoints"
        # off the event loop: tens of microseconds on a quiet local disk, but a busy or network disk can
        # stall a mkdir for milliseconds, and every other lease's heartbeats wait on this loop
        await asyncio.to_thread(make_dirs, output_dir, ckpt_dir)
        env = dict(self.deps.task_env)
        env.update(lease.spec.get("env") or {})
        env.update(array_env(lease.spec))  # a sweep's child: its index among its siblings
        secret_env = await fetch_secrets(self.client, lease)  # only here, in the child's environment
        self.logs.redactor.add(secret_env.values())
        env.update(secret_env)
        if self.deps.model_cache is not None:
            line = model_line(lease.spec, self.deps.model_cache.current)
            if line is not None:
                self.logs.write("system", line)
        resume_dir = None
        if lease.resume is not None:
            self.logs.write("system", f"[mloc] resuming from checkpoint {lease.resume.name} "
                                      f"(step {lease.resume.step})\n")
            resume_dir = await fetch_checkpoint(self.client, lease.resume.url, self.workdir / "resume")
        sources_dir = await fetch_sources(self.client, lease, self.workdir / "sources")
        if sources_dir is not None:  # outputs of the finished tasks this one reads (model.source type task)
            names = ", ".join(sorted(p.name for p in sources_dir.iterdir()))
            self.logs.write("system", f"[mloc] fetched the outputs of task(s) {names}\n")
        # hub ids the spec reads, from the coordinator's mirror when the hub is out of reach (mirror.py)
        mirror_env = await fetch_mirror(self.client, lease, settings.data_dir, env,
                                        lambda line: self.logs.write("system", line),
                                        lambda: self.cancel_reason is not None or self.fenced is not None)
        module_cls = load(module_ref)
        self.preemption.can_checkpoint = module_cls.checkpoints_on_preempt(lease.spec)
        if self.preemption.notice is not None:  # asked to make room before it started: nothing to save
            return Completion(epoch=lease.epoch, outcome="preempted",
                              error=self.preemption.notice.reason or "preempted")
        result_file = self.workdir / "result.json"
        task_file = None
        image = lease.spec.get("image")
        if image:
            try:
                await self._pull(image)
            except ImageUnavailable as exc:
                return Completion(epoch=lease.epoch, outcome="failed", error=str(exc), error_code="image_unavailable")
        direct = module_cls.direct_argv(lease.spec)
        if direct is None:
            task_file = self.workdir / "task.json"
            task_file.write_text(json.dumps({"spec": lease.spec, "module": module_ref,
                                             "python_path": list(self.deps.host_python_path)}))
            # in an image (containers.py), its own python3 hosts the module: mloc-agent must be installed there
            direct = host_argv("python3" if image else settings.runtimes.get(lease.task_type, sys.executable))
        rdzv = await self._rendezvous()
        plan = plan_launch(lease.task_type, lease.spec, lease.gpus, rdzv, hosted=task_file is not None)
        env.update(launch_env(plan.nproc_per_node, rdzv))
        env.update({k: v for k, v in self.gang_env.items() if k not in (lease.spec.get("env") or {})})
        if plan.torchrun:  # docs/distributed.md: one rank per leased GPU, rank-prefixed output
            direct = torchrun_argv(direct[0], direct, plan.nproc_per_node, rdzv, f"{lease.task_id}-{lease.attempt}",
                                   self.workdir / "ranks")
            env[PREFIX_VARIABLE] = RANK_PREFIX
        ranks = RankChannel(self.workdir / "ranks.fifo", LineSplitter(self._on_channel_line).feed) \
            if plan.many_ranks or image else None
        if ranks is not None:
            env.update(ranks.env())
        env.update(TaskEnv(
            task_id=lease.task_id, attempt=lease.attempt, gpus=lease.gpus, workdir=self.workdir,
            output_dir=output_dir, checkpoint_dir=ckpt_dir, agent_data_dir=settings.data_dir, resume_dir=resume_dir,
            resume_step=lease.resume.step if lease.resume is not None else None, sources_dir=sources_dir,
            task_file=task_file, result_file=result_file if task_file is not None else None, owner=lease.owner,
            allow_private_urls=settings.allow_private_urls, coordinator_url=settings.coordinator_url,
            path_roots=tuple(settings.task_read_roots), preempt_file=self.workdir / "preempt",
        ).to_env())  # last: a spec's env cannot change what the agent tells the task
        env.update(mirror_env)
        if image:
            own = set(lease.spec.get("env") or {}) | set(secret_env)
            direct, env = self._containerize(image, direct, env, own)
        channel = LineSplitter(self._on_channel_line)
        try:
            if task_file is not None and not image and not plan.torchrun and not plan.many_ranks:
                self.proc = await self._start_warm(direct[0], env, channel.feed)  # one process: it may fork warm
            if self.proc is None:
                self.proc = TaskProcess.start(direct, env, self.workdir, self.deps.warden, self.logs.feed,
                                              channel.feed, leaves_group=plan.many_ranks or bool(image))
                self.start_kind = "cold"
        except BaseException:
            if ranks is not None:
                await ranks.close(0)
            raise
        self.started.set()
        if self.cancel_reason is not None or self.fenced is not None:
            await self.proc.stop(settings.cancel_grace_s)
        elif self.preemption.notice is not None:
            self.deps.spawn(self.preemption.deliver(self.proc))
        watcher = asyncio.create_task(self.watchdog.watch(self._stall)) if self.watchdog is not None else None
        code = await self.proc.wait()
        if watcher is not None:
            watcher.cancel()
        self.proc.reap_group()
        if self.container is not None:  # gone with --rm already, unless its client was killed
            await self.container.runtime.stop(self.container.name, 0)
        if ranks is not None:
            await ranks.close(PIPE_DRAIN_S)
        try:  # a grandchild that left the process group may hold the pipes open: do not wait for it forever
            await asyncio.wait_for(self.proc.output_closed(), PIPE_DRAIN_S)
        except TimeoutError:
            self.logs.write("system", f"[mloc] output still open {PIPE_DRAIN_S:g}s after the task exited; "
                                      "a process it started outlives it: output after this is not kept\n")
            self.proc.close_pipes()
        for stream in ("stdout", "stderr"):
            self.logs.feed_eof(stream)
        if self.fenced is not None:
            return Completion(epoch=lease.epoch, outcome="failed", error=self.fenced)
        await self.uploads.finish(output_dir)
        outcome = read_result_file(result_file)
        result = base_result(outcome, code)
        if self.preemption.ended_it(code) and self.cancel_reason is None and self.stalled is None:
            if self.preemption.command_checkpoint_due():
                await self._upload_dir_as_checkpoint(ckpt_dir)
            return self.preemption.completion(lease.epoch, code, result)
        return completion_of(lease.epoch, code, outcome, result, stalled=self.stalled,
                             cancel_reason=self.cancel_reason, stderr_tail=self.logs.tail["stderr"])

    async def _start_warm(self, python: str, env: dict[str, str], on_channel: Callable[[bytes], None]) \
            -> TaskProcess | None:
        """The task host forked from ``python``'s warm template, or None for a cold start (warm_runtimes.py);
        the system log says which and why."""
        if self.deps.warm is None:
            return None
        proc, line = await self.deps.warm.try_start(python, env, self.workdir, self.logs.feed, on_channel)
        self.logs.write("system", line)
        self.start_kind = "warm" if proc is not None else None
        return proc

    async def _upload_dir_as_checkpoint(self, ckpt_dir: Path) -> None:
        """A command's $MLOC_CHECKPOINT_DIR, when it holds anything, as the checkpoint to resume from."""
        if not await asyncio.to_thread(lambda: any(ckpt_dir.iterdir())):
            return
        step = self.progress.step if self.progress is not None and self.progress.step is not None else 0
        await self.uploads.one(ckpt_dir, f"checkpoints/step-{step}.tar", "checkpoint", step)

    async def _stall(self, message: str) -> None:
        """The watchdog saw no step change for stall_timeout_s: stop every rank, report it as a stall."""
        if self.proc is not None and self.cancel_reason is None and self.fenced is None:
            self.stalled = message
            self.logs.write("system", f"[mloc] {message}\n")
            await self.proc.stop(self.deps.settings.cancel_grace_s)

    async def _rendezvous(self) -> Rendezvous:
        """Where this lease's ranks meet the others': one node, unless the lease is a gang member
        (then rank 0's MASTER_ADDR:PORT, relayed by the coordinator: gang.py)."""
        if self.lease.gang is None or self.lease.gang.nodes <= 1:
            return Rendezvous()
        settings = self.deps.settings
        address = (lan_addresses(settings.lan_address, settings.coordinator_url) or ["127.0.0.1"])[0]
        self.gang_env = transport_env(address)
        if self.lease.gang.node_rank == 0:  # node rank 0's heartbeats keep publishing it
            self.rendezvous = RendezvousPoint(master_addr=address, master_port=free_port(address))
        try:
            return await gang_rendezvous(self.client, self.lease, address, self.rendezvous,
                                         lambda line: self.logs.write("system", line),
                                         lambda: self.cancel_reason is not None or self.fenced is not None)
        except LeaseLost as exc:
            await self.fence(f"lease lost while waiting for the gang's rank 0: {exc.message}")
            raise

    def _on_channel_line(self, line: bytes) -> None:
        """A progress, checkpoint or artifact message from the task process (task_contract.decode)."""
        message = decode(line)
        if isinstance(message, ProgressReport):
            with contextlib.suppress(ValueError):  # masked like logs: it reaches heartbeats, listings, the db
                self.progress = Progress.model_validate(self.logs.redactor.mask_value(message.fields))
                if self.watchdog is not None:
                    self.watchdog.observe(self.progress.step)
                if self.progress.step is not None and self.progress.total:
                    self.progress.percent = round(100.0 * self.progress.step / self.progress.total, 2)
                self.points.add(self.progress)
        elif isinstance(message, Preempted):
            self.preemption.acknowledged(message)
        elif message is not None:
            self.uploads.soon(message)

    # -- talking to the coordinator ----------------------------------------------------------

    async def _complete(self, completion: Completion | None) -> None:
        if completion is None:
            return
        if self.progress is not None and completion.result is not None:
            completion.result.setdefault("progress", self.progress.model_dump(exclude_none=True))
        completion.points = self.points.pending() or None  # the steps no heartbeat carried yet
        if completion.error:  # the task's own output may echo a secret
            completion.error = self.logs.redactor.mask(completion.error)
        if completion.result:
            completion.result = self.logs.redactor.mask_value(completion.result)
        try:
            state = await asyncio.shield(self.deps.completions.report(self.task_id, completion))
            log.debug("task %s finished: %s", self.task_id, state)
        except LeaseLost as exc:
            log.warning("task %s: completion refused (%s)", self.task_id, exc)
        except Exception as exc:
            log.error("task %s: could not report completion: %s", self.task_id, exc)
