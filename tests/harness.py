"""Real processes for tests: a coordinator and agents started as the user would start them
(``mloc start --node-type ...``), each in its own temp dir, stopped by PID at the end."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

FINAL = {"succeeded", "failed", "cancelled"}
MLOC = [sys.executable, "-m", "mloc_shared.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Proc:
    """A child process with its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None,
                 prefix: list[str] | None = None) -> None:
        self.argv, self.env, self.log_path, self.cwd = argv, env, log_path, cwd
        self.prefix = prefix or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (open for the life of the process)
        self.proc = subprocess.Popen(self.prefix + self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.cwd)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOC_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Coordinator:
    """A real coordinator process; fast timings so lease expiry takes seconds in tests."""

    def __init__(self, root: Path, *, host: str = "127.0.0.1", port: int | None = None,
                 heartbeat_s: float = 0.5, lease_ttl_s: float = 4.0, poll_hold_s: float = 10.0,
                 restart_grace_s: float = 3.0, scheme: str = "http", extra_env: dict[str, str] | None = None,
                 prefix: list[str] | None = None) -> None:
        self.root = root
        self.data_dir = root / "coordinator"
        self.host = host
        self.port = port or free_port()
        self.scheme = scheme
        self.url = f"{scheme}://{'127.0.0.1' if host in ('0.0.0.0', '127.0.0.1') else host}:{self.port}"
        self.env = base_env(
            MLOC_DATA_DIR=str(self.data_dir), MLOC_HOST=host, MLOC_PORT=str(self.port), MLOC_LOG_LEVEL="INFO",
            MLOC_HEARTBEAT_S=str(heartbeat_s), MLOC_LEASE_TTL_S=str(lease_ttl_s), MLOC_POLL_HOLD_S=str(poll_hold_s),
            MLOC_RESTART_GRACE_S=str(restart_grace_s), MLOC_JOIN_TOKEN="test-join-token-0123456789",
            MLOC_ADMIN_TOKEN="test-admin-token-0123456789",
        )
        self.env.update(extra_env or {})
        self.join_token = self.env["MLOC_JOIN_TOKEN"]
        self.admin_token = self.env["MLOC_ADMIN_TOKEN"]
        self.prefix = prefix
        self.proc: Proc | None = None
        self.http = httpx.Client(base_url=self.url, timeout=30, verify=False,
                                 headers={"Authorization": f"Bearer {self.admin_token}"})

    def start(self, wait: bool = True) -> Coordinator:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = Proc([*MLOC, "start", "--node-type", "orchestrator"], self.env, self.root / "coordinator.log",
                         prefix=self.prefix)
        self.proc.start()
        if wait:
            wait_for(self._healthy, 30, "coordinator /health")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and not self.proc.alive():
            raise AssertionError(f"coordinator exited:\n{self.proc.output()[-3000:]}")
        try:
            return self.http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill9()

    def restart(self) -> None:
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
        self.http.close()

    # -- API helpers --------------------------------------------------------------------------

    def submit(self, spec: dict[str, Any] | str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        body = spec if isinstance(spec, str) else json.dumps(spec)
        resp = self.http.post("/api/v1/tasks", content=body, headers=headers or {})
        assert resp.status_code in (200, 201), resp.text
        return resp.json()

    def task(self, task_id: str) -> dict[str, Any]:
        resp = self.http.get(f"/api/v1/tasks/{task_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def wait_state(self, task_id: str, states: set[str] | str, timeout: float = 30) -> dict[str, Any]:
        wanted = {states} if isinstance(states, str) else states

        def check():
            t = self.task(task_id)
            return t if t["state"] in wanted else None

        return wait_for(check, timeout, f"task {task_id} in {wanted}")

    def workers(self) -> list[dict[str, Any]]:
        return self.http.get("/api/v1/workers").json()["workers"]

    def logs(self, task_id: str, stream: str | None = None) -> str:
        data = self.http.get(f"/api/v1/tasks/{task_id}/logs").json()
        return "".join(c["data"] for c in data["chunks"] if stream is None or c["stream"] == stream)


class Agent:
    """A real agent process."""

    def __init__(self, coordinator: Coordinator, name: str, *, gpus: list[dict[str, Any]] | None = None,
                 labels: str = "", max_tasks: int | None = None, extra_env: dict[str, str] | None = None,
                 coordinator_url: str | None = None, prefix: list[str] | None = None,
                 python: str | None = None) -> None:
        self.coordinator = coordinator
        self.name = name
        self.data_dir = coordinator.root / f"agent-{name}"
        self.env = base_env(
            MLOC_COORDINATOR_URL=coordinator_url or coordinator.url, MLOC_JOIN_TOKEN=coordinator.join_token,
            MLOC_AGENT_NAME=name, MLOC_DATA_DIR=str(self.data_dir), MLOC_LOG_LEVEL="INFO",
            MLOC_CANCEL_GRACE_S="3", MLOC_LOG_FLUSH_S="0.2",
            # a test opts in (extra_env): otherwise every agent would build a template (imports) in the background
            MLOC_WARM_RUNTIMES="false",
        )
        if gpus is not None:
            self.env["MLOC_DECLARED_GPUS"] = json.dumps(gpus)
        if labels:
            self.env["MLOC_AGENT_LABELS"] = labels
        if max_tasks:
            self.env["MLOC_MAX_TASKS"] = str(max_tasks)
        self.env.update(extra_env or {})
        self.prefix = prefix
        self.python = python
        self.proc: Proc | None = None

    def start(self, wait: bool = True) -> Agent:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [self.python or sys.executable, "-m", "mloc_shared.cli.main", "start", "--node-type", "worker"]
        self.proc = Proc(argv, self.env, self.coordinator.root / f"agent-{self.name}.log", prefix=self.prefix)
        self.proc.start()
        if wait:
            wait_for(self.connected, 30, f"agent {self.name} connected")
        return self

    def info(self) -> dict[str, Any] | None:
        if self.proc is not None and not self.proc.alive():
            raise AssertionError(f"agent {self.name} exited:\n{self.proc.output()[-3000:]}")
        for w in self.coordinator.workers():
            if w["name"] == self.name:
                return w
        return None

    def connected(self) -> bool:
        info = self.info()
        return bool(info and info["connected"])

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill9()

    def stop(self, timeout: float = 30) -> int | None:
        return self.proc.stop(timeout) if self.proc is not None else None
