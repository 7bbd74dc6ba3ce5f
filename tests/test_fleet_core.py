"""The fleet core, end to end through real processes: submission, matching, leases, faults."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import A100, README_SFT_YAML, RTX4090
from tests.harness import FINAL, Agent, Coordinator, wait_for


def curl(coord: Coordinator, *args: str) -> tuple[int, dict]:
    # the README's form: loopback is no admin, so curl sends an admin token
    auth = f"Authorization: Bearer {coord.admin_token}"
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "-X", "POST", f"{coord.url}/api/v1/tasks",
                          "-H", auth, *args],
                         capture_output=True, text=True, check=True).stdout
    body, _, code = out.rpartition("\n")
    return int(code), json.loads(body)


def test_readme_curl_submissions(coordinator: Coordinator, start_agent, tmp_path: Path) -> None:
    start_agent("cpu-box", extra_env={"MLOC_DISABLED_TASK_TYPES": "command,sft"})
    yaml_file = tmp_path / "my_task.yaml"
    yaml_file.write_text(README_SFT_YAML)
    json_file = tmp_path / "my_task.json"
    json_file.write_text(json.dumps({"taskType": "command", "command": "echo hi"}, indent=2))

    # the original README's command with a JSON file just works
    code, body = curl(coordinator, "-H", "Content-Type: application/json", "-d", f"@{json_file}")
    assert code == 201 and body["task_type"] == "command" and body["state"] == "queued"

    # --data-binary keeps the YAML's line breaks: accepted, whatever the Content-Type says
    code, body = curl(coordinator, "-H", "Content-Type: application/json", "--data-binary", f"@{yaml_file}")
    assert code == 201, body
    assert body["spec"]["model"]["adapter"] == {"type": "qlora", "r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
    assert "no registered agent runs task type 'sft'" in body["pending_reason"]
    assert body["state"] == "queued"

    # -d strips the line breaks: refused with the cause and the fix, and nothing is stored
    before = coordinator.http.get("/api/v1/tasks").json()["total"]
    code, body = curl(coordinator, "-H", "Content-Type: application/json", "-d", f"@{yaml_file}")
    assert code == 400
    assert "single line" in body["error"]["message"] and "--data-binary" in body["error"]["hint"]
    assert coordinator.http.get("/api/v1/tasks").json()["total"] == before


def test_bad_yaml_names_the_line_and_field(coordinator: Coordinator) -> None:
    resp = coordinator.http.post("/api/v1/tasks", content="taskType: command\ncommand: [unclosed\n")
    assert resp.status_code == 400 and resp.json()["error"]["line"] == 3
    resp = coordinator.http.post("/api/v1/tasks", content="taskType: command\ncommand: x\nresources:\n  gpus: lots\n")
    err = resp.json()["error"]
    assert resp.status_code == 422 and err["field"] == "resources.gpus" and err["line"] == 4
    resp = coordinator.http.post("/api/v1/tasks", content="taskType: command\ncomand: x\n")
    assert resp.status_code == 422 and resp.json()["error"]["field"] in ("comand", "command")


def test_idempotency_key_makes_retries_safe(coordinator: Coordinator) -> None:
    spec = {"taskType": "command", "command": "true"}
    first = coordinator.http.post("/api/v1/tasks", json=spec, headers={"Idempotency-Key": "k1"})
    again = coordinator.http.post("/api/v1/tasks", json=spec, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    other = coordinator.http.post("/api/v1/tasks", json={**spec, "name": "x"}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 409


def test_matching_respects_gpu_memory(coordinator: Coordinator, start_agent) -> None:
    small = start_agent("small", gpus=[RTX4090])
    task = coordinator.submit({"taskType": "command", "command": "echo big",
                               "resources": {"gpus": 1, "gpu_memory_gb": 80}})
    fits_24 = coordinator.submit({"taskType": "command", "command": "echo small",
                                  "resources": {"gpus": 1, "gpu_memory_gb": 24}})
    assert coordinator.wait_state(fits_24["id"], "succeeded")["agent"] == "small"
    queued = coordinator.task(task["id"])
    assert queued["state"] == "queued" and "23.99" not in queued["pending_reason"]
    assert "small" in queued["pending_reason"] and "80" in queued["pending_reason"]
    start_agent("big", gpus=[A100])
    done = coordinator.wait_state(task["id"], "succeeded")
    assert done["agent"] == "big"
    assert small.info()["leases"] == []


def test_two_tasks_run_at_once_on_disjoint_gpus(coordinator: Coordinator, start_agent, tmp_path: Path) -> None:
    start_agent("duo", gpus=[A100, A100])
    marker = tmp_path / "seen"
    cmd = f'echo "$CUDA_VISIBLE_DEVICES" >> {marker}; sleep 2'
    ids = [coordinator.submit({"taskType": "command", "command": cmd, "resources": {"gpus": 1}})["id"]
           for _ in range(2)]
    wait_for(lambda: all(coordinator.task(i)["state"] == "running" for i in ids), 10, "both running")
    leases = {tuple(coordinator.task(i)["lease"]["gpus"]) for i in ids}
    assert leases == {(0,), (1,)}
    for i in ids:
        coordinator.wait_state(i, "succeeded")
    assert sorted(marker.read_text().split()) == ["0", "1"]


def test_idle_agent_gets_new_task_long_before_poll_hold(coordinator: Coordinator, start_agent) -> None:
    start_agent("idle")
    time.sleep(1.0)  # the agent's poll is now held (hold is 10 s)
    t0 = time.monotonic()
    task = coordinator.submit({"taskType": "command", "command": "true"})
    wait_for(lambda: coordinator.task(task["id"])["state"] != "queued", 5, "task leased", interval=0.005)
    assert time.monotonic() - t0 < 1.0


def test_killed_agent_task_is_requeued_and_finishes_elsewhere(coordinator: Coordinator, start_agent) -> None:
    doomed = start_agent("doomed")
    task = coordinator.submit({"taskType": "command", "command": "sleep 4; echo finished",
                               "retry": {"max_attempts": 3, "backoff_s": 0}})
    running = coordinator.wait_state(task["id"], "running")
    assert running["lease"]["agent"] == "doomed"
    doomed.kill9()
    start_agent("rescuer")
    done = coordinator.wait_state(task["id"], "succeeded", timeout=40)
    assert done["agent"] == "rescuer" and done["attempts"] >= 2, done["attempt_history"]
    history = done["attempt_history"]
    assert history[0]["outcome"] == "lost" and "doomed" in history[0]["error"]
    assert history[-1]["outcome"] == "succeeded" and history[-1]["agent"] == "rescuer"
    assert "finished" in coordinator.logs(task["id"])


def test_stale_epoch_is_refused(coordinator: Coordinator, start_agent) -> None:
    agent = start_agent("fenced")
    task = coordinator.submit({"taskType": "command", "command": "sleep 3"})
    running = coordinator.wait_state(task["id"], "running")
    state = json.loads((agent.data_dir / "agent.json").read_text())
    headers = {"Authorization": f"Bearer {state['credential']}", "X-MLOC-Protocol": "1"}
    epoch = running["lease"]["epoch"]
    stale = coordinator.http.post(f"/api/v1/leases/{task['id']}/complete", headers=headers,
                                  json={"epoch": epoch - 1, "outcome": "succeeded"})
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "lease_lost"
    beat = coordinator.http.post(f"/api/v1/leases/{task['id']}/heartbeat", headers=headers, json={"epoch": epoch + 5})
    assert beat.status_code == 409
    assert coordinator.wait_state(task["id"], "succeeded")["attempts"] == 1


def test_cancel_stops_the_running_process(coordinator: Coordinator, start_agent, tmp_path: Path) -> None:
    start_agent("worker")
    pidfile = tmp_path / "pid"
    task = coordinator.submit({"taskType": "command", "command": f"echo $$ > {pidfile}; exec sleep 60"})
    coordinator.wait_state(task["id"], "running")
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "pid file"))
    resp = coordinator.http.post(f"/api/v1/tasks/{task['id']}/cancel")
    assert resp.status_code == 200 and resp.json()["state"] == "cancelling"
    done = coordinator.wait_state(task["id"], "cancelled", timeout=15)
    assert done["cancel_requested"]
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5, "process gone")
    again = coordinator.http.post(f"/api/v1/tasks/{task['id']}/cancel")
    assert again.status_code == 409  # finished states are final


def test_coordinator_kill9_mid_run_loses_nothing_runs_nothing_twice(tmp_path: Path) -> None:
    coord = Coordinator(tmp_path, restart_grace_s=10).start()
    agents = []
    try:
        ledger = tmp_path / "ledger"
        for name in ("r1", "r2"):
            agents.append(Agent(coord, name, max_tasks=4).start())
        ids = [coord.submit({"taskType": "command", "command": f"sleep 0.3; echo {i} >> {ledger}"})["id"]
               for i in range(30)]
        wait_for(lambda: ledger.exists() and len(ledger.read_text().split()) >= 5, 20, "some tasks done")
        coord.kill9()
        time.sleep(1.0)
        coord.restart()
        for i in ids:
            assert coord.wait_state(i, {"succeeded", "failed", "cancelled"}, timeout=60)["state"] == "succeeded"
        runs = ledger.read_text().split()
        assert sorted(runs, key=int) == [str(i) for i in range(30)]  # each exactly once
    finally:
        for a in agents:
            a.stop()
        coord.stop()


def test_agent_sigterm_drains(coordinator: Coordinator, start_agent) -> None:
    agent = start_agent("drainer")
    task = coordinator.submit({"taskType": "command", "command": "sleep 1.5; echo drained-ok"})
    coordinator.wait_state(task["id"], "running")
    queued_after = None
    agent.proc.signal(15)
    time.sleep(0.3)
    queued_after = coordinator.submit({"taskType": "command", "command": "true"})
    assert agent.proc.proc.wait(20) == 0
    assert coordinator.task(task["id"])["state"] == "succeeded"
    assert "drained-ok" in coordinator.logs(task["id"])
    assert coordinator.task(queued_after["id"])["state"] == "queued"


def test_logs_stream_in_order_with_stderr(coordinator: Coordinator, start_agent) -> None:
    start_agent("logger")
    task = coordinator.submit({"taskType": "command", "command": "for i in 1 2 3; do echo out$i; echo err$i >&2; done"})
    coordinator.wait_state(task["id"], "succeeded")
    chunks = coordinator.http.get(f"/api/v1/tasks/{task['id']}/logs").json()["chunks"]
    out = "".join(c["data"] for c in chunks if c["stream"] == "stdout")
    err = "".join(c["data"] for c in chunks if c["stream"] == "stderr")
    assert out == "out1\nout2\nout3\n" and err == "err1\nerr2\nerr3\n"
    with coordinator.http.stream("GET", f"/api/v1/tasks/{task['id']}/logs?follow=1", timeout=10) as resp:
        assert "out3" in resp.read().decode()


def test_task_processes_die_with_a_killed_agent(coordinator: Coordinator, start_agent, tmp_path: Path) -> None:
    agent = start_agent("mortal")
    pids = tmp_path / "pids"
    # a shell that starts a grandchild in the background: both must go when the agent is killed
    cmd = f"sleep 300 & echo $! >> {pids}; echo $$ >> {pids}; wait"
    task = coordinator.submit({"taskType": "command", "command": cmd})
    coordinator.wait_state(task["id"], "running")
    found = wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2 and pids.read_text().split(), 10,
                     "task pids")
    assert all(os.path.exists(f"/proc/{p}") for p in found)
    agent.kill9()
    wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in found), 10, "task processes gone")


def test_a_process_that_escapes_the_group_does_not_hold_the_task_open(
        coordinator: Coordinator, start_agent, tmp_path: Path) -> None:
    """A grandchild in its own session outlives the group kill and keeps the task's stdout open:
    the task still finishes (a few seconds after its exit) and its log says why output stopped."""
    start_agent("escapee")
    pid_file = tmp_path / "escaped.pid"
    task = coordinator.submit({"taskType": "command",
                               "command": f"setsid sh -c 'echo $$ > {pid_file}; exec sleep 30' & "
                                          f"while [ ! -s {pid_file} ]; do sleep 0.05; done; echo started"})
    t0 = time.monotonic()
    done = coordinator.wait_state(task["id"], FINAL, timeout=20)
    try:
        assert done["state"] == "succeeded", done
        assert time.monotonic() - t0 < 15  # not the 30 s the escaped process lives
        logs = coordinator.logs(task["id"])
        assert "started" in logs and "output still open" in logs, logs
    finally:
        with contextlib.suppress(OSError, ValueError):  # our test started it: stop it by its PID
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_task_env_is_clean_and_work_dirs_are_removed(coordinator: Coordinator, start_agent) -> None:
    """A task starts from the agent's environment minus the agent's own settings and secrets, plus its
    MLOC_* variables; its work dir goes once its result is in, whether it is small or large (rmtree)."""
    agent = start_agent("tidy")
    small = coordinator.submit({"taskType": "command", "command": 'env; echo kept > "$MLOC_OUTPUT_DIR/a.txt"'})
    large = coordinator.submit({"taskType": "command", "command": (
        'for i in $(seq 40); do echo $i > "$MLOC_WORKDIR/f$i"; done; '
        'mkdir -p "$MLOC_WORKDIR/deep/er" && echo x > "$MLOC_WORKDIR/deep/er/y"')})
    for task in (small, large):
        assert coordinator.wait_state(task["id"], FINAL)["state"] == "succeeded"
    env = coordinator.logs(small["id"])
    assert f"MLOC_TASK_ID={small['id']}" in env and "MLOC_OUTPUT_DIR=" in env and "PATH=" in env
    assert coordinator.join_token not in env
    assert "MLOC_JOIN_TOKEN" not in env and "MLOC_COORDINATOR_URL" not in env and "MLOC_DATA_DIR" not in env
    artifacts = coordinator.http.get(f"/api/v1/tasks/{small['id']}/artifacts").json()["artifacts"]
    assert [a["name"] for a in artifacts] == ["a.txt"]  # uploaded before its dir was removed
    work = agent.data_dir / "work"
    wait_for(lambda: work.is_dir() and not any(work.iterdir()), 10, "both work dirs removed")


def test_work_dirs_left_by_a_killed_agent_are_removed_when_it_restarts(
        coordinator: Coordinator, start_agent, tmp_path: Path) -> None:
    agent = start_agent("phoenix")
    pid_file = tmp_path / "pid"
    task = coordinator.submit({"taskType": "command", "command": (
        f'head -c 65536 /dev/zero > "$MLOC_OUTPUT_DIR/partial.bin"; echo $$ > {pid_file}; exec sleep 300')})
    coordinator.wait_state(task["id"], "running")
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 10, "the task's pid"))
    work = agent.data_dir / "work"
    left = wait_for(lambda: [p for p in work.iterdir() if (p / "output" / "partial.bin").exists()], 10, "its work dir")
    agent.kill9()
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10, "the task process gone (the warden)")
    assert left[0].exists()  # nobody removed it: the agent died
    try:
        assert coordinator.http.post(f"/api/v1/tasks/{task['id']}/cancel").status_code == 200  # no second run
        agent.start()
        wait_for(lambda: not left[0].exists(), 10, "the dead run's work dir removed at restart")
        assert not (agent.data_dir / "trash").exists() or not any((agent.data_dir / "trash").iterdir())
    finally:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
