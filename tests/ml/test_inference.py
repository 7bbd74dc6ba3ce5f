"""Batch inference through a real coordinator and agent: a fine-tune's adapter chained in with
``model.source: {type: task}``, with transformers and with vLLM (vllm-cpu in its own runtime venv)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Coordinator
from tests.ml.conftest import REPO, run_to_end, train_spec
from tests.ml.test_training_modules import CHAT_ROWS
from tests.prerequisites import missing

pytestmark = pytest.mark.ml
PROMPTS = ["question 3", "question 5"]
VLLM_RUNTIME_SCRIPT = REPO / "agent" / "runtimes" / "vllm-cpu.sh"


def fine_tune(coordinator: Coordinator, tiny_lm: Path) -> dict[str, Any]:
    """A LoRA SFT that teaches the tiny model to open every reply with 'answer'."""
    pytest.importorskip("trl", reason="the ML training stack is not installed (make venv-ml)")
    spec = train_spec("sft", tiny_lm, {"rows": CHAT_ROWS}, {"max_steps": 30, "learning_rate": 5e-3,
                                                            "save_steps": 1000})
    return run_to_end(coordinator, spec)


def inference_spec(source: dict[str, Any], **hyperparameters: Any) -> dict[str, Any]:
    return {"taskType": "inference", "model": {"source": source}, "resources": {"gpus": 0},
            "env": {"HF_HUB_OFFLINE": "1"},
            "hyperparameters": {"prompts": PROMPTS, "max_new_tokens": 6, "temperature": 0, **hyperparameters}}


def generations(coordinator: Coordinator, task_id: str, name: str = "generations.jsonl") -> list[dict[str, Any]]:
    resp = coordinator.http.get(f"/api/v1/tasks/{task_id}/artifacts/{name}", follow_redirects=True)
    assert resp.status_code == 200, resp.text
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


def test_batch_inference_runs_the_adapter_of_a_finished_fine_tune(
    coordinator: Coordinator, start_agent, tiny_lm: Path, tmp_path: Path
) -> None:
    start_agent("box")
    sft = fine_tune(coordinator, tiny_lm)
    prompts_file = tmp_path / "more.jsonl"
    prompts_file.write_text(json.dumps({"id": "q7", "prompt": "question 7"}) + "\n")
    chat_row = {"id": "chat", "messages": [{"role": "user", "content": "question 9"},
                                           {"role": "assistant", "content": "cut here"}]}
    spec = inference_spec({"type": "task", "identifier": sft["id"]}, prompts_file=str(prompts_file))
    spec["dataset"] = {"rows": [chat_row]}
    done = run_to_end(coordinator, spec)
    rows = generations(coordinator, done["id"])
    assert [r["id"] for r in rows] == ["0", "1", "q7", "chat"]
    assert rows[3]["prompt"] == [chat_row["messages"][0]]  # a chat row is cut before its last reply
    for row in rows:
        assert row["generation"].strip().startswith("answer"), row  # what the adapter taught
        assert row["engine"] == "transformers" and 0 < row["completion_tokens"] <= 6 and row["prompt_tokens"] > 0
        assert row["finish_reason"] in ("stop", "length")
    result = done["result"]
    assert result["base"] == str(tiny_lm) and result["adapter"].endswith(f"{sft['id']}/adapter")
    assert result["prompts"] == 4 and result["chat_template"] is True
    assert result["progress"]["step"] == result["progress"]["total"] == 4
    assert f"fetched the outputs of task(s) {sft['id']}" in coordinator.logs(done["id"])

    base = run_to_end(coordinator, inference_spec({"type": "local", "identifier": str(tiny_lm)}))
    base_rows = generations(coordinator, base["id"])
    assert [r["generation"] for r in base_rows] != [r["generation"] for r in rows[:2]]  # the adapter was applied
    assert not all(r["generation"].strip().startswith("answer") for r in base_rows)


def test_a_task_source_that_does_not_exist_or_did_not_succeed_is_refused_at_submit_by_name(
    coordinator: Coordinator, start_agent
) -> None:
    """A task that reads another's outputs depends on it (docs/pipelines.md): a source that is none of
    the user's tasks, or one that already failed, can never be read, so the submit is refused (422)."""
    start_agent("box")
    failed = coordinator.submit({"taskType": "command", "command": "exit 3", "resources": {"gpus": 0}})
    coordinator.wait_state(failed["id"], "failed")
    for identifier, words in (("0000000000000000nosuchtask", "no task"), (failed["id"], "already failed")):
        resp = coordinator.http.post("/api/v1/tasks", json=inference_spec({"type": "task", "identifier": identifier}))
        error = resp.json()["error"]
        assert resp.status_code == 422 and error["field"] == "model.source.identifier", resp.text
        assert words in error["message"] and identifier in error["message"], error


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The vllm-cpu runtime's interpreter. It is built before pytest starts (make test runs
    agent/runtimes/vllm-cpu.sh and passes MLOC_VLLM_CPU_PYTHON), never here: a build takes minutes
    and would run inside the test's timeout. Run by hand, an already-built runtime is found with
    the script's --check."""
    given = os.environ.get("MLOC_VLLM_CPU_PYTHON")
    if given:
        return given
    proc = subprocess.run(["bash", str(VLLM_RUNTIME_SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        missing("the vllm-cpu runtime is not built (make runtime-vllm-cpu, or make test, builds it)")
    return proc.stdout.strip().splitlines()[-1]


def test_vllm_engine_runs_the_fine_tuned_adapter_in_its_own_runtime(
    coordinator: Coordinator, start_agent, tiny_lm: Path, vllm_python: str
) -> None:
    # the agent itself stays on the training venv; only its inference tasks run under the vLLM runtime
    start_agent("vllm-box", extra_env={"MLOC_RUNTIMES": json.dumps({"inference": vllm_python})})
    sft = fine_tune(coordinator, tiny_lm)
    done = run_to_end(coordinator, inference_spec({"type": "task", "identifier": sft["id"]}, engine="vllm"),
                      timeout=300)
    result = done["result"]
    assert result["engine"] == "vllm" and result["vllm_version"] == "0.32.0" and result["device"] == "cpu"
    assert result["adapter"].endswith(f"{sft['id']}/adapter")
    rows = generations(coordinator, done["id"])
    assert [r["id"] for r in rows] == ["0", "1"]
    for row in rows:
        assert row["engine"] == "vllm" and 0 < row["completion_tokens"] <= 6
        assert row["generation"].strip().startswith("answer"), row  # vLLM applied the LoRA adapter
