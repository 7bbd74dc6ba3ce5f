"""The first code a sandboxed ``python_repl`` child runs: confine the process, then run the snippet.

Run as ``python -I sandbox_boot.py CONFIG_JSON STATUS_FD`` with the snippet on stdin (see sandbox.py).
Stdlib only, and nothing here imports MLOC: it runs before any untrusted code, confines its own
process with the layers below, reports on STATUS_FD which ones held, closes that fd, and only
then compiles the snippet. Every layer is inherited by whatever the snippet starts.

Layers (each independent, so one missing on a given kernel does not open the others):
1. user + network + PID namespaces: no interface but a downed loopback, so no route anywhere;
   the snippet runs as PID 1, so everything it starts dies with it; capabilities are dropped;
2. Landlock (kernel 5.13+): the filesystem is read-only to the interpreter's own trees and
   read-write only to the temp dir; TCP bind/connect are denied (ABI 4+), as are signals and
   abstract Unix sockets outside the sandbox (ABI 6+);
3. rlimits: address space, CPU seconds, file size, open files, no core dumps;
4. an audit hook (PEP 578) that refuses sockets, process creation, ctypes loading and opens
   outside the same allowlist; a tripwire in the interpreter, not a kernel boundary.
"""

from __future__ import annotations

import ast
import ctypes
import json
import linecache
import os
import resource
import select
import signal
import sys

CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWPID = 0x10000000, 0x40000000, 0x20000000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 1, 38, 24
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
# Landlock access rights by ABI version (linux/landlock.h)
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_ALL_V1 = (1 << 13) - 1
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1 << 0, 1 << 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def drop_capabilities() -> None:
    """Empty the bounding, effective, permitted and inheritable sets (whatever namespace we are in)."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # past the last capability this kernel knows

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    data = (ctypes.c_uint32 * 6)()
    _check(_libc.capset(ctypes.byref(Header(0x20080522, 0)), data), "capset")


def enter_namespaces() -> str:
    """New network and PID namespaces, inside a new user namespace when the kernel allows (any user)."""
    uid, gid = os.getuid(), os.getgid()
    try:
        _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID), "unshare(user+net+pid)")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
        kind = "user+network+pid namespaces"
    except OSError as user_err:
        if os.geteuid() != 0:
            raise
        try:  # root where user namespaces are restricted: plain network and PID namespaces
            _check(_libc.unshare(CLONE_NEWNET | CLONE_NEWPID), "unshare(net+pid)")
        except OSError as net_err:
            raise OSError(f"{user_err}; {net_err}") from None
        kind = "network+pid namespaces"
    drop_capabilities()
    return kind


def become_pid_one(cfg: dict, status_fd: int) -> int:
    """Fork the snippet's process as PID 1 of the new PID namespace; this process only waits for it.

    When PID 1 dies the kernel kills everything else in the namespace, so nothing the snippet
    starts (even with setsid, out of the process group the task kills) outlives it. PID 1 dies with
    us (PDEATHSIG), and we die with the task process. Returns, in the child, a pipe that reads EOF
    once this waiting parent is gone.
    """
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != cfg["parent_pid"]:
        os._exit(137)
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(alive_w)
        return alive_r
    os.close(alive_r)
    os.close(status_fd)
    os.close(0)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):  # report the same death upwards
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status))


def landlock_abi() -> int:
    return _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, 1)


def apply_landlock(read_paths: list[str], write_paths: list[str], device_paths: list[str]) -> str:
    """Allow reads under ``read_paths``, everything under ``write_paths``, deny the rest; no TCP."""
    abi = landlock_abi()
    if abi < 1:
        raise OSError(ctypes.get_errno(), "Landlock is not available on this kernel")
    fs = FS_ALL_V1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    fs |= FS_IOCTL_DEV if abi >= 5 else 0
    net = (NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL) if abi >= 6 else 0
    attr = (ctypes.c_uint64 * 3)(fs, net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _check(_libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0), "landlock ruleset")

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    read = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
    rules = [(p, read) for p in read_paths] + [(p, fs) for p in write_paths]
    rules += [(p, FS_READ_FILE | FS_WRITE_FILE) for p in device_paths]
    for path, access in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if not os.path.isdir(path):
                access &= FILE_RIGHTS & fs
            rule = PathBeneath(access & fs, fd)
            _check(_libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0), f"landlock rule {path}")
        finally:
            os.close(fd)
    _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    os.close(ruleset)
    parts = ["filesystem"] + (["tcp"] if net else []) + (["signal+abstract-unix scope"] if scoped else [])
    return f"abi {abi}: " + ", ".join(parts)


def set_limits(memory_mb: int, cpu_s: int, file_mb: int, open_files: int) -> str:
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb * 1024 * 1024,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails with EFBIG instead of killing
    return f"address space {memory_mb} MiB, cpu {cpu_s}s, files {file_mb} MiB, {open_files} fds"


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


BLOCKED_EVENTS = {
    "socket.__new__": "network access is disabled in the sandbox",
    "socket.connect": "network access is disabled in the sandbox",
    "socket.bind": "network access is disabled in the sandbox",
    "socket.getaddrinfo": "network access is disabled in the sandbox",
    "socket.gethostbyname": "network access is disabled in the sandbox",
    "subprocess.Popen": "starting processes is disabled in the sandbox",
    "os.system": "starting processes is disabled in the sandbox",
    "os.exec": "starting processes is disabled in the sandbox",
    "os.posix_spawn": "starting processes is disabled in the sandbox",
    "os.spawn": "starting processes is disabled in the sandbox",
    "os.fork": "starting processes is disabled in the sandbox",
    "os.forkpty": "starting processes is disabled in the sandbox",
    "ctypes.dlopen": "loading native libraries with ctypes is disabled in the sandbox",
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def install_audit_hook(read_roots: tuple[str, ...], write_roots: tuple[str, ...]) -> str:
    """Refuse network, processes and file access outside the allowlist, raised in the caller."""
    busy = [False]

    def path_allowed(path: object, writing: bool) -> bool:
        if isinstance(path, int):
            return True  # an already-open descriptor
        real = os.path.realpath(os.fsdecode(path))  # type: ignore[arg-type]
        return _under(real, write_roots) or (not writing and _under(real, read_roots))

    def hook(event: str, args: tuple) -> None:
        if busy[0]:
            return
        reason = BLOCKED_EVENTS.get(event)
        if reason is not None:
            raise PermissionError(reason)
        if event not in ("open", "os.listdir", "os.scandir") or not args or args[0] is None:
            return
        busy[0] = True
        try:
            writing = False
            if event == "open":
                mode, flags = (args[1] if len(args) > 1 else "r") or "r", args[2] if len(args) > 2 else 0
                writing = any(c in str(mode) for c in "wax+") or bool((flags or 0) & _WRITE_FLAGS)
            if not path_allowed(args[0], writing):
                raise PermissionError(f"the sandbox does not allow {'writing' if writing else 'reading'} {args[0]}")
        finally:
            busy[0] = False

    sys.addaudithook(hook)
    return "sockets, processes, ctypes and paths outside the allowlist"


def run_snippet(code: str) -> int:
    """Run like a REPL cell: statements, then the value of a final bare expression is printed."""
    filename = "<python_repl>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)  # tracebacks show the lines
    tree = ast.parse(code, filename, "exec")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    scope: dict[str, object] = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(tree, filename, "exec"), scope)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), filename, "eval"), scope)
        if value is not None:
            print(repr(value))
    return 0


def confine(cfg: dict, status_fd: int) -> dict[str, str]:
    """Apply the layers the config asks for; each entry says what held or why it did not."""
    layers: dict[str, str] = {}
    read_roots = tuple(cfg["read_paths"])
    write_roots = tuple(cfg["write_paths"])
    parent_alive: int | None = None
    if cfg.get("namespaces", True):
        try:
            layers["namespaces"] = enter_namespaces()
        except OSError as exc:
            layers["namespaces"] = f"unavailable: {exc}"
        else:
            parent_alive = become_pid_one(cfg, status_fd)
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if cfg.get("landlock", True):
        try:
            layers["landlock"] = apply_landlock(list(read_roots), list(write_roots), cfg.get("device_paths", []))
        except OSError as exc:
            layers["landlock"] = f"unavailable: {exc}"
    layers["rlimits"] = set_limits(cfg["memory_mb"], cfg["cpu_s"], cfg["file_mb"], cfg["open_files"])
    # after every credential change (they reset it): die with the process that started us
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_alive is not None:
        if select.select([parent_alive], [], [], 0)[0]:
            os._exit(137)
    elif os.getppid() != cfg["parent_pid"]:
        os._exit(137)
    if cfg.get("audit_hook", True):
        layers["audit_hook"] = install_audit_hook(read_roots + tuple(cfg.get("device_paths", [])), write_roots)
    return layers


def main() -> int:
    cfg = json.loads(sys.argv[1])
    status_fd = int(sys.argv[2])
    code = sys.stdin.read()
    os.chdir(cfg["write_paths"][0])
    layers = confine(cfg, status_fd)
    with os.fdopen(status_fd, "w") as status:
        status.write(json.dumps(layers))
    try:
        return run_snippet(code)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    except BaseException as exc:
        import traceback

        report = traceback.TracebackException.from_exception(exc)
        # the model should see its own code's frames, not this bootstrap's
        frames = [f for f in report.stack if f.filename != __file__]
        first = next((i for i, f in enumerate(frames) if f.filename == "<python_repl>"), len(frames))
        report.stack = traceback.StackSummary.from_list(frames[first:])
        sys.stderr.write("".join(report.format()))
        return 1


if __name__ == "__main__":
    sys.exit(main())
