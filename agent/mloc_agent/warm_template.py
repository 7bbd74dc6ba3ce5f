"""A warm runtime's template process: ``python -I -u -m mloc_agent.warm_template FD CONFIG``.

It imports the heavy libraries of the task types it hosts once (``BaseModule.warm_imports``: torch,
transformers, trl, ...), then waits on a Unix socket (a SEQPACKET socketpair with the agent, fd ``FD``).
For each warm start the agent sends the task's environment and working directory with four fds
(stdin, stdout, stderr, the channel) over SCM_RIGHTS; the template forks a child that becomes the task
host (task_host.main), exactly as a cold ``python -I -u -m mloc_agent.task_host`` would, minus the imports.
The template reaps its children and reports "pid, exit code" to the agent (warm_runtimes.py).

Why the fork is safe (docs/warm-starts.md):
- No CUDA context: before every fork the template checks ``torch.cuda.is_initialized()`` is False (CUDA
  does not survive a fork; each task initialises its own, after the fork, in its own process).
- No threads: exactly one thread, counted by ``threading`` and by /proc/self/task (native threads, e.g.
  an OpenMP pool, count too). A fork copies only the calling thread; a lock another thread held would
  stay locked forever in the child. With one thread, no lock can be held by anyone else, and the one
  thread (this loop) holds none at the fork. Either check failing: the template refuses and the agent
  starts the task cold.
- The template never runs a task itself and nothing of a task comes back into it: each task is a fresh
  process of its own (own session and process group, its own environment, working dir and fds), and the
  template's memory is shared copy-on-write.

The environment the template was exec'd with (what /proc/PID/environ shows, for it and every child) is the
agent's base task environment plus the warden's mark: no secret of any task. A child replaces
``os.environ`` (and so the C environment CUDA and libraries read) with its task's own.

Standard library only at module level: the agent imports ``fingerprint`` from here.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import gc
import hashlib
import importlib
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from typing import Any

CHANNEL_FD = 3  # where a warm task finds its channel (MLOC_PROGRESS_FD)
MAX_MESSAGE = 4 << 20
HIGH_FD = 200  # the template's own fds live above the ones a task gets


def fingerprint(dirs: Iterable[str]) -> str:
    """What changes when packages are installed, removed or upgraded in these folders (a runtime's
    sys.path): the names in each (a dist-info's name holds its version), ``__pycache__`` aside (imports
    write it). Not mtimes: an import creating a folder's ``__pycache__`` changes its mtime. Cheap: one
    listdir per folder."""
    parts = []
    for d in dirs:
        try:
            names = sorted(n for n in os.listdir(d) if n != "__pycache__")
        except OSError:
            continue
        parts.append(f"{d}:{'/'.join(names)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def unsafe_to_fork() -> str | None:
    """Why forking now would be unsafe, or None (see the module docstring)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(AttributeError):
            if torch.cuda.is_initialized():
                return "CUDA is initialised in the template"
    threads = threading.active_count()
    native = len(os.listdir("/proc/self/task"))
    if threads != 1 or native != 1:
        return f"the template runs {max(threads, native)} threads ({threads} Python, {native} native)"
    return None


def _high(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HIGH_FD)
    os.close(fd)
    return new


class Template:
    """The template's loop: fork requests in, pids and exit codes out; one thread, no asyncio."""

    def __init__(self, sock: socket.socket, config: dict[str, Any]) -> None:
        self.sock = sock
        self.config = config
        self.children: dict[int, int] = {}  # pidfd -> pid
        self.selector = selectors.DefaultSelector()
        self.startup_handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE,
                                                                  signal.SIGCHLD, signal.SIGHUP)}

    def warm_up(self) -> dict[str, Any]:
        """Import what the hosted modules declared; a name this runtime lacks is skipped."""
        started = time.monotonic()
        sys.path[:0] = [p for p in self.config.get("python_path", []) if p not in sys.path]
        dirs = [p for p in sys.path if p and os.path.isdir(p)]
        fp = fingerprint(dirs)  # before the imports: a change while they run makes it stale at once
        imported, missing = [], []
        import mloc_agent.task_host  # noqa: F401  (sets SIGUSR1 to SIG_IGN, as in a cold host)
        from mloc_agent.modules.registry import load

        for name in self.config.get("imports", []):
            try:
                importlib.import_module(name)
                imported.append(name)
            except Exception as exc:  # not installed in this runtime, or broken: the task imports it cold
                missing.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
        for ref in self.config.get("modules", []):
            try:
                load(ref)
            except Exception as exc:
                missing.append(f"{ref}: {type(exc).__name__}: {exc}"[:300])
        # what the imports built stays out of every later collection: a task's gc.collect (accelerate calls
        # one as training starts) would otherwise walk, and so copy-on-write copy, the whole imported heap
        gc.collect()
        gc.freeze()
        return {"ready": True, "pid": os.getpid(), "dirs": dirs, "fingerprint": fp, "imported": imported,
                "missing": missing, "import_ms": round((time.monotonic() - started) * 1000)}

    def send(self, message: dict[str, Any]) -> None:
        self.sock.send(json.dumps(message).encode())

    def run(self) -> int:
        self.send(self.warm_up())
        self.selector.register(self.sock, selectors.EVENT_READ)
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.sock:
                    try:
                        data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, 8)
                    except OSError:
                        return 0
                    if not data:  # the agent closed its end (stopped, or died): the template goes too
                        for fd in fds:
                            os.close(fd)
                        return 0
                    try:
                        request = json.loads(data)
                    except ValueError:
                        request = {}
                    try:
                        self.fork(request, fds)
                    except Exception as exc:  # fork() itself failing (no memory, no pids): this task goes cold
                        self.send({"id": request.get("id"), "refused": f"{type(exc).__name__}: {exc}"})
                else:
                    self.reap(key.fd)

    def reap(self, pidfd: int) -> None:
        pid = self.children.pop(pidfd)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        self.send({"exit": pid, "code": os.waitstatus_to_exitcode(status)})

    def fork(self, request: dict[str, Any], fds: list[int]) -> None:
        rid = request.get("id")
        reason = unsafe_to_fork() if len(fds) == 4 else f"expected 4 fds, got {len(fds)}"
        if reason is None and not isinstance(request.get("env"), dict):
            reason = "the request was not understood"
        if reason is not None:
            for fd in fds:
                os.close(fd)
            self.send({"id": rid, "refused": reason})
            return
        fds = [_high(fd) for fd in fds]
        ready_r, ready_w = (_high(fd) for fd in os.pipe())
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(ready_r)
            self.child(request, fds, ready_w)
        os.close(ready_w)
        for fd in fds:
            os.close(fd)
        with os.fdopen(ready_r, "rb") as ready:
            answer = ready.read()  # b"" once the child is set up (its end closes on exec-less success)
        if answer:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self.send({"id": rid, "refused": f"the forked child failed to set up: {answer.decode()[-500:]}"})
            return
        pidfd = _high(os.pidfd_open(pid))
        self.children[pidfd] = pid
        self.selector.register(pidfd, selectors.EVENT_READ)
        self.send({"id": rid, "pid": pid})

    def child(self, request: dict[str, Any], fds: list[int], ready_w: int) -> None:
        """Become the task host: own session, the task's fds, environment and working dir, then task_host.main."""
        code = 1
        try:
            os.setsid()
            # the template's own fds first (the selector's may sit at a number a task's fd goes to)
            self.selector.close()
            self.sock.close()
            for pidfd in self.children:
                os.close(pidfd)
            for target, fd in enumerate(fds):  # stdin, stdout, stderr, the channel (CHANNEL_FD)
                os.dup2(fd, target)
                os.close(fd)
            for sig, handler in self.startup_handlers.items():
                signal.signal(sig, handler)
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # as task_host.py sets it
            os.environ.clear()
            os.environ.update(request["env"])
            os.chdir(request["cwd"])
            sys.argv = [sys.modules["mloc_agent.task_host"].__file__ or "task_host"]
            _reseed()
            os.close(ready_w)
            ready_w = -1
        except BaseException:
            if ready_w >= 0:
                with contextlib.suppress(OSError):
                    os.write(ready_w, traceback.format_exc().encode())
            os._exit(1)
        try:
            from mloc_agent.task_host import main

            code = main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()  # what interpreter shutdown would run (logging's flush among them)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(code)


def _reseed() -> None:
    """The template's random states were copied into every child: each task draws its own."""
    import random

    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        with contextlib.suppress(Exception):
            numpy.random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            torch.seed()


def main() -> int:
    sock = socket.socket(fileno=_high(int(sys.argv[1])))
    config = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    return Template(sock, config).run()


if __name__ == "__main__":
    sys.exit(main())
