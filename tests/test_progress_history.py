"""A task's progress history (the loss curve) and the comparison of tasks, through a real coordinator: an
agent spoken by hand sends the heartbeats, so the steps, repeats and timings are the test's own."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx

from tests.harness import Coordinator, base_env, wait_for
from tests.raw_agent import RawAgent


def user_client(coordinator: Coordinator, name: str) -> httpx.Client:
    token = coordinator.http.post("/api/v1/tokens", json={"user": name}).json()["token"]
    return httpx.Client(base_url=coordinator.url, timeout=30, headers={"Authorization": f"Bearer {token}"})


def leased(coordinator: Coordinator, client: httpx.Client, agent: RawAgent, spec: dict[str, Any]) -> dict[str, Any]:
    resp = client.post("/api/v1/tasks", json={"taskType": "command", "command": "true", **spec})
    assert resp.status_code == 201, resp.text
    (lease,) = agent.poll()["leases"]
    assert lease["task_id"] == resp.json()["id"]
    return lease


def beat(agent: RawAgent, lease: dict[str, Any], **progress: Any) -> None:
    resp = agent.call(lease["task_id"], "heartbeat", {"epoch": lease["epoch"], "progress": progress})
    assert resp.status_code == 200, resp.text


def test_history_has_a_point_per_step_reads_since_and_follows_task_visibility(coordinator: Coordinator) -> None:
    alice, bob = user_client(coordinator, "alice"), user_client(coordinator, "bob")
    agent = RawAgent(coordinator.url, "box-1", coordinator.join_token)
    try:
        lease = leased(coordinator, alice, agent, {"name": "curve"})
        task_id = lease["task_id"]
        for step, loss in [(1, 2.0), (1, 1.9), (2, 1.5), (3, 1.2)]:  # step 1 twice: one point
            beat(agent, lease, step=step, total=10, loss=loss, learning_rate=1e-4)
        beat(agent, lease, step=4, total=10, message="no value: no point")
        beat(agent, lease, step=2**64, loss=1.0)  # past what the store takes: no point, and the writes go on
        beat(agent, lease, step=5, total=10, metrics={"reward_mean": 0.5, "kl": 0.02})
        url = f"/api/v1/tasks/{task_id}/progress"
        # the points answer at once, whether the reaper has written them yet or not
        points = alice.get(url).json()["points"]
        assert [(p["attempt"], p["step"], p["loss"]) for p in points] == [(1, 1, 2.0), (1, 2, 1.5), (1, 3, 1.2),
                                                                          (1, 5, None)]
        assert points[-1]["metrics"] == {"reward_mean": 0.5, "kl": 0.02}
        assert points[0]["t"] < points[1]["t"] < points[2]["t"]
        newer = alice.get(url, params={"since": points[1]["t"]}).json()["points"]
        assert [p["step"] for p in newer] == [3, 5]
        assert alice.get(url, params={"since": points[-1]["t"]}).json()["points"] == []
        # after the reaper's flush (about once a second) the same answer comes from the store
        wait_for(lambda: "progress_points" in _tables(coordinator) and _rows(coordinator, task_id) == 4, 10,
                 "the points written")
        assert [p["step"] for p in alice.get(url).json()["points"]] == [1, 2, 3, 5]

        assert bob.get(url).status_code == 404  # another user's task: as GET /api/v1/tasks/{id}
        assert coordinator.http.get(url).status_code == 200  # an admin's
        bad = alice.get(url, params={"since": "yesterday"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "since"
        assert alice.get("/api/v1/tasks/nope/progress").status_code == 404

        # the steps a task reported between two heartbeats come with the next one, each a point
        between = [{"step": 6, "loss": 0.95}, {"step": 7, "loss": 0.9}, {"step": 8, "loss": 0.85}]
        resp = agent.call(task_id, "heartbeat", {"epoch": lease["epoch"], "points": between, "progress": between[-1]})
        assert resp.status_code == 200, resp.text
        assert [p["step"] for p in alice.get(url).json()["points"]][-3:] == [6, 7, 8]
        # the last points land with the completion, in its transaction
        beat(agent, lease, step=9, total=10, loss=0.8)
        done = agent.call(task_id, "complete", {"epoch": lease["epoch"], "outcome": "succeeded", "exit_code": 0})
        assert done.status_code == 200, done.text
        assert _rows(coordinator, task_id) == 8
        assert alice.get(url).json()["points"][-1]["step"] == 9
    finally:
        agent.close()
        alice.close()
        bob.close()


def test_compare_tabulates_final_metrics_and_differing_hyperparameters(coordinator: Coordinator) -> None:
    alice, bob = user_client(coordinator, "alice"), user_client(coordinator, "bob")
    agent = RawAgent(coordinator.url, "box-1", coordinator.join_token)
    try:
        ids = []
        for lr, loss in [(1e-4, 0.8), (3e-4, 0.5)]:
            lease = leased(coordinator, alice, agent, {"name": f"lr-{lr}", "hyperparameters": {
                "learning_rate": lr, "epochs": 1, "optim": {"beta": 0.9}}})
            beat(agent, lease, step=10, total=10, loss=loss, metrics={"grad_norm": 1.0})
            result = {"metrics": {"perplexity": loss * 10}}
            assert agent.call(lease["task_id"], "complete", {"epoch": lease["epoch"], "outcome": "succeeded",
                                                             "exit_code": 0, "result": result}).status_code == 200
            ids.append(lease["task_id"])
        resp = alice.get("/api/v1/compare", params={"ids": ",".join(ids)})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["hyperparameters"] == ["learning_rate"]  # epochs and optim.beta are the same in both
        assert body["metrics"] == ["loss", "grad_norm", "perplexity"]
        assert [t["id"] for t in body["tasks"]] == ids
        assert [t["metrics"]["perplexity"] for t in body["tasks"]] == [8.0, 5.0]
        assert [t["hyperparameters"] for t in body["tasks"]] == [{"learning_rate": 1e-4}, {"learning_rate": 3e-4}]

        assert bob.get("/api/v1/compare", params={"ids": ids[0]}).status_code == 404
        empty = alice.get("/api/v1/compare", params={"ids": ""})
        assert empty.status_code == 422 and empty.json()["error"]["field"] == "ids"

        # the CLI prints the same table, aligned, or the same JSON
        env = base_env(MLOC_COORDINATOR_URL=coordinator.url, MLOC_TOKEN=coordinator.admin_token)
        cli = [sys.executable, "-m", "mloc_shared.cli.main", "compare", *ids]
        out = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        header, *rows = out.stdout.strip().splitlines()
        assert header.split() == ["task", "type", "state", "step", "learning_rate", "loss", "grad_norm",
                                  "perplexity"]
        assert rows[0].split()[0] == "lr-0.0001" and rows[1].split()[-1] == "5"
        assert len({len(r) for r in rows}) == 1 and header.index("perplexity") + len("perplexity") == len(rows[0])
        as_json = subprocess.run([*cli, "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert json.loads(as_json.stdout) == body
    finally:
        agent.close()
        alice.close()
        bob.close()


def _tables(coordinator: Coordinator) -> set[str]:
    import sqlite3

    con = sqlite3.connect(f"file:{coordinator.data_dir / 'mloc.db'}?mode=ro", uri=True)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()


def _rows(coordinator: Coordinator, task_id: str) -> int:
    import sqlite3

    con = sqlite3.connect(f"file:{coordinator.data_dir / 'mloc.db'}?mode=ro", uri=True)
    try:
        return con.execute("SELECT COUNT(*) FROM progress_points WHERE task_id=?", (task_id,)).fetchone()[0]
    finally:
        con.close()
