"""Cache-aware placement through real coordinator and agent processes: two idle agents with their own
Hugging Face caches, one holding model X. A task on X goes to the holder; while the holder is busy, the
next one goes to the other agent at once. Command tasks: no model is loaded, only placed."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import FINAL, MLOC, Agent, Coordinator, base_env, wait_for
from tests.test_model_cache import put_in_hub_cache

pytestmark = pytest.mark.timeout(90)
MODEL = "acme/tiny-lm"


def counter(coord: Coordinator, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", coord.http.get("/metrics").text, re.M)
    assert m is not None, f"no {name} in /metrics"
    return float(m.group(1))


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[Coordinator]:
    # polls held for a minute: an idle agent's poll does not end (and restart) while a test submits
    c = Coordinator(tmp_path, poll_hold_s=60).start()
    try:
        yield c
    finally:
        c.stop()


def on_model(name: str) -> dict:
    return {"taskType": "command", "name": name, "command": "true",
            "model": {"source": {"type": "huggingface", "identifier": MODEL}}}


def test_a_task_goes_to_the_agent_holding_its_model_and_to_another_at_once_while_that_one_is_busy(
        coord: Coordinator, tmp_path: Path) -> None:
    put_in_hub_cache(tmp_path / "hf-warm" / "hub", MODEL, {"config.json": b'{"model_type": "gpt2"}'})
    started: list[Agent] = []
    try:
        for name in ("cold", "warm"):  # the cold one waits longest: without the preference it would go first
            started.append(Agent(coord, name, labels=f"box={name}", max_tasks=1,
                                 extra_env={"HF_HOME": str(tmp_path / f"hf-{name}")}).start())
        wait_for(lambda: counter(coord, "mloc_agent_polls_total") >= 2, 15, "both agents' polls held")
        listed = {w["name"]: w for w in coord.workers()}
        assert [(m["id"], m["kind"], m["where"]) for m in listed["warm"]["models"]] == [(MODEL, "model", "hf-cache")]
        assert listed["warm"]["model_count"] == 1 and listed["cold"]["model_count"] == 0
        size = listed["warm"]["model_bytes"]
        out = subprocess.run([*MLOC, "agents"], capture_output=True, text=True, timeout=60, env=base_env(
            MLOC_COORDINATOR_URL=coord.url, MLOC_TOKEN=coord.admin_token, COLUMNS="250"))
        warm_row = next(line for line in out.stdout.splitlines() if "warm" in line)
        assert out.returncode == 0 and f"1 ({size} B)" in warm_row, out.stdout + out.stderr

        first = coord.wait_state(coord.submit(on_model("first"))["id"], FINAL, timeout=20)
        assert first["state"] == "succeeded", first["error"]
        assert [(a["agent"], a["model_cached"]) for a in first["attempt_history"]] == [("warm", True)]
        assert f"model {MODEL} is on this agent already (hf-cache)" in coord.logs(first["id"], "system")

        blocker = coord.submit({"taskType": "command", "command": "sleep 60", "resources": {"labels": {"box": "warm"}}})
        assert coord.wait_state(blocker["id"], "running", timeout=15)["lease"]["agent"] == "warm"
        # the holder is full: the next task on its model starts elsewhere now, not when the holder is free
        second = coord.wait_state(coord.submit(on_model("second"))["id"], FINAL, timeout=15)
        assert second["state"] == "succeeded", second["error"]
        assert [(a["agent"], a["model_cached"]) for a in second["attempt_history"]] == [("cold", False)]
        assert f"model {MODEL} is not on this agent yet" in coord.logs(second["id"], "system")
        assert coord.task(blocker["id"])["state"] == "running"
        coord.http.post(f"/api/v1/tasks/{blocker['id']}/cancel")
    finally:
        for agent in started:
            agent.stop()
