"""Pipelines and sweeps through a real coordinator, a real agent and the mloc CLI (command tasks)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import Coordinator, base_env, wait_for

pytestmark = pytest.mark.timeout(120)
CLI = [sys.executable, "-m", "mloc_shared.cli.main"]

PIPELINE = """
name: fails-early
tasks:
  prep:
    taskType: command
    command: "echo preparing; exit 3"
    retry: {max_attempts: 1}
  train:
    taskType: command
    command: "echo never runs"
    depends_on: [prep]
  report:
    taskType: command
    command: "echo reporting after prep ended"
    depends_on: [{task: prep, condition: finished}]
  on_failure:
    taskType: command
    command: "echo cleaning up"
    depends_on: [{task: prep, condition: failed}]
"""

# the command reports a loss from its learning rate, so the roll-up has a figure per child
SWEEP = """
taskType: command
name: lr
command: 'echo "idx=$MLOC_ARRAY_INDEX/$MLOC_ARRAY_COUNT lr=$LR"; echo "{\\"loss\\": $LR}" > "$MLOC_PROGRESS"; sleep 0.5'
sweep:
  list:
    - {hyperparameters.learning_rate: 1.0e-4, env.LR: "1"}
    - {hyperparameters.learning_rate: 2.0e-4, env.LR: "2"}
    - {hyperparameters.learning_rate: 5.0e-4, env.LR: "5"}
  max_parallel: 1
"""


def cli(coordinator: Coordinator, *args: str) -> subprocess.CompletedProcess[str]:
    env = base_env(MLOC_COORDINATOR_URL=coordinator.url, MLOC_TOKEN=coordinator.admin_token, COLUMNS="250")
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=90)


def test_a_pipeline_file_submitted_once_follows_its_steps_to_their_ends(coordinator: Coordinator, start_agent,
                                                                         tmp_path: Path) -> None:
    start_agent("box", max_tasks=2)
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE)
    out = cli(coordinator, "submit", str(path), "--follow")
    assert out.returncode == 1, out.stdout + out.stderr  # not every step succeeded
    pipeline_id = out.stdout.split("submitted pipeline ")[1].split()[0]
    for step, state in (("prep", "failed"), ("train", "cancelled"), ("report", "succeeded"),
                        ("on_failure", "succeeded")):
        assert f"{step:<24} {state}" in out.stdout, out.stdout
    record = coordinator.http.get(f"/api/v1/pipelines/{pipeline_id}").json()
    assert record["state"] == "failed"
    steps = {s["name"]: s for s in record["steps"]}
    assert steps["train"]["error"] == f"task {steps['prep']['task_id']} (prep) failed; this task needed it to succeed"
    assert "reporting after prep ended" in coordinator.logs(steps["report"]["task_id"])
    assert coordinator.task(steps["train"]["task_id"])["attempts"] == 0  # never leased


def test_cancelling_a_pipeline_stops_its_running_and_blocked_steps(coordinator: Coordinator, start_agent,
                                                                   tmp_path: Path) -> None:
    start_agent("box")
    doc = ("tasks:\n  long: {taskType: command, command: 'sleep 60'}\n"
           "  after: {taskType: command, command: 'true', depends_on: [long]}\n")
    resp = coordinator.http.post("/api/v1/pipelines", content=doc)
    assert resp.status_code == 201, resp.text
    record = resp.json()
    long_id = record["steps"][0]["task_id"]
    coordinator.wait_state(long_id, "running")
    queue = coordinator.http.get("/api/v1/queue").json()
    assert (queue["total"], queue["blocked"]) == (0, 1)  # the blocked step counts, but is not in the queue
    out = cli(coordinator, "pipeline", record["id"], "--cancel")
    assert out.returncode == 0 and "cancelled 1, stopping 1" in out.stdout, out.stdout + out.stderr
    coordinator.wait_state(long_id, "cancelled", timeout=30)
    done = coordinator.http.get(f"/api/v1/pipelines/{record['id']}").json()
    assert done["state"] == "cancelled" and {s["state"] for s in done["steps"]} == {"cancelled"}


def test_a_sweep_gives_each_child_its_values_and_index_and_max_parallel_runs_one_at_a_time(
        coordinator: Coordinator, start_agent) -> None:
    start_agent("box", max_tasks=3)  # room for all three: only max_parallel holds them back
    resp = coordinator.http.post("/api/v1/pipelines", content=SWEEP)
    assert resp.status_code == 201, resp.text
    sweep = resp.json()
    assert sweep["kind"] == "sweep" and len(sweep["steps"]) == 3

    def ended():
        r = coordinator.http.get(f"/api/v1/pipelines/{sweep['id']}").json()
        return r if r["state"] in ("succeeded", "failed", "cancelled") else None

    done = wait_for(ended, 60, "the sweep to end")
    assert done["state"] == "succeeded"
    spans = []
    for i, step in enumerate(done["steps"]):
        assert f"idx={i}/3 lr={step['values']['env.LR']}" in coordinator.logs(step["task_id"])
        task = coordinator.task(step["task_id"])
        assert task["spec"]["hyperparameters"]["learning_rate"] == step["values"]["hyperparameters.learning_rate"]
        (attempt,) = task["attempt_history"]
        spans.append((attempt["started_at"], attempt["ended_at"]))
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans  # never two at once
    rollup = [(r["values"]["hyperparameters.learning_rate"], r["final"].get("loss")) for r in done["rollup"]]
    assert rollup == [(1e-4, 1), (2e-4, 2), (5e-4, 5)]
    refused = coordinator.http.post("/api/v1/pipelines", content=SWEEP.replace("env.LR", "nosuch.LR"))
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "sweep.list.0.nosuch.LR"
    assert coordinator.http.post("/api/v1/tasks", content=SWEEP).status_code == 422  # said where to send it
    unknown = coordinator.http.post("/api/v1/tasks", content="taskType: command\ncommand: 'true'\n"
                                                             "depends_on:\n  - no-such-task\n")
    assert unknown.status_code == 422, unknown.text
    assert (unknown.json()["error"]["field"], unknown.json()["error"]["line"]) == ("depends_on.0", 4)
    in_step = coordinator.http.post("/api/v1/pipelines", content=PIPELINE.replace("[prep]", "[prep, nope]"))
    assert in_step.status_code == 422, in_step.text
    assert (in_step.json()["error"]["field"], in_step.json()["error"]["line"]) == ("tasks.train.depends_on.1", 11)
