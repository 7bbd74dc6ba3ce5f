"""A box dies mid fine-tune: the retry, on another agent, continues from the uploaded checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import Coordinator, wait_for
from tests.ml.conftest import REPO, download_folder, train_spec
from tests.ml.test_training_modules import CHAT_ROWS, load_adapter, lora_weights_moved

pytestmark = pytest.mark.ml
STEPS, SAVE_EVERY = 30, 5


def test_sft_killed_mid_run_resumes_from_its_checkpoint_on_another_agent(
    coordinator: Coordinator, start_agent, tiny_lm: Path, tmp_path: Path
) -> None:
    on_path = {"PYTHONPATH": str(REPO)}  # the callback named in the spec is code on the agents' path
    doomed = start_agent("doomed", extra_env=on_path)
    # 0.3 s per step (a callback named in the spec, see throttle.py) leaves time to kill the agent mid-run
    spec = train_spec("sft", tiny_lm, {"rows": CHAT_ROWS},
                      {"max_steps": STEPS, "save_steps": SAVE_EVERY, "callbacks": ["tests.ml.throttle:SlowSteps"]},
                      retry={"max_attempts": 3, "backoff_s": 0})
    task = coordinator.submit(spec)

    def checkpoint_uploaded() -> dict | None:
        t = coordinator.task(task["id"])
        assert t["state"] in ("queued", "running"), t
        return t if (t.get("last_checkpoint") or {}).get("step") else None

    running = wait_for(checkpoint_uploaded, 120, "a checkpoint upload", interval=0.1)
    progress = running["progress"]  # live, from heartbeats
    assert progress["total"] == STEPS and 0 < progress["step"] < STEPS and isinstance(progress["loss"], float)
    doomed.kill9()

    requeued = coordinator.wait_state(task["id"], "queued", timeout=30)  # lease expired: attempt 1 lost
    checkpoint = requeued["last_checkpoint"]
    assert checkpoint["step"] % SAVE_EVERY == 0 and 0 < checkpoint["step"] < STEPS

    start_agent("rescuer", extra_env=on_path)
    done = coordinator.wait_state(task["id"], {"succeeded", "failed"}, timeout=180)
    assert done["state"] == "succeeded", f"{done.get('error')}\n{coordinator.logs(task['id'])[-3000:]}"
    assert done["agent"] == "rescuer" and done["attempts"] == 2
    assert [a["outcome"] for a in done["attempt_history"]] == ["lost", "succeeded"]
    result = done["result"]
    # the trainer state restored from the checkpoint: step counting continues, not restarts
    assert result["resumed_from_step"] == checkpoint["step"]
    assert result["global_step"] == STEPS
    assert [s for s, _ in result["losses"]] == list(range(checkpoint["step"] + 1, STEPS + 1))
    assert f"resuming from checkpoint {checkpoint['name']} (step {checkpoint['step']})" in coordinator.logs(task["id"])
    adapter = load_adapter(tiny_lm, download_folder(coordinator, task["id"], "adapter", tmp_path))
    assert lora_weights_moved(adapter)
