"""The agent loop, top to bottom: register, long-poll, start leases, drain on SIGTERM.

Only outbound connections: the agent works behind NAT and firewalls that allow nothing inbound.
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
import uuid
import warnings
from typing import Any

from mloc_shared.errors import MlocError, Unauthorized
from mloc_shared.protocol import Lease, LeaseRef, PollRequest, PreemptNotice, RegisterRequest, Timings
from mloc_shared.version import __version__

from mloc_agent import inventory
from mloc_agent.client import CoordinatorClient
from mloc_agent.completions import CompletionReporter
from mloc_agent.containers import ContainerRuntime
from mloc_agent.gang import lan_addresses
from mloc_agent.lease_run import LeaseDeps, LeaseRun
from mloc_agent.model_cache import ModelCache, ModelScan
from mloc_agent.modules import registry
from mloc_agent.retries import Backoff, retryable, retryable_registration
from mloc_agent.settings import AgentSettings
from mloc_agent.task_contract import base_env, host_python_path
from mloc_agent.warden import Warden
from mloc_agent.warm_runtimes import WarmRuntimes, plan_runtimes
from mloc_agent.workdirs import Janitor, set_aside_stale

log = logging.getLogger("mloc.agent")
GPU_STATS_EVERY_S = 15.0
START_WAIT_S = 0.05  # how long the next poll waits for the leases just received to start


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.client = CoordinatorClient(settings.coordinator_url, ca_bundle=settings.ca_bundle)
        self.containers = ContainerRuntime.find(settings.container_runtime, settings.container_pids_limit,
                                                settings.container_args)
        self.warden = Warden(self.containers.binary if self.containers is not None else None)
        self.janitor = Janitor()
        self.task_env = base_env()
        self.host_python_path = tuple(host_python_path(self.task_env))  # once per agent, like task_env
        self.completions = CompletionReporter(self.client)
        self.modules: dict[str, str] = {}
        self.runs: dict[str, LeaseRun] = {}
        # a task's next attempt, offered while this agent still reports the previous one (a retry with no
        # backoff can be re-leased before our completion's answer is in): it starts once that one is gone
        self.next_attempts: dict[str, Lease] = {}
        self.timings = Timings(poll_hold_s=25, heartbeat_s=10, lease_ttl_s=45)
        self.draining = False
        self.inventory = inventory.collect(settings, self.containers.images() if self.containers else None)
        self.max_tasks = settings.max_tasks or max(1, len(self.inventory.gpus))
        self.model_cache = ModelCache(settings.data_dir)  # what it holds: scanned at start and after each task
        self._idle = asyncio.Event()
        self._repoll = asyncio.Event()  # set when the held poll no longer says the right thing
        self._background: set[asyncio.Task[None]] = set()
        self._last_gpu_stats = 0.0
        self.warm: WarmRuntimes | None = None  # once the modules are known (run)
        self.lease_deps = self._lease_deps()  # rebuilt once registration sets the timings

    # -- registration -------------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.settings.state_file.read_text())
        except (OSError, ValueError):
            return None
        return state if state.get("coordinator_url") == self.settings.coordinator_url else None

    def _save_state(self, agent_id: str, credential: str) -> None:
        path = self.settings.state_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_text(json.dumps({"agent_id": agent_id, "credential": credential,
                                   "coordinator_url": self.settings.coordinator_url}))
        tmp.replace(path)

    async def register(self) -> None:
        """Re-register with the saved credential (keeps our identity), else with the join token."""
        held = self.model_cache.current
        inventory = self.inventory if held is None else self.inventory.model_copy(
            update={"models": list(held.models), "disk_free_bytes": held.disk_free_bytes})
        req = RegisterRequest(
            agent_version=__version__, name=self.settings.agent_name, labels=self.settings.agent_labels,
            inventory=inventory, task_types=sorted(self.modules), max_tasks=self.max_tasks,
            network=self.settings.network or self.settings.agent_labels.get("network"),
            addresses=lan_addresses(self.settings.lan_address, self.settings.coordinator_url),
        )
        state = self._load_state()
        backoff = Backoff(0.5, 30.0)
        while True:
            try:
                if state is not None:
                    self.client.credential = state["credential"]
                    try:
                        resp = await self.client.register(req, None)
                    except Unauthorized:
                        state = None
                        continue
                else:
                    self.client.credential = None
                    resp = await self.client.register(req, self.settings.join_token)
                break
            except MlocError as exc:
                if not retryable_registration(exc):  # a protocol mismatch among them: this agent is too old
                    raise
                if self.draining:  # stopped (SIGTERM) before it ever registered: nothing to finish
                    return
                delay = backoff.next_s()
                log.warning("registration failed (%s); retrying in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):  # a SIGTERM (drain sets _idle) ends the wait at once
                    await asyncio.wait_for(self._idle.wait(), delay)
                if self.draining:
                    return
        self.model_cache.reported_to_coordinator(held)
        self.client.credential = resp.credential
        self.client.poll_hold_s = resp.timings.poll_hold_s
        self.timings = resp.timings
        self.lease_deps = self._lease_deps()
        self._save_state(resp.agent_id, resp.credential)
        gpus = ", ".join(f"{g.name} ({g.memory_gb:.0f} GB{', declared' if g.declared else ''})"
                         for g in self.inventory.gpus) or f"none ({self.inventory.nvml_error or 'CPU only'})"
        log.info("registered as %s (%s); GPUs: %s; task types: %s; timings: %s", self.settings.agent_name,
                 resp.agent_id, gpus, ", ".join(sorted(self.modules)), resp.timings.model_dump())

    # -- the loop -----------------------------------------------------------------------------

    def drain(self) -> None:
        if not self.draining:
            deadline = self.settings.stop_deadline_s
            if deadline > 0 and self.runs:  # notice before the box goes: checkpoint now, resume elsewhere
                log.info("stopping within %gs: %d running task(s) checkpoint and release their leases",
                         deadline, len(self.runs))
                notice = PreemptNotice(grace_s=deadline, reason=f"agent {self.settings.agent_name} stops within "
                                                                f"{deadline:g}s (MLOC_STOP_DEADLINE_S)")
                for run in list(self.runs.values()):
                    self.spawn(run.preempt(notice))
            else:
                log.info("draining: finishing %d running task(s), taking no new ones", len(self.runs))
            self.draining = True
            self._repoll.set()
            if not self.runs:
                self._idle.set()

    async def run(self) -> None:
        self.modules = registry.available(self.settings.disabled_task_types, self.settings.runtimes)
        loop = asyncio.get_running_loop()
        held = asyncio.create_task(self.model_cache.refresh())  # in a thread, while the rest starts
        _use_pidfd_child_watcher(loop)
        await self.warden.start()
        self.warm = WarmRuntimes(plan_runtimes(self.modules, self.settings.runtimes, sys.executable),
                                 self.host_python_path, self.task_env, self.warden, self.settings.data_dir,
                                 enabled=self.settings.warm_runtimes, eager=self.settings.warm_start == "eager")
        if self.warm.eager:
            self.warm.start_all()
        self.lease_deps = self._lease_deps()
        self.completions.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.drain)
        try:
            await self._sweep_leftovers()
            await held  # registration tells the coordinator what this agent holds
            await self.register()
            await self._poll_loop()
            if self.runs:
                await asyncio.gather(*(r.done.wait() for r in self.runs.values()))
        finally:
            await self._shutdown()

    async def _sweep_leftovers(self) -> None:
        """Work dirs an earlier run left behind (it died without cleaning up) go before any lease is taken."""
        data = self.settings.data_dir
        stale = await asyncio.to_thread(set_aside_stale, data / "work", data / "trash")
        if stale:
            log.info("removing %d work dir(s) an earlier run of this agent left behind", len(stale))
        for path in stale:
            self.janitor.discard(path)

    async def _poll_loop(self) -> None:
        poll_id = uuid.uuid4().hex
        backoff = Backoff(0.5, 30.0)
        while not (self.draining and not self.runs):
            held = self.model_cache.unreported()
            req = PollRequest(
                poll_id=poll_id, free_slots=0 if self.draining else max(0, self.max_tasks - len(self.runs)),
                running=[LeaseRef(task_id=r.task_id, epoch=self._held_epoch(r)) for r in self.runs.values()],
                draining=self.draining, gpu_stats=self._gpu_stats(), **_held_fields(held),
                warm_runtimes=self.warm.stats() if self.warm is not None and self.warm.enabled else None,
            )
            self._repoll.clear()
            poll = asyncio.create_task(self.client.poll(req))
            idle = asyncio.create_task(self._idle.wait())
            repoll = asyncio.create_task(self._repoll.wait())
            await asyncio.wait({poll, idle, repoll}, return_when=asyncio.FIRST_COMPLETED)
            idle.cancel()
            repoll.cancel()
            if not poll.done():
                # drained, or our state changed while the poll was held: drop it and ask again with the
                # same poll id (leases it may have claimed are offered again)
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await poll
                if self.draining and not self.runs:
                    break
                continue
            try:
                resp = poll.result()
            except Unauthorized:
                log.warning("the coordinator no longer knows this agent; registering again")
                self.settings.state_file.unlink(missing_ok=True)
                await self.register()
                continue
            except MlocError as exc:
                if not retryable(exc):
                    raise
                delay = backoff.next_s()
                log.warning("poll failed (%s); retrying in ~%.1fs", exc, delay)
                await asyncio.sleep(delay)  # same poll_id: a retry is idempotent
                continue
            backoff.reset()
            self.model_cache.reported_to_coordinator(held)
            poll_id = uuid.uuid4().hex
            new_runs = [self._start(lease) for lease in resp.leases if self._accept(lease)]
            if new_runs:  # start them before the next poll's work competes for this loop (briefly: a download
                # of a checkpoint or of sources can take minutes, and the next poll must not wait for that)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*(r.started.wait() for r in new_runs)), START_WAIT_S)
            for task_id in resp.cancel:
                run = self.runs.get(task_id)
                if run is not None:
                    self.spawn(run.cancel("cancel requested"))
            for task_id, notice in resp.preempt.items():
                run = self.runs.get(task_id)
                if run is not None:
                    self.spawn(run.preempt(notice))
            for task_id in resp.lost:
                run = self.runs.get(task_id)
                if run is not None:
                    self.spawn(run.fence("the coordinator says this lease is no longer ours"))

    def _accept(self, lease: Lease) -> bool:
        """Whether to start ``lease`` now; a newer attempt of a task still finishing here waits for it."""
        run = self.runs.get(lease.task_id)
        if run is None:
            return True
        if lease.epoch > run.lease.epoch:
            log.info("task %s attempt %d starts once attempt %d has reported", lease.task_id, lease.attempt,
                     run.lease.attempt)
            self.next_attempts[lease.task_id] = lease
        return False

    def _held_epoch(self, run: LeaseRun) -> int:
        """The epoch this agent holds for the run's task: a waiting next attempt's, once one is offered."""
        waiting = self.next_attempts.get(run.task_id)
        return waiting.epoch if waiting is not None else run.lease.epoch

    def spawn(self, coro) -> None:
        """Run a background coroutine, keeping a reference so it is not garbage-collected."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _lease_deps(self) -> LeaseDeps:
        return LeaseDeps(
            client=self.client, settings=self.settings, modules=self.modules, task_env=self.task_env,
            host_python_path=self.host_python_path,
            warden=self.warden, janitor=self.janitor, completions=self.completions,
            heartbeat_s=self.timings.heartbeat_s, spawn=self.spawn, containers=self.containers, warm=self.warm,
            model_cache=self.model_cache,
        )

    def _start(self, lease) -> LeaseRun:
        run = LeaseRun(self.lease_deps, lease)
        self.runs[lease.task_id] = run
        log.info("task %s (%s) attempt %d on GPUs %s", lease.task_id, lease.task_type, lease.attempt,
                 lease.gpus or "-")

        async def go() -> None:
            try:
                await run.run()
            finally:
                # dropped from `running` only now that the completion is acknowledged
                self.runs.pop(lease.task_id, None)
                if not self.draining:  # it may have fetched a model: tell the coordinator what we hold now
                    self.spawn(self._rescan_models())
                following = self.next_attempts.pop(lease.task_id, None)
                if following is not None:
                    self._start(following)
                if self.draining and not self.runs:
                    self._idle.set()

        self.spawn(go())
        return run

    async def _rescan_models(self) -> None:
        """After a task: scan what the agent holds (in a thread); if it changed, the held poll is sent again
        carrying it, so placement sees a model a task just fetched before the next task is placed."""
        try:
            changed = await self.model_cache.refresh()
        except OSError as exc:  # its data dir's disk cannot be read: placement keeps the last report
            log.warning("could not list the models this agent holds: %s", exc)
            return
        if changed and not self.draining:
            self._repoll.set()

    def _gpu_stats(self):
        if self.inventory.gpu_source != "nvml" or time.monotonic() - self._last_gpu_stats < GPU_STATS_EVERY_S:
            return None
        self._last_gpu_stats = time.monotonic()
        return inventory.gpu_stats()

    async def _shutdown(self) -> None:
        for run in list(self.runs.values()):
            await run.fence("agent shutting down")
        await self.completions.stop()
        if self.warm is not None:
            self.warm.close()
        await self.warden.stop()
        await asyncio.to_thread(self.janitor.close)
        await self.client.close()
        log.info("agent stopped")


def _held_fields(held: ModelScan | None) -> dict[str, Any]:
    """A poll's held-models fields: the scan the coordinator has not had yet, else nothing (unchanged)."""
    if held is None:
        return {}
    return {"models": list(held.models), "disk_free_bytes": held.disk_free_bytes}


def _use_pidfd_child_watcher(loop: asyncio.AbstractEventLoop) -> None:
    """Python 3.11 waits for each child in a thread of its own; pidfds are cheaper (3.12+ does it)."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    with contextlib.suppress(Exception), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(loop)
        asyncio.set_child_watcher(watcher)


def main(settings: AgentSettings) -> None:
    from mloc_shared.logging_setup import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    asyncio.run(Agent(settings).run())
