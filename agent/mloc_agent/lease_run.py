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
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mloc_shared.env_policy import refused_variable
from mloc_shared.errors import LeaseLost
from mloc_shared.hyperparams import STALLED, stall_timeout
from mloc_shared.protocol import Completion, Lease, PreemptNotice, Progress, RendezvousPoint

from mloc_agent.client import CoordinatorClient
from mloc_agent.completions import CompletionReporter
from mloc_agent.containers import ContainerRuntime, ImageUnavailable, task_container
from mloc_agent.gang import free_port, lan_addresses, publish, transport_env, wait_for_rank0
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
from mloc_agent.log_streamer import LogStreamer
from mloc_agent.modules.registry import load
from mloc_agent.runner import LineSplitter, TaskProcess
from mloc_agent.settings import AgentSettings
from mloc_agent.sources import fetch_sources
from mloc_agent.task_contract import (
    PREEMPT_SIGNAL_NAME,
    ArtifactAdded,
    CheckpointSaved,
    Preempted,
    ProgressReport,
    TaskEnv,
    decode,
    host_argv,
)
from mloc_agent.task_secrets import fetch_secrets
from mloc_agent.uploads import fetch_checkpoint, upload
from mloc_agent.warden import Warden
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
        self.cancel_reason: str | None = None
        self.fenced: str | None = None
        self.done = asyncio.Event()
        self.started = asyncio.Event()  # its process was started (or it ended without one)
        self.workdir = deps.settings.data_dir / "work" / f"{lease.task_id}-{lease.attempt}"
        self.logs = LogStreamer(self.client, lease.task_id, lease.epoch, deps.settings.log_flush_s)
        self._uploads: list[asyncio.Task[Any]] = []
        # preemption (docs/modules.md): the request, whether the task can checkpoint on it, its ack, and
        # whether the agent had to stop it (the grace ran out, or it cannot checkpoint)
        self.preempt_notice: PreemptNotice | None = None
        self.preempt_signalled_at: float | None = None
        self.checkpoints_on_preempt = False
        self.preempt_ack: Preempted | None = None
        self.preempt_stopped = False
        self.rendezvous: RendezvousPoint | None = None  # a gang's node rank 0: where its ranks listen
        self.gang_env: dict[str, str] = {}  # a gang member's transport settings (gang.transport_env)
        timeout = stall_timeout(lease.task_type, lease.spec.get("hyperparameters"))
        self.watchdog = StallWatchdog(timeout) if timeout else None
        self.container: RunningContainer | None = None  # an image: task's container, once it is started
        self.stalled: str | None = None  # the watchdog's one-line error once it stopped the task

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
        """Checkpoint and stop (the coordinator wants the GPUs, or this agent stops with notice): the task
        gets the preempt file and the signal, ``notice.grace_s`` to save and exit, then it is stopped."""
        if self.preempt_notice is not None or self.cancel_reason is not None or self.fenced is not None:
            return
        if self.done.is_set():
            return
        self.preempt_notice = notice
        self.logs.write("system", f"[mloc] {notice.reason or 'preempted'}: checkpoint and stop within "
                                  f"{notice.grace_s:g}s\n")
        if self.proc is not None:  # not started yet: _execute sees the notice
            await self._deliver_preempt()

    async def _deliver_preempt(self) -> None:
        proc, notice = self.proc, self.preempt_notice
        assert proc is not None and notice is not None
        if not self.checkpoints_on_preempt:
            self.logs.write("system", "[mloc] this task cannot checkpoint on request: stopping it\n")
            self.preempt_stopped = True
            await proc.stop(self.deps.settings.cancel_grace_s)
            return
        path = self.workdir / "preempt"
        await asyncio.to_thread(path.write_text, json.dumps({"grace_s": notice.grace_s, "reason": notice.reason}))
        self.preempt_signalled_at = time.monotonic()
        if not proc.marks:  # not under torchrun: its launcher does not handle SIGUSR1 and would die of it
            proc.signal_task(getattr(signal, PREEMPT_SIGNAL_NAME))  # (its ranks see the file at their next step)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), notice.grace_s)
        except TimeoutError:
            self.logs.write("system", f"[mloc] the task did not stop within the {notice.grace_s:g}s grace: "
                                      "stopping it\n")
            self.preempt_stopped = True
            await proc.stop(self.deps.settings.cancel_grace_s)

    def _on_preempt(self, notice: PreemptNotice) -> None:
        if self.preempt_notice is None and not self.done.is_set():
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
            rendezvous=lambda: self.rendezvous), name=f"hb-{self.task_id}")
        self.logs.start()
        completion: Completion | None = None
        try:
            completion = await self._execute()
        except Exception as exc:  # an agent-side failure (download, spawn): report it as the task's
            log.exception("task %s failed on the agent", self.task_id)
            completion = Completion(epoch=self.lease.epoch, outcome="failed", error=f"agent error: {exc}")
        finally:
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
        secret_env = await fetch_secrets(self.client, lease)  # only here, in the child's environment
        self.logs.redactor.add(secret_env.values())
        env.update(secret_env)
        resume_dir = None
        if lease.resume is not None:
            self.logs.write("system", f"[mloc] resuming from checkpoint {lease.resume.name} "
                                      f"(step {lease.resume.step})\n")
            resume_dir = await fetch_checkpoint(self.client, lease.resume.url, self.workdir / "resume")
        sources_dir = await fetch_sources(self.client, lease, self.workdir / "sources")
        if sources_dir is not None:  # outputs of the finished tasks this one reads (model.source type task)
            names = ", ".join(sorted(p.name for p in sources_dir.iterdir()))
            self.logs.write("system", f"[mloc] fetched the outputs of task(s) {names}\n")
        module_cls = load(module_ref)
        self.checkpoints_on_preempt = module_cls.checkpoints_on_preempt(lease.spec)
        if self.preempt_notice is not None:  # asked to make room before it started: nothing to save
            return Completion(epoch=lease.epoch, outcome="preempted", error=self.preempt_notice.reason or "preempted")
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
        if image:
            own = set(lease.spec.get("env") or {}) | set(secret_env)
            direct, env = self._containerize(image, direct, env, own)
        channel = LineSplitter(self._on_channel_line)
        try:
            self.proc = TaskProcess.start(direct, env, self.workdir, self.deps.warden, self.logs.feed, channel.feed,
                                          leaves_group=plan.many_ranks or bool(image))
        except BaseException:
            if ranks is not None:
                await ranks.close(0)
            raise
        self.started.set()
        if self.cancel_reason is not None or self.fenced is not None:
            await self.proc.stop(settings.cancel_grace_s)
        elif self.preempt_notice is not None:
            self.deps.spawn(self._deliver_preempt())
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
        await self._finish_uploads(output_dir)
        outcome: dict[str, Any] = {}
        if result_file.exists():
            with contextlib.suppress(ValueError, OSError):
                outcome = json.loads(result_file.read_text())
        result = outcome.get("result") if isinstance(outcome.get("result"), dict) else {}
        result = {"exit_code": code, **(result or {})}
        if self.stalled is not None and self.cancel_reason is None:  # requeued like a lost box (leasing.py)
            return Completion(epoch=lease.epoch, outcome="failed", exit_code=code, result=result, error=self.stalled,
                              error_code=STALLED, retryable=True)
        if self.cancel_reason is not None:
            return Completion(epoch=lease.epoch, outcome="cancelled", exit_code=code, result=result,
                              error=self.cancel_reason)
        if self._was_preempted():
            await self._upload_command_checkpoint(ckpt_dir)
            notice = self.preempt_notice
            assert notice is not None
            step = self.preempt_ack.step if self.preempt_ack is not None else None
            return Completion(epoch=lease.epoch, outcome="preempted", exit_code=code,
                              result={**result, "preempted_at_step": step},
                              error=notice.reason or "preempted")
        if code == 0:
            return Completion(epoch=lease.epoch, outcome="succeeded", exit_code=code, result=result)
        error_code, retryable = outcome.get("error_code"), outcome.get("retryable")
        # task_host's one-line error (modules/errors.py): the traceback stays in the task's logs
        if isinstance(error_code, str) and len(error_code) <= 64:
            return Completion(epoch=lease.epoch, outcome="failed", exit_code=code,
                              result={**result, "error_code": error_code},
                              error=str(outcome.get("error") or error_code), error_code=error_code,
                              retryable=retryable if isinstance(retryable, bool) else None)
        tail = self.logs.tail["stderr"].strip()[-1500:]
        error = outcome.get("error") or f"exited with code {code}"
        return Completion(epoch=lease.epoch, outcome="failed", exit_code=code, result=result,
                          error=f"{error}\n{tail}" if tail else error)

    def _was_preempted(self) -> bool:
        """Whether the attempt ended for its preemption request: it acknowledged (whatever its exit code:
        under torchrun a clean save still exits 1), the agent stopped it, or a command that opted in exited
        after the signal. A training task that just finished (0, no ack) succeeded; one that failed failed."""
        if self.preempt_notice is None:
            return False
        if self.preempt_ack is not None or self.preempt_stopped:
            return True
        return self.preempt_signalled_at is not None and self.lease.task_type == "command"

    async def _upload_command_checkpoint(self, ckpt_dir: Path) -> None:
        """A ``command`` that exited within the grace: its $MLOC_CHECKPOINT_DIR is the checkpoint to resume
        from (unless it sent its own, or the agent had to stop it)."""
        if self.lease.task_type != "command" or self.preempt_stopped or self.preempt_ack is not None:
            return
        if not await asyncio.to_thread(lambda: any(ckpt_dir.iterdir())):
            return
        step = self.progress.step if self.progress is not None and self.progress.step is not None else 0
        await self._upload(ckpt_dir, f"checkpoints/step-{step}.tar", "checkpoint", step)

    async def _stall(self, message: str) -> None:
        """The watchdog saw no step change for stall_timeout_s: stop every rank, report it as a stall."""
        if self.proc is not None and self.cancel_reason is None and self.fenced is None:
            self.stalled = message
            self.logs.write("system", f"[mloc] {message}\n")
            await self.proc.stop(self.deps.settings.cancel_grace_s)

    async def _rendezvous(self) -> Rendezvous:
        """Where this lease's ranks meet the others': one node, unless the lease is a gang member
        (then rank 0's MASTER_ADDR:PORT, relayed by the coordinator)."""
        gang, settings = self.lease.gang, self.deps.settings
        if gang is None or gang.nodes <= 1:
            return Rendezvous()
        address = (lan_addresses(settings.lan_address, settings.coordinator_url) or ["127.0.0.1"])[0]
        self.gang_env = transport_env(address)
        if gang.node_rank == 0:  # pick a free port on our LAN address and publish it
            self.rendezvous = RendezvousPoint(master_addr=address, master_port=free_port(address))
            await publish(self.client, self.lease, self.rendezvous)
            point: RendezvousPoint | None = self.rendezvous
            self.logs.write("system", f"[mloc] node rank 0 of {gang.nodes} (network {gang.network}): ranks meet at "
                                      f"{address}:{self.rendezvous.master_port}\n")
        else:
            self.logs.write("system", f"[mloc] node rank {gang.node_rank} of {gang.nodes}: waiting for the gang's "
                                      f"rank 0 (agent {gang.members[0]}) to publish its rendezvous\n")
            try:
                point = await wait_for_rank0(self.client, self.lease,
                                             lambda: self.cancel_reason is not None or self.fenced is not None)
            except LeaseLost as exc:
                await self.fence(f"lease lost while waiting for the gang's rank 0: {exc.message}")
                raise
            if point is not None:
                self.logs.write("system", f"[mloc] rank 0 is at {point.master_addr}:{point.master_port}\n")
        if point is None:  # stopped while waiting: the task starts and is stopped at once
            return Rendezvous(nnodes=gang.nodes, node_rank=gang.node_rank)
        return Rendezvous(nnodes=gang.nodes, node_rank=gang.node_rank, master_addr=point.master_addr,
                          master_port=point.master_port)

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
        elif isinstance(message, Preempted):
            self.preempt_ack = message
            self.logs.write("system", f"[mloc] the task checkpointed at step {message.step} and stops "
                                      "for preemption\n")
        elif message is not None:
            self._upload_soon(message)

    def _upload_soon(self, message: CheckpointSaved | ArtifactAdded) -> None:
        if self.lease.gang is not None and self.lease.gang.node_rank > 0:
            return  # a gang's node rank 0 uploads its checkpoints and outputs
        path = Path(message.path)
        if not path.is_absolute():
            path = self.workdir / path
        if not path.exists():
            self.logs.write("system", f"[mloc] {message.kind} {path} does not exist; not uploaded\n")
            return
        if isinstance(message, CheckpointSaved):
            step, default_name = message.step, f"checkpoints/step-{message.step}.tar"
        else:
            step, default_name = None, path.name
        name = message.name or default_name
        self._uploads.append(asyncio.create_task(self._upload(path, name, message.kind, step)))

    async def _upload(self, path: Path, name: str, kind: str, step: int | None) -> None:
        try:
            await upload(self.client, self.task_id, self.lease.epoch, path, name=name, kind=kind, step=step)
            self.logs.write("system", f"[mloc] uploaded {kind} {name}\n")
        except Exception as exc:
            self.logs.write("system", f"[mloc] upload of {name} failed: {exc}\n")

    async def _finish_uploads(self, output_dir: Path) -> None:
        if self._uploads:
            await asyncio.gather(*self._uploads, return_exceptions=True)
        if self.lease.gang is not None and self.lease.gang.node_rank > 0:
            return  # a gang's node rank 0 uploads the outputs
        if not any(os.scandir(output_dir)):  # the common case, checked without a recursive walk
            return
        for path in sorted(p for p in output_dir.rglob("*") if p.is_file()):
            await self._upload(path, str(path.relative_to(output_dir)), "artifact", None)

    # -- talking to the coordinator ----------------------------------------------------------

    async def _complete(self, completion: Completion | None) -> None:
        if completion is None:
            return
        if self.progress is not None and completion.result is not None:
            completion.result.setdefault("progress", self.progress.model_dump(exclude_none=True))
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
