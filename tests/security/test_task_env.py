"""Issue 11, item 6: a task's env (and secrets, which land in the same environment) must not change how
an interpreter or loader behaves: on an agent with command tasks disabled, PYTHONWARNINGS naming a
module that opens BROWSER, with a shell helper variable, ran code as the agent. Refused at submit
(422 naming ``env.<NAME>``), and again on the agent; the task host runs in Python's isolated mode."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.harness import FINAL, Coordinator
from tests.security.users import user_client, user_view

INTERPRETER_ENV = ("PYTHONWARNINGS", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONBREAKPOINT",
                   "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "BROWSER", "BASH_ENV", "PERL5OPT", "HF_ENDPOINT")
NO_COMMAND = {"MLOC_DISABLED_TASK_TYPES": "command"}


def inference_task(env: dict[str, str] | None = None, secrets: dict[str, str] | None = None) -> dict[str, Any]:
    """An ML task whose process is the Python task host (its model does not exist: it fails after start)."""
    spec: dict[str, Any] = {"taskType": "inference", "resources": {"gpus": 0},
                            "model": {"source": {"type": "local", "identifier": "/nonexistent/model"}},
                            "hyperparameters": {"prompts": ["hello"], "max_new_tokens": 1},
                            "env": {"HF_HUB_OFFLINE": "1", **(env or {})}, "retry": {"max_attempts": 1}}
    if secrets:
        spec["secrets"] = secrets
    return spec


def exploit_env(marker: Path) -> dict[str, str]:
    """The issue's attack: warnings imports ``antigravity``, which opens a "browser": bash, whose
    BASH_ENV is expanded (command substitution) before it reads anything. It runs as the agent."""
    payload = f"$(id > '{marker}'; cat \"$MLOC_AGENT_DATA_DIR/agent.json\" > \"$MLOC_OUTPUT_DIR/loot.txt\")"
    return {"PYTHONWARNINGS": "all:0:antigravity.x:0:0", "BROWSER": "bash", "BASH_ENV": payload}


def test_submit_refuses_env_that_changes_how_an_interpreter_or_loader_behaves(coordinator: Coordinator) -> None:
    alice = user_client(coordinator, "alice")
    accepted = []
    for name in INTERPRETER_ENV:
        for field, spec in ((f"env.{name}", inference_task(env={name: "x"})),
                            (f"secrets.{name}", inference_task(secrets={name: "xxxxxxxx"}))):
            resp = alice.post("/api/v1/tasks", content=json.dumps(spec))
            if resp.status_code != 422:
                accepted.append(f"{field} ({resp.status_code})")
            else:
                assert resp.json()["error"]["field"] == field, resp.text
    assert not accepted, f"submit accepted variables that change how an interpreter or loader behaves: {accepted}"
    bulk = alice.post("/api/v1/tasks", content=json.dumps({"tasks": [inference_task(env={"LD_PRELOAD": "x"})]}))
    assert bulk.status_code == 422 and bulk.json()["error"]["field"] == "tasks[0].env.LD_PRELOAD", bulk.text
    ordinary = alice.post("/api/v1/tasks", content=json.dumps(inference_task(env={"OMP_NUM_THREADS": "2",
                                                                                 "MY_FLAG": "on"})))
    assert ordinary.status_code == 201, f"ordinary variables must still be accepted: {ordinary.text}"
    alice.close()


@pytest.mark.ml
def test_env_cannot_run_code_on_an_agent_with_command_disabled(coordinator: Coordinator, start_agent,
                                                               tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="the agent must offer an ML task type (make venv-ml)")
    agent = start_agent("no-shell", extra_env=NO_COMMAND)
    assert "command" not in agent.info()["task_types"] and "inference" in agent.info()["task_types"]
    alice = user_client(coordinator, "alice")
    marker = tmp_path / "code-ran"
    resp = alice.post("/api/v1/tasks", content=json.dumps(inference_task(env=exploit_env(marker))))
    if resp.status_code == 422:  # refused at submit: nothing reached the agent
        assert resp.json()["error"]["field"].startswith("env."), resp.text
    else:
        assert resp.status_code == 201, resp.text
        coordinator.wait_state(resp.json()["id"], FINAL, timeout=180)
        seen = user_view(alice, resp.json()["id"])
        credential = json.loads((agent.data_dir / "agent.json").read_text())["credential"]
        assert credential not in seen, "the task's env made the task host hand the agent's credential to the user"
    assert not marker.exists(), f"the task's env ran code on an agent with command disabled: {marker.read_text()}"
    alice.close()


@pytest.mark.ml
def test_the_agent_refuses_such_env_in_a_lease_too(coordinator: Coordinator, start_agent, tmp_path: Path) -> None:
    """A lease whose spec carries the attack, as a coordinator that does not check (an older version)
    would hand it out: written into the queued task's row while the coordinator is stopped."""
    pytest.importorskip("transformers", reason="the agent must offer an ML task type (make venv-ml)")
    alice = user_client(coordinator, "alice")
    resp = alice.post("/api/v1/tasks", content=json.dumps(inference_task()))
    assert resp.status_code == 201, resp.text
    task_id = resp.json()["id"]
    alice.close()
    marker = tmp_path / "code-ran"
    coordinator.proc.stop()
    con = sqlite3.connect(coordinator.data_dir / "mloc.db")
    try:
        (raw,) = con.execute("SELECT spec FROM tasks WHERE id=?", (task_id,)).fetchone()
        spec = json.loads(raw)
        spec["env"].update(exploit_env(marker))
        con.execute("UPDATE tasks SET spec=? WHERE id=?", (json.dumps(spec, sort_keys=True), task_id))
        con.commit()
    finally:
        con.close()
    coordinator.start()

    start_agent("no-shell", extra_env=NO_COMMAND)
    done = coordinator.wait_state(task_id, FINAL, timeout=180)
    assert not marker.exists(), f"the agent ran a task whose env runs code at interpreter start: {marker.read_text()}"
    assert done["state"] == "failed" and done["attempts"] <= 1, done
    assert any(name in (done.get("error") or "") for name in exploit_env(marker)), (
        f"the task should fail naming the refused variable: {done.get('error')!r}")
