"""A 2-node sft across two boxes behind one NAT (tests/netns.py LanNet; the coordinator in a namespace
that cannot reach them): one torchrun job with a rank on each box. kill -9 of one member after a
checkpoint stops the other member's ranks within the TTL, the gang is requeued once, and it resumes
on two agents (a new agent process in the killed one's namespace) from the checkpoint's step; the
final adapter loads."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from mloc_agent import launch

from tests import netns
from tests.harness import Agent, wait_for
from tests.ml.conftest import REPO, download_folder, train_spec
from tests.ml.test_training_modules import CHAT_ROWS, load_adapter, lora_weights_moved
from tests.test_gang_netns import TTL, coordinator_in
from tests.test_gang_netns import lan as lan  # a fixture

pytestmark = [pytest.mark.ml, pytest.mark.netns, pytest.mark.timeout(600), pytest.mark.skipif(
    not hasattr(launch, "plan_launch"),
    reason="training tasks are launched under torchrun by the multi-GPU work (docs/distributed.md)")]
STEPS, SAVE_EVERY = 30, 5


def test_a_two_box_sft_gang_survives_a_killed_member_and_resumes_from_its_checkpoint(
        lan: netns.LanNet, tiny_lm: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    coord = coordinator_in(lan, tmp_path)
    # the callback named in the spec is code on the agents' path (after the path that chose this checkout)
    python_path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p)
    env = {"PYTHONPATH": python_path, "MLOC_TASK_PATH_ROOTS": str(tmp_path_factory.getbasetemp()),
           "MLOC_ALLOW_PRIVATE_URLS": "true"}

    def box(i: int) -> Agent:
        return Agent(coord, f"box{i}", prefix=lan.exec_prefix(lan.agent_namespaces()[i]), extra_env=env).start()

    boxes = [box(0), box(1)]
    try:
        spec = train_spec("sft", tiny_lm, {"rows": CHAT_ROWS},
                          {"max_steps": STEPS, "save_steps": SAVE_EVERY, "callbacks": ["tests.ml.throttle:SlowSteps"]},
                          retry={"max_attempts": 3, "backoff_s": 1})
        spec["resources"] = {"gpus": 0, "nodes": 2}
        task_id = coord.submit(spec)["id"]
        running = wait_for(lambda: t if ((t := coord.task(task_id)).get("last_checkpoint") or {}).get("step")
                           else None, 300, "a checkpoint from node rank 0", interval=0.2)
        logs = coord.logs(task_id)
        assert "[rank1]:" in logs and "[rank0]:" in logs, logs[-3000:]  # both nodes' ranks run
        members = running["attempt_history"][0]["members"]
        victim = next(a for a in boxes if a.name == members[1])
        killed_at = time.time()
        victim.kill9()

        wait_for(lambda: coord.task(task_id)["attempt_history"][0]["ended_at"], 60, "the first attempt ended")
        first = coord.task(task_id)["attempt_history"][0]
        assert first["outcome"] == "lost" and first["ended_at"] - killed_at <= TTL + 2, first
        step = coord.task(task_id)["last_checkpoint"]["step"]

        boxes.append(box(boxes.index(victim)))  # a new agent process in the killed one's namespace
        done = coord.wait_state(task_id, {"succeeded", "failed"}, timeout=400)
        assert done["state"] == "succeeded", f"{done.get('error')}\n{coord.logs(task_id)[-3000:]}"
        assert done["attempts"] == 2 and sorted(done["attempt_history"][1]["members"]) == ["box0", "box1"]
        result = done["result"]
        assert result["world_size"] == 2 and result["nodes"] == 2, result
        assert result["resumed_from_step"] >= step >= SAVE_EVERY and result["global_step"] == STEPS
        ranks = set(re.findall(r"\[rank(\d)\]:", coord.logs(task_id)))
        assert ranks == {"0", "1"}
        adapter = load_adapter(tiny_lm, download_folder(coord, task_id, "adapter", tmp_path))
        assert lora_weights_moved(adapter)
    finally:
        for agent in boxes:
            if agent.proc is not None and agent.proc.alive():
                agent.kill9()
        coord.stop()
