"""``mloc demo``: a coordinator and a local agent on the embedded defaults (SQLite, artifacts on
local disk), a sample task run to the end with its logs, then — when the agent's ML stack is
installed — a real (tiny) LoRA fine-tune with a progress bar. Everything lives in one folder
and both processes are stopped at the end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

console = Console()
# the agent registers what builds the tiny model (its ``python -m`` module), so this side never names it
DEMO_ENTRY_POINT_GROUP = "mloc.demo"
HELLO = """taskType: command
name: hello-fleet
command: |
  echo "hello from task $MLOC_TASK_ID on $(hostname)"
  for i in 1 2 3 4 5; do
    echo "step $i/5"
    echo "{\\"step\\": $i, \\"total\\": 5, \\"message\\": \\"counting\\"}" > "$MLOC_PROGRESS"
    sleep 0.3
  done
  echo "result" > "$MLOC_OUTPUT_DIR/hello.txt"
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "mloc_shared.cli.main", *args], env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def _wait(predicate, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"demo: timed out waiting for {what}")


def _follow(http: httpx.Client, task_id: str) -> dict[str, Any]:
    with Progress(TextColumn("  [bold]{task.fields[state]:<9}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TimeRemainingColumn(), TextColumn("{task.fields[extra]}"), console=console) as bar:
        row = bar.add_task("task", total=100, state="queued", extra="")
        while True:
            task = http.get(f"/api/v1/tasks/{task_id}").json()
            p = task.get("progress") or {}
            pct = p.get("percent") or (100.0 * p["step"] / p["total"] if p.get("step") and p.get("total") else 0)
            extra = " ".join(f"{k} {p[k]:.4g}" for k in ("loss", "learning_rate") if p.get(k) is not None)
            bar.update(row, completed=100 if task["state"] == "succeeded" else pct, state=task["state"],
                       extra=extra or p.get("message") or "")
            if task["state"] in ("succeeded", "failed", "cancelled"):
                return task
            time.sleep(0.3)


def _show(http: httpx.Client, task: dict[str, Any]) -> None:
    colour = "green" if task["state"] == "succeeded" else "red"
    console.print(f"  task {task['id']} [{colour}]{task['state']}[/{colour}] on agent {task.get('agent')}"
                  + (f": {task['error']}" if task.get("error") else ""))
    console.print("  [dim]logs:[/dim]")
    logs = http.get(f"/api/v1/tasks/{task['id']}/logs").json()["chunks"]
    for line in "".join(c["data"] for c in logs).splitlines()[-15:]:
        console.print(f"    {line}", highlight=False, markup=False)
    arts = http.get(f"/api/v1/tasks/{task['id']}/artifacts").json()["artifacts"]
    if arts:
        console.print("  [dim]artifacts:[/dim] " + ", ".join(f"{a['name']} ({a['size']} B)" for a in arts))


def _fine_tune_spec(model_dir: Path) -> dict[str, Any]:
    rows = [{"messages": [{"role": "user", "content": f"what is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(1, 41)]
    return {
        "taskType": "sft", "name": "tiny-lora-demo",
        "model": {"source": {"type": "local", "identifier": str(model_dir)},
                  "adapter": {"type": "lora", "r": 8, "lora_alpha": 16}},
        "dataset": {"rows": rows},
        "hyperparameters": {"max_steps": 40, "learning_rate": 5e-3, "per_device_train_batch_size": 4,
                            "logging_steps": 2, "save_steps": 20},
        "resources": {"gpus": 0},
    }


def run(workdir: str | None = None) -> int:
    root = Path(workdir or tempfile.mkdtemp(prefix="mloc-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    port = _port()
    url = f"http://127.0.0.1:{port}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLOC_")}
    console.print(f"[bold]MLOC demo[/bold] in {root}")
    coord = _start(["start", "--node-type", "orchestrator"], {
        **base, "MLOC_PORT": str(port), "MLOC_HOST": "127.0.0.1", "MLOC_DATA_DIR": str(root / "coordinator"),
        "MLOC_HEARTBEAT_S": "1", "MLOC_LEASE_TTL_S": "10"}, root / "coordinator.log")
    agent = None
    try:
        http = httpx.Client(base_url=url, timeout=30)
        _wait(lambda: http.get("/health").status_code == 200, 30, "the coordinator")
        console.print(f"1. coordinator up at {url} (SQLite + artifacts in {root / 'coordinator'})")
        join = (root / "coordinator" / "join.token").read_text().strip()
        # the admin token the first start wrote (0600): loopback alone is no admin
        admin = (root / "coordinator" / "admin.token").read_text().strip()
        http.headers["Authorization"] = f"Bearer {admin}"
        agent = _start(["start", "--node-type", "worker"], {
            **base, "MLOC_COORDINATOR_URL": url, "MLOC_JOIN_TOKEN": join, "MLOC_AGENT_NAME": "local-agent",
            "MLOC_DATA_DIR": str(root / "agent")}, root / "agent.log")
        workers = _wait(lambda: http.get("/api/v1/workers").json()["workers"], 30, "the agent")
        w = workers[0]
        gpus = ", ".join(g["name"] for g in w["gpus"]) or "no GPU (CPU only)"
        console.print(f"2. agent '{w['name']}' joined: {gpus}; runs {', '.join(w['task_types'])}")
        console.print("3. submitting a command task (as `curl --data-binary @hello.yaml` would)")
        task = http.post("/api/v1/tasks", content=HELLO).json()
        _show(http, _follow(http, task["id"]))
        tiny_model = entry_points(group=DEMO_ENTRY_POINT_GROUP, name="tiny_model")
        if "sft" in w["task_types"] and tiny_model:
            console.print("4. a real fine-tune: LoRA on a tiny Llama-style model built locally")
            model_dir = root / "agent" / "models" / "tiny-model"  # the agent's models/ folder: tasks may read it
            # run as a module in a child: building the model imports torch, this process never does
            subprocess.run([sys.executable, "-m", next(iter(tiny_model)).module, str(model_dir)], check=True,
                           stdout=subprocess.DEVNULL)
            task = http.post("/api/v1/tasks", json=_fine_tune_spec(model_dir)).json()
            if "id" not in task:
                console.print(f"  [red]submit refused:[/red] {task}")
                return 1
            _show(http, _follow(http, task["id"]))
        else:
            console.print("4. (skipped the fine-tune: this agent has no 'sft' module; `make demo` installs it)")
        console.print(f"done. Logs of both processes are in {root}.")
        return 0
    finally:
        for proc in (agent, coord):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
