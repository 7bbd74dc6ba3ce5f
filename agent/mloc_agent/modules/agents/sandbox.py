"""Run untrusted Python (what an LLM wrote) in a confined child process.

The code an agent's model writes is attacker-controlled as soon as the model reads anything an
attacker wrote (a web page, a document). So ``python_repl`` never runs it in the task process:
each call starts a fresh interpreter in a fresh temp dir, with a scrubbed environment, in its own
session (killed as a group on timeout), and sandbox_boot.py confines it with user, network and
PID namespaces, Landlock, rlimits and an audit hook before it compiles the snippet. The threat model
and what each layer does and does not stop are in docs/agent-tasks.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BOOT = Path(__file__).with_name("sandbox_boot.py")
SYSTEM_READ_PATHS = (
    "/usr", "/lib", "/lib64", "/lib32", "/bin", "/etc/ld.so.cache", "/etc/localtime",
    "/proc/cpuinfo", "/proc/meminfo", "/sys/devices/system/cpu",
)
DEVICE_PATHS = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")
KEEP_ENV = ("LANG", "LC_ALL", "TZ", "MLOC_AGENT_INSTANCE")  # the last one lets the agent's warden find us


@dataclass
class SandboxPolicy:
    """Limits for one snippet. The layer switches exist for tests that prove each layer alone."""

    timeout_s: float = 30.0
    memory_mb: int = 512
    file_mb: int = 64
    open_files: int = 256
    max_output_chars: int = 20_000
    protected_paths: list[Path] = field(default_factory=list)  # never readable, even inside an allowed tree
    namespaces: bool = True
    landlock: bool = True
    audit_hook: bool = True
    python: str = sys.executable


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    duration_s: float
    layers: dict[str, str]
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def text(self) -> str:
        """What the model sees: output, errors, and the reason when the sandbox stopped the code."""
        parts = [self.stdout.rstrip("\n")] if self.stdout.strip() else []
        if self.stderr.strip():
            parts.append(f"[stderr]\n{self.stderr.rstrip()}")
        if self.timed_out:
            parts.append("[the sandbox stopped the code: time limit reached]")
        elif self.exit_code is not None and self.exit_code < 0:
            parts.append(f"[the sandbox stopped the code: signal {-self.exit_code} ({_signal_name(-self.exit_code)})]")
        elif self.exit_code:
            parts.append(f"[exit code {self.exit_code}]")
        return "\n".join(parts) if parts else "[no output; print() what you want to see]"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def read_paths(protected: list[Path]) -> tuple[list[str], list[str]]:
    """The interpreter's trees plus system libraries, minus any tree that holds a protected path."""
    candidates: list[str] = list(SYSTEM_READ_PATHS)
    candidates += [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    candidates += [p for p in sysconfig.get_paths().values() if p]
    candidates += [p for p in sys.path if p]
    keep: list[str] = []
    notes: list[str] = []
    resolved_protected = [p.resolve() for p in protected]
    for raw in candidates:
        path = Path(raw).resolve()
        if not path.exists() or str(path) in keep or str(path) == "/":
            continue
        clash = next((p for p in resolved_protected if _under(p, path)), None)
        if clash is not None:
            notes.append(f"{path} is not readable in the sandbox: it contains protected {clash}")
            continue
        keep.append(str(path))
    return keep, notes


def run_python(code: str, policy: SandboxPolicy) -> SandboxResult:
    """Run ``code`` confined; never raises for anything the code does."""
    base = Path(tempfile.gettempdir()).resolve()
    if any(_under(base, p.resolve()) for p in policy.protected_paths):
        base = Path("/tmp")
    workdir = Path(tempfile.mkdtemp(prefix="mloc-sbx-", dir=base))
    reads, notes = read_paths(policy.protected_paths)
    cfg = {
        "read_paths": reads, "write_paths": [str(workdir)], "device_paths": list(DEVICE_PATHS),
        "namespaces": policy.namespaces, "landlock": policy.landlock,
        "audit_hook": policy.audit_hook, "memory_mb": policy.memory_mb,
        "cpu_s": max(1, int(policy.timeout_s + 1)), "file_mb": policy.file_mb,
        "open_files": policy.open_files, "parent_pid": os.getpid(),
    }
    env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
    env.update({"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir),
                "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg",
                "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    status_r, status_w = os.pipe()
    started = time.monotonic()
    timed_out = False
    try:
        with open(workdir / ".stdout", "w+b") as out, open(workdir / ".stderr", "w+b") as err:
            proc = subprocess.Popen(
                [policy.python, "-I", str(BOOT), json.dumps(cfg), str(status_w)],
                stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=workdir, env=env,
                start_new_session=True, pass_fds=(status_w,),
            )
            os.close(status_w)
            status_w = -1
            try:
                proc.communicate(code.encode(), timeout=policy.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(proc.pid)  # the snippet's own children too, finished or not
            proc.wait()
            stdout, stderr = _read(out, policy.max_output_chars), _read(err, policy.max_output_chars)
        with os.fdopen(status_r, "r") as status:
            status_r = -1
            raw = status.read()
        layers = json.loads(raw) if raw else {"error": "the sandbox did not start (see stderr)"}
        return SandboxResult(stdout, stderr, proc.returncode, timed_out, round(time.monotonic() - started, 3),
                             layers, notes)
    finally:
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _read(fh, limit: int) -> str:
    fh.flush()
    fh.seek(0)
    data = fh.read(limit * 4 + 1).decode("utf-8", errors="replace")
    if len(data) > limit:
        return data[:limit] + f"\n[output cut at {limit} characters]"
    return data


def layers_missing(result: SandboxResult) -> list[str]:
    """Layers that were asked for but could not be applied on this host (for warnings)."""
    return [name for name, state in result.layers.items() if state.startswith("unavailable")]
