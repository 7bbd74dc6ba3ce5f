"""Warm runtimes, the agent's side: one template process per Python runtime that hosts task modules
(warm_template.py), started lazily or at agent start, and the warm start of a task from it.

``WarmRuntimes.start`` either returns a TaskProcess forked from the runtime's template, or says why the
task starts cold: warm starts off, no template yet (lazy: the first task of a runtime starts it),
still importing, dead, stale (the runtime's packages changed: it is rebuilt), refusing (CUDA initialised
or threads running in it), or the fork request failing. docs/warm-starts.md has the whole story.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mloc_shared.protocol import WarmRuntimeStat

from mloc_agent.modules.base import BaseModule
from mloc_agent.modules.registry import load
from mloc_agent.runner import TaskProcess
from mloc_agent.warden import Warden
from mloc_agent.warm_template import fingerprint

log = logging.getLogger(__name__)
FORK_TIMEOUT_S = 10.0
RECV_SIZE = 1 << 20
# the template's own exec environment, over the agent's base task environment: libraries that would start
# a thread pool at import (OpenBLAS through numpy, jemalloc's background thread through pyarrow) keep
# theirs unstarted, so the template can fork (a task's own environment replaces these in its child)
TEMPLATE_ENV = {"OPENBLAS_NUM_THREADS": "1", "JE_ARROW_MALLOC_CONF": "background_thread:false"}


class ColdStart(Exception):
    """Why this task starts cold (one line, for its system log)."""


@dataclass
class RuntimePlan:
    """What one runtime's template pre-imports: the hosted modules' ``warm_imports`` and the modules."""

    python: str
    imports: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)


def plan_runtimes(modules: Mapping[str, str], runtimes: Mapping[str, str],
                  default_python: str) -> dict[str, RuntimePlan]:
    """interpreter -> its plan, for the hosted (not direct-argv) task types this agent serves."""
    plans: dict[str, RuntimePlan] = {}
    for task_type, ref in sorted(modules.items()):
        try:
            cls = load(ref)
        except Exception:  # registry.available already said why
            continue
        if cls.direct_argv.__func__ is not BaseModule.direct_argv.__func__:
            continue  # a program run directly (command): nothing to keep warm
        python = runtimes.get(task_type, default_python)
        plan = plans.setdefault(python, RuntimePlan(python))
        plan.modules.append(ref)
        plan.imports.extend(n for n in cls.warm_imports if n not in plan.imports)
    return plans


class WarmTemplate:
    """One template process and the socket to it: fork requests out, pids and exit codes in."""

    def __init__(self, plan: RuntimePlan, python_path: tuple[str, ...], env: Mapping[str, str], warden: Warden,
                 log_dir: Path) -> None:
        self.plan = plan
        self.state = "starting"  # starting | ready | dead
        self.why_dead = ""
        self.info: dict[str, Any] = {}
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._exits: dict[int, Callable[[int], None]] = {}
        self._early_exits: dict[int, int] = {}  # reported before on_exit was called
        self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        ours.setblocking(False)
        self.sock = ours
        config = {"imports": plan.imports, "modules": plan.modules, "python_path": list(python_path)}
        log_dir.mkdir(parents=True, exist_ok=True)
        # one log per runtime, started afresh with each template (a rebuilt one replaces the last one's)
        self.log_path = log_dir / f"template-{hashlib.sha256(plan.python.encode()).hexdigest()[:12]}.log"
        started = time.monotonic()
        try:
            with open(self.log_path, "wb") as out:
                self.proc = subprocess.Popen(
                    [plan.python, "-I", "-u", "-m", "mloc_agent.warm_template", str(theirs.fileno()),
                     json.dumps(config)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, pass_fds=(theirs.fileno(),),
                    env=warden.mark({**env, **TEMPLATE_ENV}), cwd=str(log_dir), start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.started = started
        self._loop.add_reader(ours.fileno(), self._readable)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def name(self) -> str:
        return self.plan.python

    def rss_mb(self) -> float | None:
        """The template's resident memory (its children share most of it copy-on-write)."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return round(int(line.split()[1]) / 1024, 1)
        except (OSError, ValueError):
            return None
        return None

    def _readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._gone(f"its socket failed: {exc}")
                return
            if not data:
                code = self.proc.poll()
                self._gone(f"it exited{f' with code {code}' if code is not None else ''} (see {self.log_path})")
                return
            message = json.loads(data)
            if message.get("ready"):
                self.info = message
                self.state = "ready"
                log.info("warm runtime %s ready in %.1fs (pid %d, imported %s%s)", self.name,
                         time.monotonic() - self.started, self.pid, ", ".join(message["imported"]) or "nothing",
                         f"; not importable: {'; '.join(message['missing'])}" if message.get("missing") else "")
            elif "exit" in message:
                pid, code = message["exit"], message["code"]
                callback = self._exits.pop(pid, None)
                if callback is None:
                    self._early_exits[pid] = code
                else:
                    callback(code)
            elif "id" in message:
                waiter = self._pending.pop(message["id"], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message)

    def _gone(self, why: str) -> None:
        if self.state == "dead":
            return
        self.state, self.why_dead = "dead", why
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(ColdStart(f"the {self.name} template {why}"))
        self._pending.clear()
        # its children run on (their own sessions); nothing reports their exits now: watch their pidfds
        for pid, callback in list(self._exits.items()):
            self._watch_orphan(pid, callback)
        self._exits.clear()
        with contextlib.suppress(Exception):
            self._loop.run_in_executor(None, self.proc.wait)  # reap the template itself

    def _watch_orphan(self, pid: int, callback: Callable[[int], None]) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            callback(-1)  # gone already: its exit code went with the template
            return

        def exited() -> None:
            self._loop.remove_reader(pidfd)
            os.close(pidfd)
            callback(-1)

        self._loop.add_reader(pidfd, exited)

    async def fork(self, env: dict[str, str], cwd: Path, fds: list[int]) -> int:
        """Ask the template for a child with these fds; its pid, or ColdStart saying why not."""
        if self.state != "ready":
            raise ColdStart(f"the {self.name} template is {self.state}")
        self._next_id += 1
        rid = self._next_id
        waiter = self._loop.create_future()
        self._pending[rid] = waiter
        body = json.dumps({"id": rid, "env": env, "cwd": str(cwd)}).encode()
        try:
            socket.send_fds(self.sock, [body], fds)
        except OSError as exc:
            self._pending.pop(rid, None)
            raise ColdStart(f"the fork request to the {self.name} template failed: {exc}") from exc
        try:
            answer = await asyncio.wait_for(waiter, FORK_TIMEOUT_S)
        except TimeoutError:
            self._pending.pop(rid, None)
            self.close()  # a template that does not answer in time is not to be trusted again
            raise ColdStart(f"the {self.name} template did not answer in {FORK_TIMEOUT_S:g}s") from None
        if "refused" in answer:
            raise ColdStart(f"the {self.name} template refused to fork: {answer['refused']}")
        return int(answer["pid"])

    def on_exit(self, pid: int, callback: Callable[[int], None]) -> None:
        code = self._early_exits.pop(pid, None)
        if code is not None:
            callback(code)
        elif self.state == "dead":
            self._watch_orphan(pid, callback)
        else:
            self._exits[pid] = callback

    def stale(self) -> bool:
        """Whether the runtime's packages changed since the template imported them."""
        return fingerprint(self.info.get("dirs", [])) != self.info.get("fingerprint")

    def close(self) -> None:
        """Stop the template (closing its socket ends it; a running task it forked is not touched)."""
        if self.state != "dead":
            self._gone("was stopped")
        with contextlib.suppress(ProcessLookupError):
            if self.proc.poll() is None:
                self.proc.terminate()


class WarmRuntimes:
    """The agent's templates, one per interpreter, and the choice of warm or cold for each hosted task."""

    def __init__(self, plans: dict[str, RuntimePlan], python_path: tuple[str, ...], env: Mapping[str, str],
                 warden: Warden, data_dir: Path, *, enabled: bool = True, eager: bool = False) -> None:
        self.plans = plans
        self.python_path, self.env, self.warden = python_path, env, warden
        self.log_dir = data_dir / "warm"
        self.enabled, self.eager = enabled, eager
        self.templates: dict[str, WarmTemplate] = {}

    def start_all(self) -> None:
        """MLOC_WARM_START=eager: every runtime's template, at agent start."""
        if self.enabled:
            for python in self.plans:
                self._spawn(python)

    def _spawn(self, python: str) -> WarmTemplate:
        template = WarmTemplate(self.plans[python], self.python_path, self.env, self.warden, self.log_dir)
        self.templates[python] = template
        return template

    async def start(self, python: str, env: dict[str, str], cwd: Path, on_output: Callable[[str, bytes], None],
                    on_channel: Callable[[bytes], None]) -> tuple[TaskProcess, float]:
        """The task host forked from ``python``'s template, and how long that took (ms); ColdStart otherwise."""
        if not self.enabled:
            raise ColdStart("warm runtimes are off (MLOC_WARM_RUNTIMES=false)")
        if python not in self.plans:
            raise ColdStart(f"no warm runtime for {python}")
        template = self.templates.get(python)
        if template is None or template.state == "dead":
            why = ("the first hosted task of this runtime starts its template (MLOC_WARM_START=lazy)"
                   if template is None else f"the {python} template {template.why_dead}; starting a new one")
            self._spawn(python)
            raise ColdStart(why)
        if template.state == "starting":
            raise ColdStart(f"the {python} template is still importing")
        started = time.monotonic()
        if await asyncio.to_thread(template.stale):
            template.close()
            self._spawn(python)
            raise ColdStart(f"the packages of {python} changed since its template started; rebuilding it")
        proc = await TaskProcess.start_forked(template, env, cwd, self.warden, on_output, on_channel)
        return proc, (time.monotonic() - started) * 1000

    async def try_start(self, python: str, env: dict[str, str], cwd: Path, on_output: Callable[[str, bytes], None],
                        on_channel: Callable[[bytes], None]) -> tuple[TaskProcess | None, str]:
        """``start``, or None for a cold start; with the task's system log line saying which (and why)."""
        try:
            proc, ms = await self.start(python, env, cwd, on_output, on_channel)
        except ColdStart as exc:
            return None, f"[mloc] cold start: {exc}\n"
        except Exception as exc:  # whatever went wrong on the way, a cold start still runs the task
            log.warning("warm start from %s failed: %s", python, exc)
            return None, f"[mloc] cold start: the warm start failed ({type(exc).__name__}: {exc})\n"
        return proc, f"[mloc] warm start: forked from the {python} template in {ms:.0f} ms\n"

    def stats(self) -> list[WarmRuntimeStat]:
        """For the poll's agent stats (GET /v1/agents): each template's state and memory."""
        return [WarmRuntimeStat(python=python, state=t.state, pid=t.pid if t.state != "dead" else None,
                                rss_mb=t.rss_mb() if t.state != "dead" else None)
                for python, t in sorted(self.templates.items())]

    def close(self) -> None:
        for template in self.templates.values():
            template.close()
