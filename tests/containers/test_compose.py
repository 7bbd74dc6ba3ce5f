"""The compose quick start (compose.yaml) brought up with podman-compose, as a user would: a command
task and a tiny SFT run end to end through it, and the coordinator's state survives down and up."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.containers.conftest import podman, podman_env
from tests.harness import free_port, wait_for
from tests.prerequisites import missing

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ComposeStack:
    project: str
    env: dict[str, str]
    http: httpx.Client

    def compose(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        exe = shutil.which("podman-compose", path=str(Path(sys.executable).parent)) or shutil.which("podman-compose")
        if exe is None:
            missing("podman-compose is not installed (pip install podman-compose: make test installs it)")
        out = subprocess.run([str(exe), "-p", self.project, "-f", str(ROOT / "compose.yaml"), *args], cwd=ROOT,
                             env=self.env, capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, f"podman-compose {' '.join(args)}: {out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        return out

    def healthy(self) -> bool:
        try:
            return self.http.get("/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def up(self) -> None:
        self.compose("up", "-d")
        wait_for(self.healthy, 60, "the coordinator container to answer /health")

    def agent_container(self) -> str:
        out = podman("ps", "--filter", f"label=io.podman.compose.project={self.project}",
                     "--filter", "label=com.docker.compose.service=agent", "--format", "{{.Names}}")
        names = out.stdout.split()
        assert len(names) == 1, out.stdout
        return names[0]

    def wait_task(self, task_id: str, timeout: float) -> dict:
        def done() -> dict | None:
            task = self.http.get(f"/api/v1/tasks/{task_id}").json()
            return task if task["state"] in ("succeeded", "failed", "cancelled") else None

        return wait_for(done, timeout, f"task {task_id} to end", interval=0.5)


@pytest.fixture
def stack(container_images: dict[str, str]) -> Iterator[ComposeStack]:
    port = free_port()
    admin = secrets.token_hex(24)
    env = {**podman_env(), "MLOC_JOIN_TOKEN": secrets.token_hex(24), "MLOC_ADMIN_TOKEN": admin,
           "MLOC_PORT": str(port), "MLOC_COORDINATOR_IMAGE": container_images["coordinator"],
           "MLOC_AGENT_IMAGE": container_images["agent"], "MLOC_AGENT_NAME": "compose-agent"}
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {admin}"}, timeout=10)
    s = ComposeStack(f"mloct{uuid.uuid4().hex[:8]}", env, http)
    try:
        yield s
    finally:
        s.compose("down", "-v", "-t", "5")
        http.close()


def test_compose_runs_a_command_task_and_a_tiny_sft_and_keeps_its_state(stack: ComposeStack) -> None:
    stack.up()
    wait_for(lambda: any(a["name"] == "compose-agent" and a["connected"] for a in stack.http.get(
        "/api/v1/workers").json()["workers"]), 90, "the agent container to register")
    command = stack.http.post("/api/v1/tasks", json={
        "taskType": "command", "command": "cat /etc/os-release; id -u; echo compose-ok"}).json()
    done = stack.wait_task(command["id"], 60)
    assert done["state"] == "succeeded", done
    logs = "".join(c["data"] for c in stack.http.get(f"/api/v1/tasks/{command['id']}/logs").json()["chunks"])
    assert "compose-ok" in logs and "10001" in logs  # ran in the agent container, as its non-root user

    # a tiny model made inside the agent's volume (no hub here), then the README's LoRA SFT on it
    podman("exec", stack.agent_container(), "python3", "-m", "mloc_agent.tiny", "/var/lib/mloc/models/tiny",
           timeout=180)
    spec = (ROOT / "configs" / "cpu" / "sft_tiny.yaml").read_text().replace(
        "~/.mloc/agent/models/tiny", "/var/lib/mloc/models/tiny").replace("max_steps: 40", "max_steps: 6")
    sft = stack.http.post("/api/v1/tasks", content=spec, headers={"Content-Type": "application/yaml"}).json()
    done = stack.wait_task(sft["id"], 240)
    assert done["state"] == "succeeded", done
    assert done["result"]["global_step"] == 6
    names = {a["name"] for a in stack.http.get(f"/api/v1/tasks/{sft['id']}/artifacts").json()["artifacts"]}
    assert "adapter/adapter_model.safetensors" in names

    # down (volumes kept) and up again: the coordinator's SQLite in its volume still has both tasks
    stack.compose("down", "-t", "5")
    assert not stack.healthy()
    stack.up()
    again = stack.http.get(f"/api/v1/tasks/{sft['id']}").json()
    assert again["state"] == "succeeded" and again["result"]["global_step"] == 6
    assert stack.http.get(f"/api/v1/tasks/{command['id']}").json()["state"] == "succeeded"
