"""The life of one lease on the agent: prepare, run the child, heartbeat, stream logs, upload,
complete. Heartbeats come from here (the agent), never from the task process, so a busy task
cannot starve them. If the lease cannot be renewed within its TTL the task is stopped here
(self-fencing): by then the coordinator may have given it to another agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mloc_shared.errors import LeaseLost, MlocError
from mloc_shared.protocol import Completion, HeartbeatRequest, Lease, Progress

from mloc_agent.log_streamer import LogStreamer
from mloc_agent.modules.registry import load
from mloc_agent.retries import Backoff, retryable
from mloc_agent.runner import LineSplitter, TaskProcess
from mloc_agent.sources import fetch_sources
from mloc_agent.task_secrets import fetch_secrets
from mloc_agent.uploads import fetch_checkpoint, upload
from mloc_agent.workdirs import make_dirs

if TYPE_CHECKING:
    from mloc_agent.main import Agent

log = logging.getLogger(__name__)
PIPE_DRAIN_S = 5.0
SECRET_ENV = ("MLOC_JOIN_TOKEN", "MLOC_TOKEN", "MLOC_ADMIN_TOKEN", "MLOC_S3_SECRET_ACCESS_KEY")


def task_base_env() -> dict[str, str]:
    """The agent's environment minus its own settings and secrets: what every task process starts from.
    Built once per agent (filtering os.environ costs ~0.1 ms, on every task start)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLOC_") and k not in SECRET_ENV}


class LeaseRun:
    def __init__(self, agent: Agent, lease: Lease) -> None:
        self.agent = agent
        self.lease = lease
        self.task_id = lease.task_id
        self.client = agent.client
        self.proc: TaskProcess | None = None
        self.progress: Progress | None = None
        self.cancel_reason: str | None = None
        self.fenced: str | None = None
        self.done = asyncio.Event()
        self.started = asyncio.Event()  # its process was started (or it ended without one)
        self.workdir = agent.settings.data_dir / "work" / f"{lease.task_id}-{lease.attempt}"
        self.logs = LogStreamer(self.client, lease.task_id, lease.epoch, agent.settings.log_flush_s)
        self._uploads: list[asyncio.Task[Any]] = []

    # -- control from the agent -------------------------------------------------------------

    async def cancel(self, reason: str) -> None:
        if self.cancel_reason is None and self.fenced is None:
            self.cancel_reason = reason
            self.logs.write("system", f"[mloc] {reason}: stopping the task\n")
            if self.proc is not None:
                await self.proc.stop(self.agent.settings.cancel_grace_s)

    async def fence(self, reason: str) -> None:
        """Stop the task without reporting: the lease is no longer ours."""
        if self.fenced is None:
            self.fenced = reason
            log.warning("task %s: %s; stopping it", self.task_id, reason)
            if self.proc is not None:
                await self.proc.stop(self.agent.settings.cancel_grace_s)

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> None:
        heartbeats = asyncio.create_task(self._heartbeat_loop(), name=f"hb-{self.task_id}")
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
        self.agent.janitor.discard(self.workdir)

    async def _execute(self) -> Completion:
        lease, settings = self.lease, self.agent.settings
        module_ref = self.agent.modules.get(lease.task_type)
        if module_ref is None:
            return Completion(epoch=lease.epoch, outcome="failed",
                              error=f"this agent cannot run task type {lease.task_type!r}")
        output_dir, ckpt_dir = self.workdir / "output", self.workdir / "checkpoints"
        # off the event loop: tens of microseconds on a quiet local disk, but a busy or network disk can
        # stall a mkdir for milliseconds, and every other lease's heartbeats wait on this loop
        await asyncio.to_thread(make_dirs, output_dir, ckpt_dir)
        env = dict(self.agent.task_env)
        env.update(lease.spec.get("env") or {})
        secret_env = await fetch_secrets(self.client, lease)  # only here, in the child's environment
        self.logs.redactor.add(secret_env.values())
        env.update(secret_env)
        env.update({
            "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in lease.gpus),
            "MLOC_TASK_ID": lease.task_id, "MLOC_ATTEMPT": str(lease.attempt), "MLOC_WORKDIR": str(self.workdir),
            "MLOC_GPUS": ",".join(str(g) for g in lease.gpus), "MLOC_OUTPUT_DIR": str(output_dir),
            "MLOC_CHECKPOINT_DIR": str(ckpt_dir), "MLOC_AGENT_DATA_DIR": str(settings.data_dir),
            "PYTHONUNBUFFERED": "1",
        })
        if lease.resume is not None:
            self.logs.write("system", f"[mloc] resuming from checkpoint {lease.resume.name} "
                                      f"(step {lease.resume.step})\n")
            resume_dir = await fetch_checkpoint(self.client, lease.resume.url, self.workdir / "resume")
            env["MLOC_RESUME_DIR"] = str(resume_dir)
            if lease.resume.step is not None:
                env["MLOC_RESUME_STEP"] = str(lease.resume.step)
        sources_dir = await fetch_sources(self.client, lease, self.workdir / "sources")
        if sources_dir is not None:  # outputs of the finished tasks this one reads (model.source type task)
            names = ", ".join(sorted(p.name for p in sources_dir.iterdir()))
            self.logs.write("system", f"[mloc] fetched the outputs of task(s) {names}\n")
            env["MLOC_SOURCES_DIR"] = str(sources_dir)
        module_cls = load(module_ref)
        result_file = self.workdir / "result.json"
        direct = module_cls.direct_argv(lease.spec)
        if direct is None:
            task_file = self.workdir / "task.json"
            task_file.write_text(json.dumps({"spec": lease.spec, "module": module_ref}))
            interpreter = settings.runtimes.get(lease.task_type, sys.executable)
            direct = [interpreter, "-m", "mloc_agent.task_host"]
            env.update({"MLOC_TASK_FILE": str(task_file), "MLOC_RESULT_FILE": str(result_file)})
        channel = LineSplitter(self._on_channel_line)
        self.proc = TaskProcess.start(direct, env, self.workdir, self.agent.warden, self.logs.feed, channel.feed)
        self.started.set()
        if self.cancel_reason is not None or self.fenced is not None:
            await self.proc.stop(settings.cancel_grace_s)
        code = await self.proc.wait()
        self.proc.reap_group()
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
        if self.cancel_reason is not None:
            return Completion(epoch=lease.epoch, outcome="cancelled", exit_code=code, result=result,
                              error=self.cancel_reason)
        if code == 0:
            return Completion(epoch=lease.epoch, outcome="succeeded", exit_code=code, result=result)
        tail = self.logs.tail["stderr"].strip()[-1500:]
        error = outcome.get("error") or f"exited with code {code}"
        return Completion(epoch=lease.epoch, outcome="failed", exit_code=code, result=result,
                          error=f"{error}\n{tail}" if tail else error)

    def _on_channel_line(self, line: bytes) -> None:
        """A progress, checkpoint or artifact message from the task process (one JSON line)."""
        try:
            msg = json.loads(line)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        kind = msg.pop("type", "progress")
        if kind == "progress":
            with contextlib.suppress(ValueError):
                self.progress = Progress.model_validate(msg)
                if self.progress.step is not None and self.progress.total:
                    self.progress.percent = round(100.0 * self.progress.step / self.progress.total, 2)
        elif kind in ("checkpoint", "artifact"):
            path = Path(str(msg.get("path", "")))
            if not path.is_absolute():
                path = self.workdir / path
            if not path.exists():
                self.logs.write("system", f"[mloc] {kind} {path} does not exist; not uploaded\n")
                return
            step = msg.get("step")
            name = msg.get("name") or (f"checkpoints/step-{step}.tar" if kind == "checkpoint" else path.name)
            self._uploads.append(asyncio.create_task(self._upload(path, name, kind, step)))

    async def _upload(self, path: Path, name: str, kind: str, step: int | None) -> None:
        try:
            await upload(self.client, self.task_id, self.lease.epoch, path, name=name, kind=kind, step=step)
            self.logs.write("system", f"[mloc] uploaded {kind} {name}\n")
        except Exception as exc:
            self.logs.write("system", f"[mloc] upload of {name} failed: {exc}\n")

    async def _finish_uploads(self, output_dir: Path) -> None:
        if self._uploads:
            await asyncio.gather(*self._uploads, return_exceptions=True)
        if not any(os.scandir(output_dir)):  # the common case, checked without a recursive walk
            return
        for path in sorted(p for p in output_dir.rglob("*") if p.is_file()):
            await self._upload(path, str(path.relative_to(output_dir)), "artifact", None)

    # -- talking to the coordinator ----------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.agent.timings.heartbeat_s
        ttl = self.lease.ttl_s
        last_ok_sent = time.monotonic()
        # a renewal must land within the TTL, so failed ones are retried about every second, not backed off far
        retry = Backoff(min(1.0, interval / 2), 2 * min(1.0, interval / 2))

        def left() -> float:
            """Seconds until the task must be stopped. The lease is ours until last_ok_sent + ttl at best
            (the coordinator counts from a later receipt); stopping one heartbeat before that, and never
            waiting past it, ends the task before the coordinator can requeue it. A finished task has
            nothing to stop: it renews until its result is acknowledged, however long that takes."""
            if self.done.is_set():
                return float("inf")
            return last_ok_sent + ttl - min(interval, ttl / 4) - time.monotonic()

        # the lease was just granted with a full TTL: the first renewal is due after one interval
        await asyncio.sleep(interval * random.uniform(0.5, 1.0))
        while True:  # until run() cancels it, once the outcome is acknowledged or the lease is gone
            sent = time.monotonic()
            try:
                resp = await self.client.heartbeat(
                    self.task_id, HeartbeatRequest(epoch=self.lease.epoch, progress=self.progress),
                    timeout=max(0.1, min(max(1.0, min(interval, 10.0)), left())))
                last_ok_sent, ttl = sent, resp.ttl_s
                retry.reset()
                if resp.cancel and self.cancel_reason is None and not self.done.is_set():
                    self.agent.spawn(self.cancel("cancel requested"))
                wait = interval * random.uniform(0.9, 1.1)
            except LeaseLost as exc:
                self.agent.spawn(self.fence(f"lease lost: {exc.message}"))
                return
            except MlocError as exc:
                if not retryable(exc):
                    self.agent.spawn(self.fence(f"heartbeat refused: {exc}"))
                    return
                if left() <= 0:
                    self.agent.spawn(self.fence(
                        f"could not renew the lease within its TTL ({ttl:g}s): self-fencing"))
                    return
                wait = min(retry.next_s(), left())
            await asyncio.sleep(wait)

    async def _complete(self, completion: Completion | None) -> None:
        if completion is None:
            return
        if self.progress is not None and completion.result is not None:
            completion.result.setdefault("progress", self.progress.model_dump(exclude_none=True))
        if completion.error:  # the task's own output may echo a secret
            completion.error = self.logs.redactor.mask(completion.error)
        if completion.result:
            completion.result = json.loads(self.logs.redactor.mask(json.dumps(completion.result)))
        try:
            state = await asyncio.shield(self.agent.completions.report(self.task_id, completion))
            log.debug("task %s finished: %s", self.task_id, state)
        except LeaseLost as exc:
            log.warning("task %s: completion refused (%s)", self.task_id, exc)
        except Exception as exc:
            log.error("task %s: could not report completion: %s", self.task_id, exc)
