"""Fair share and quotas with a real coordinator and real agent processes (declared GPUs).

The exact orders and ratios are checked in-process on the injected clock (tests/test_fairshare.py,
tests/test_quotas.py); this checks that the real processes keep the same promises.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import A100
from tests.harness import Agent, Coordinator

pytestmark = pytest.mark.timeout(240)
FAIR = {"running_charge_s": 2}
QUOTAS = {"users": {"carol": {"max_queued": 2}, "dave": {"max_gpus": 1}}}


def _token(coord: Coordinator, user: str) -> dict[str, str]:
    made = coord.http.post("/api/v1/tokens", json={"user": user})
    assert made.status_code == 201, made.text
    return {"Authorization": f"Bearer {made.json()['token']}"}


def _submit(coord: Coordinator, who: dict[str, str], n: int, command: str = "sleep 0.5", gpus: int = 1) -> list[str]:
    body = [{"taskType": "command", "command": command, "resources": {"gpus": gpus}} for _ in range(n)]
    resp = coord.http.post("/api/v1/tasks", json=body, headers=who)
    assert resp.status_code == 201, resp.text
    return [t["id"] for t in resp.json()["tasks"]]


def _running(coord: Coordinator) -> tuple[Counter[str], Counter[str]]:
    """(running tasks, running GPUs) per user, from the API's listing."""
    tasks = coord.http.get("/api/v1/tasks", params={"state": "running", "page_size": 500}).json()["tasks"]
    return Counter(t["user"] for t in tasks), _gpus(tasks)


def _gpus(tasks: list[dict]) -> Counter[str]:
    out: Counter[str] = Counter()
    for t in tasks:
        out[t["user"]] += len(t["lease"]["gpus"])
    return out


def _sample_until_done(coord: Coordinator, ids: list[str], timeout: float) -> list[tuple[Counter, Counter]]:
    samples = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded in time; about 20 samples a second
        samples.append(_running(coord))
        states = coord.http.get("/api/v1/tasks", params={"state": "queued,running", "page_size": 1}).json()
        if states["total"] == 0:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("tasks still queued or running at the deadline")
    for task_id in ids:
        assert coord.task(task_id)["state"] == "succeeded"
    return samples


def test_two_users_share_two_gpus_and_quotas_hold(tmp_path: Path) -> None:
    coord = Coordinator(tmp_path, extra_env={"MLOC_FAIR_SHARE": json.dumps(FAIR),
                                             "MLOC_QUOTAS": json.dumps(QUOTAS)}).start()
    agents: list[Agent] = []
    try:
        users = {u: _token(coord, u) for u in ("alice", "bob", "carol", "dave", "erin")}
        # alice submits 30 first, then bob 30; the agents (one declared GPU each) start after both
        ids = _submit(coord, users["alice"], 30) + _submit(coord, users["bob"], 30)
        for name in ("g1", "g2"):
            agents.append(Agent(coord, name, gpus=[A100]).start(wait=False))
        samples = _sample_until_done(coord, ids, 150)
        busy = [s for s, _ in samples if sum(s.values()) == 2]
        assert len(busy) >= 10, f"too few samples with both GPUs busy: {len(busy)}"
        gaps = [abs(s["alice"] - s["bob"]) for s, _ in samples]
        assert max(gaps) <= 1, [dict(s) for s, _ in samples if abs(s["alice"] - s["bob"]) > 1][:5]

        # the GPU cap: dave (max_gpus 1) submits first; erin's tasks take the other GPU meanwhile
        capped = _submit(coord, users["dave"], 4) + _submit(coord, users["erin"], 4)
        samples = _sample_until_done(coord, capped, 90)
        assert max(g["dave"] for _, g in samples) == 1
        assert any(g["dave"] == 1 and g["erin"] == 1 for _, g in samples), "erin never ran beside dave"

        # the queued limit: carol may have 2 queued (8-GPU tasks: no agent fits them, they stay queued)
        _submit(coord, users["carol"], 2, command="true", gpus=8)
        over = coord.http.post("/api/v1/tasks", headers=users["carol"],
                               json={"taskType": "command", "command": "true", "resources": {"gpus": 8}})
        assert over.status_code == 429 and over.headers["Retry-After"]
        assert over.json()["error"]["code"] == "quota_exceeded"
        assert over.json()["error"]["message"] == (
            "quota: user carol may have at most 2 queued tasks (max_queued); 2 are queued")
    finally:
        for agent in agents:
            agent.stop()
        coord.stop()
