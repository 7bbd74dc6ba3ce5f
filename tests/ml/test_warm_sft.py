"""The real training template (docs/warm-starts.md): with torch, transformers, trl, peft and datasets
imported, it still has CUDA uninitialised and a single thread, so a tiny LoRA SFT forks from it warm."""

from __future__ import annotations

from pathlib import Path

from tests.harness import Coordinator, wait_for
from tests.ml.conftest import run_to_end, train_spec


def test_a_tiny_sft_forks_warm_from_the_training_template(coordinator: Coordinator, start_agent,
                                                          tiny_lm: Path) -> None:
    start_agent("warm-trainer", extra_env={"MLOC_WARM_RUNTIMES": "true", "MLOC_WARM_START": "eager",
                                           "MLOC_DISABLED_TASK_TYPES": "inference,rag_inference,agent_inference"})

    def ready():
        worker = next(w for w in coordinator.workers() if w["name"] == "warm-trainer")
        return next((r for r in worker.get("warm_runtimes") or [] if r["state"] == "ready"), None)

    template = wait_for(ready, 180, "the training template ready")
    # one thread now, as at each fork (the template checks it and CUDA's state itself before forking)
    assert len(list(Path(f"/proc/{template['pid']}/task").iterdir())) == 1
    rows = [{"text": f"the model answer {i} is {i * 2}."} for i in range(8)]
    done = run_to_end(coordinator, train_spec("sft", tiny_lm, {"rows": rows}, {"max_steps": 2, "save_steps": 100}))
    assert done["attempt_history"][0]["start"] == "warm", coordinator.logs(done["id"], "system")
