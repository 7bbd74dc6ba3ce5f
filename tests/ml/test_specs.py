"""Submit-time checks of ML task specs (no ML library in the coordinator) and the GPU memory rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from mloc_shared.resources import estimate_gpu_memory, parameters_from_name
from mloc_shared.taskspec import TaskSpec

from tests.conftest import RTX4090
from tests.harness import Coordinator, wait_for
from tests.ml.conftest import train_spec

RTX3070 = {"name": "NVIDIA GeForce RTX 3070", "memory_gb": 8, "compute_capability": "8.6"}
README_PPO = """taskType: "ppo"
hyperparameters:
  reward_model: "OpenAssistant/reward-model-deberta-v3-large-v2"
  ppo_epochs: 4
  target_kl: 0.1
"""
README_RAG = """taskType: "rag_inference"
hyperparameters:
  embedding_model: "sentence-transformers/all-MiniLM-L6-v2"
  vector_db: "chromadb"
  retrieval_k: 5
"""
README_AGENT = """taskType: "agent_inference"
hyperparameters:
  agent_type: "react"
  tools: ["python_repl", "web_search"]
"""
SFT_BAD_KEY = """taskType: sft
model:
  source: {type: local, identifier: /models/tiny}
hyperparameters:
  max_steps: 10
  learnin_rate: 0.001
"""


def post(coord: Coordinator, body: str):
    return coord.http.post("/api/v1/tasks", content=body)


def test_unknown_or_mistyped_hyperparameters_are_refused_by_name(coordinator: Coordinator) -> None:
    resp = post(coordinator, SFT_BAD_KEY)
    err = resp.json()["error"]
    assert resp.status_code == 422 and err["field"] == "hyperparameters.learnin_rate" and err["line"] == 6
    assert "did you mean 'learning_rate'" in err["message"]
    resp = post(coordinator, SFT_BAD_KEY.replace("learnin_rate: 0.001", "learning_rate: fast"))
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "hyperparameters.learning_rate"
    resp = coordinator.http.post("/api/v1/tasks", json={
        "taskType": "grpo", "model": {"source": {"identifier": "x"}}, "hyperparameters": {"reward_funcs": ["lenght"]}})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "hyperparameters.reward_funcs.0.type"
    resp = coordinator.http.post("/api/v1/tasks", json={
        "taskType": "dpo", "model": {"source": {"identifier": "x"}}, "dataset": {"path": "/d.jsonl", "rows": []}})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "dataset"
    assert coordinator.http.get("/api/v1/tasks").json()["total"] == 0


def test_readme_examples_are_accepted_as_written(coordinator: Coordinator) -> None:
    for body in (README_PPO, README_RAG, README_AGENT):
        resp = post(coordinator, body)
        assert resp.status_code == 201, resp.text
        assert resp.json()["spec"]["hyperparameters"]  # stored as written, defaults not injected


@pytest.mark.parametrize(("identifier", "billions"), [
    ("mistralai/Mistral-7B-Instruct-v0.1", 7.0), ("Qwen/Qwen2.5-1.5B-Instruct", 1.5),
    ("meta-llama/Llama-3.1-8B", 8.0), ("mistralai/Mixtral-8x7B-v0.1", 56.0), ("facebook/opt-350m", 0.35),
    ("Qwen/Qwen3-30B-A3B", 30.0), ("gpt2", None), ("OpenAssistant/reward-model-deberta-v3-large-v2", None),
    ("/models/llama-2-13b-hf", 13.0),
])
def test_parameter_count_from_model_name(identifier: str, billions: float | None) -> None:
    assert parameters_from_name(identifier) == billions


@pytest.mark.parametrize(("task", "adapter", "extra", "gb"), [
    ("sft", "qlora", {}, 11),                                    # 7B 4-bit: never an 8 GB card
    ("sft", "lora", {}, 23),                                     # 7B bf16 + LoRA: a 24 GB card
    ("sft", "none", {}, 106),                                    # full fine-tune: 16 B/param
    ("sft", "qlora", {"per_device_train_batch_size": 1, "max_length": 512}, 6),
    ("sft", "qlora", {"gradient_checkpointing": False}, 39),    # activations dominate without checkpointing
    ("dpo", "lora", {}, 29),                                     # chosen + rejected double the activations
    ("dpo", "none", {}, 125),                                    # + a frozen reference copy
    ("inference", None, {}, 19),
    ("inference", None, {"engine": "vllm"}, 20),
])
def test_gpu_memory_rule(task: str, adapter: str | None, extra: dict, gb: float) -> None:
    model = {"source": {"identifier": "mistralai/Mistral-7B-Instruct-v0.1"}}
    if adapter:
        model["adapter"] = {"type": adapter}
    spec = TaskSpec.model_validate({"taskType": task, "model": model, "hyperparameters": extra})
    estimate = estimate_gpu_memory(spec)
    assert estimate is not None and estimate.gb == gb, estimate
    assert estimate.rule.startswith("derived: weights 7B") and estimate.rule.endswith("docs/tasks.md#gpu-memory)")


@pytest.mark.parametrize("spec", [
    {"taskType": "sft", "model": {"source": {"identifier": "gpt2"}}},  # size unknown
    {"taskType": "sft", "model": {"source": {"identifier": "m-7B"}}, "resources": {"gpus": 0}},  # a CPU task
    {"taskType": "command", "command": "true"},
    {"taskType": "ppo", "hyperparameters": {"reward_model": "x"}},  # no model given
])
def test_no_derivation_when_the_rule_does_not_apply(spec: dict) -> None:
    assert estimate_gpu_memory(TaskSpec.model_validate(spec)) is None


def test_parameters_b_wins_over_the_name_and_an_explicit_request_wins_over_both(coordinator: Coordinator) -> None:
    spec = {"taskType": "sft", "model": {"source": {"identifier": "org/model-70B"}, "parameters_b": 1.0,
                                         "adapter": {"type": "qlora"}}}
    record = coordinator.submit(spec)
    assert record["resources"]["gpu_memory_gb"] == 3 and "weights 1B" in record["resources"]["gpu_memory_rule"]
    record = coordinator.submit({**spec, "resources": {"gpu_memory_gb": 40}})
    assert record["resources"]["gpu_memory_gb"] == 40 and "gpu_memory_rule" not in record["resources"]


@pytest.mark.ml
def test_7b_qlora_task_skips_the_8gb_card_and_runs_on_the_24gb_one(
    coordinator: Coordinator, start_agent, tiny_lm: Path
) -> None:
    """The derived need (11 GB for 7B QLoRA) is matched against declared cards; the tiny model then
    really trains (on CPU: these test boxes declare GPUs they do not have)."""
    small = start_agent("rtx3070", gpus=[RTX3070])
    spec = train_spec("sft", tiny_lm, {"rows": [{"text": "the model answer"}] * 8},
                      {"max_steps": 2, "save_steps": 50}, adapter="qlora")
    spec["model"]["parameters_b"] = 7.0
    spec["hyperparameters"] = {"max_steps": 2, "save_steps": 50}  # default batch and length: the rule's 11 GB
    del spec["resources"]
    task = coordinator.submit(spec)
    assert task["resources"]["gpu_memory_gb"] == 11 and task["resources"]["gpus"] == 1
    assert "4-bit" in task["resources"]["gpu_memory_rule"]
    queued = wait_for(lambda: (t := coordinator.task(task["id"]))["state"] == "queued" and t, 5, "queued")
    assert "rtx3070" in queued["pending_reason"] and "11 GB" in queued["pending_reason"]
    start_agent("rtx4090", gpus=[RTX4090])
    done = coordinator.wait_state(task["id"], {"succeeded", "failed"}, timeout=180)
    assert done["agent"] == "rtx4090" and done["state"] == "succeeded", done.get("error")
    assert small.info()["leases"] == []
