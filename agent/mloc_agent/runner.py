"""Child processes: start a task in its own process group, follow its pipes, stop it (SIGTERM, then
SIGKILL after a grace), and make sure it dies with the agent (through the warden).

Why not ``asyncio.create_subprocess_exec``: it costs several event-loop round trips (one per pipe
connected) before the child is even counted as started, and a task per stream afterwards. Here the
child is started with one ``Popen`` (vfork), its pipes are followed with ``add_reader`` callbacks,
and its exit is seen through a pidfd: starting a task is a few hundred microseconds, on the hot path
of every lease. A warm start (warm_runtimes.py) gets the same pipes and interface, from a fork of a
template process instead of an exec; only where its exit code comes from differs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from mloc_agent.task_contract import TASK_ID, agent_mark, channel_env
from mloc_agent.warden import Warden, marked_pids
from mloc_agent.warm_template import CHANNEL_FD

log = logging.getLogger(__name__)
READ_SIZE = 64 * 1024


class PipeFollower:
    """Reads one pipe from the event loop: ``on_data`` gets each chunk, ``closed`` resolves at EOF."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, on_data: Callable[[bytes], None]) -> None:
        self.loop, self.fd, self.on_data = loop, fd, on_data
        self.closed: asyncio.Future[None] = loop.create_future()
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self.on_data(data)
        else:
            self.close()

    def close(self) -> None:
        if not self.closed.done():
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.closed.set_result(None)


class LineSplitter:
    """Bytes in, whole lines out (a line longer than ``limit`` is dropped, never buffered forever)."""

    def __init__(self, on_line: Callable[[bytes], None], limit: int = 1 << 20) -> None:
        self.on_line, self.limit = on_line, limit
        self._buf = b""

    def feed(self, data: bytes) -> None:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            self.on_line(line)
        if len(self._buf) > self.limit:
            self._buf = b""


_DEVNULL_FD: int | None = None


def _devnull() -> int:
    """One read-only /dev/null fd kept open for every task's stdin (Popen's DEVNULL opens and closes one
    per start)."""
    global _DEVNULL_FD
    if _DEVNULL_FD is None:
        _DEVNULL_FD = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _DEVNULL_FD


class ForkServer(Protocol):
    """Where a warm start comes from (warm_runtimes.WarmTemplate): forks a task host with these fds
    (stdin, stdout, stderr, the channel), and reports the child's exit code."""

    async def fork(self, env: dict[str, str], cwd: Path, fds: list[int]) -> int: ...

    def on_exit(self, pid: int, callback: Callable[[int], None]) -> None: ...


class _TaskPipes:
    """A task's stdout, stderr and channel pipes: the child's ends go to the child (cold: Popen; warm: the
    template, over SCM_RIGHTS) and are closed here once handed over; ours are followed from the loop."""

    def __init__(self) -> None:
        self.out_r, self.out_w = os.pipe()
        self.err_r, self.err_w = os.pipe()
        self.channel_r, self.channel_w = os.pipe()

    def close_childs(self) -> None:
        for fd in (self.out_w, self.err_w, self.channel_w):
            os.close(fd)

    def close_ours(self) -> None:
        """The child never started: nothing will follow our ends."""
        for fd in (self.out_r, self.err_r, self.channel_r):
            os.close(fd)

    def follow(self, on_output: Callable[[str, bytes], None],
               on_channel: Callable[[bytes], None]) -> list[PipeFollower]:
        loop = asyncio.get_running_loop()
        return [PipeFollower(loop, self.out_r, lambda b: on_output("stdout", b)),
                PipeFollower(loop, self.err_r, lambda b: on_output("stderr", b)),
                PipeFollower(loop, self.channel_r, on_channel)]


class TaskProcess:
    """One running task process (the leader of its own process group), started cold (``start``: Popen,
    its exit seen through a pidfd) or warm (``start_forked``: forked by a template, which reports its exit)."""

    def __init__(self, pid: int, pipes: list[PipeFollower], marks: tuple[bytes, ...] = (),
                 popen: subprocess.Popen[bytes] | None = None) -> None:
        self.popen = popen
        self.pid = self.pgid = pid
        self.pipes = pipes
        # set when the task's processes leave its group (torchrun starts each rank in a session of its
        # own): then signals and the final kill also go to every process carrying these marks
        self.marks = marks
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int] = loop.create_future()
        self._reaped = False
        if popen is not None:
            self._watch(loop, popen)

    def _watch(self, loop: asyncio.AbstractEventLoop, popen: subprocess.Popen[bytes]) -> None:
        try:
            pidfd = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):  # no pidfds (old kernel, not Linux): a thread waits instead
            waiter = loop.run_in_executor(None, popen.wait)
            waiter.add_done_callback(lambda f: self._set_exit(f.result() if not f.exception() else -1))
        else:
            def on_exit() -> None:
                loop.remove_reader(pidfd)
                os.close(pidfd)
                self._set_exit(popen.wait())  # it has exited: this reaps it without blocking

            loop.add_reader(pidfd, on_exit)

    @classmethod
    def start(
        cls, argv: list[str], env: dict[str, str], cwd: Path, warden: Warden,
        on_output: Callable[[str, bytes], None], on_channel: Callable[[bytes], None], *,
        leaves_group: bool = False,
    ) -> TaskProcess:
        """Start ``argv`` now (no await: the child runs before this returns). ``on_output`` gets
        ("stdout" | "stderr", bytes); ``on_channel`` gets the bytes the task writes to its channel
        (task_contract.channel_env). ``leaves_group``: the task starts processes in sessions of their
        own (torchrun's ranks), found by the warden's mark and the task id instead of the group."""
        # our own pipes, handed to the child as plain fds: no file objects to build and take apart
        ends = _TaskPipes()
        env = warden.mark({**env, **channel_env(ends.channel_w)})
        try:
            popen = subprocess.Popen(
                argv, stdin=_devnull(), stdout=ends.out_w, stderr=ends.err_w, env=env, cwd=str(cwd),
                start_new_session=True, pass_fds=(ends.channel_w,),
            )
        except BaseException:
            ends.close_ours()
            raise
        finally:
            ends.close_childs()
        pipes = ends.follow(on_output, on_channel)
        marks = (agent_mark(warden.instance).encode(), f"{TASK_ID}={env.get(TASK_ID, '')}".encode())
        return cls(popen.pid, pipes, marks if leaves_group and env.get(TASK_ID) else (), popen=popen)

    @classmethod
    async def start_forked(
        cls, template: ForkServer, env: dict[str, str], cwd: Path, warden: Warden,
        on_output: Callable[[str, bytes], None], on_channel: Callable[[bytes], None],
    ) -> TaskProcess:
        """Start the task host warm: forked by ``template`` (warm_template.py) with the same pipes, marked
        environment and working dir a cold start gets; the channel sits at fd CHANNEL_FD. Raises what the
        template's refusal or failure raises (the caller then starts it cold)."""
        ends = _TaskPipes()
        env = warden.mark({**env, **channel_env(CHANNEL_FD)})
        try:
            pid = await template.fork(env, cwd, [_devnull(), ends.out_w, ends.err_w, ends.channel_w])
        except BaseException:
            ends.close_ours()
            raise
        finally:
            ends.close_childs()
        proc = cls(pid, ends.follow(on_output, on_channel))
        template.on_exit(pid, proc._set_exit)
        return proc

    def _set_exit(self, code: int) -> None:
        if not self.exited.done():
            self.exited.set_result(code)

    @property
    def returncode(self) -> int | None:
        return self.exited.result() if self.exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self.exited)

    async def output_closed(self) -> None:
        """Every pipe read to its end (children the task left behind may hold them: reap_group first)."""
        await asyncio.gather(*(p.closed for p in self.pipes))

    def close_pipes(self) -> None:
        for p in self.pipes:
            p.close()

    def signal_group(self, sig: int) -> bool:
        try:
            os.killpg(self.pgid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def signal_task(self, sig: int) -> int:
        """``sig`` to every process of the task: its group, and (``leaves_group``) each marked process
        outside it. Returns how many were signalled."""
        count = int(self.signal_group(sig))
        for pid in marked_pids(*self.marks) if self.marks else ():
            try:
                if os.getpgid(pid) != self.pgid:
                    os.kill(pid, sig)
                    count += 1
            except (ProcessLookupError, PermissionError):
                continue
        return count

    async def stop(self, grace_s: float) -> int | None:
        """SIGTERM the whole group, SIGKILL it after ``grace_s``; returns the exit code."""
        if self.returncode is None:
            self.signal_task(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.wait(), grace_s)
            except TimeoutError:
                log.warning("task process %d ignored SIGTERM for %.0fs: SIGKILL", self.pgid, grace_s)
        self.reap_group()
        return await self.wait()

    def reap_group(self) -> None:
        """Kill what is left of the group (children the task left behind)."""
        if not self._reaped:
            self._reaped = True
            self.signal_task(signal.SIGKILL)
