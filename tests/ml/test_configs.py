"""The example task files in configs/: every one is accepted, and the CPU ones really run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mloc_shared.pipelines import check_document, is_multi
from mloc_shared.resources import estimate_gpu_memory
from mloc_shared.spec_parsing import parse_document, parse_task

from tests.harness import Coordinator
from tests.ml.conftest import REPO

CONFIGS = REPO / "configs"
# one task each; a pipeline file (tasks:) is validated whole above, its ML run needs the eval task type
CPU_CONFIGS = sorted(p for p in (CONFIGS / "cpu").glob("*.yaml") if not is_multi(yaml.safe_load(p.read_text())))
TINY_PLACEHOLDER = "~/.mloc/agent/models/tiny"  # the default agent data dir's models/ folder


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_example_config_validates(path: Path) -> None:
    data, node = parse_document(path.read_bytes())
    if is_multi(data):  # a pipeline file: every step, with its references to other steps
        check_document(data, node)
    else:
        parse_task(path.read_bytes())


def test_readme_examples_keep_their_original_fields() -> None:
    sft = yaml.safe_load((CONFIGS / "sft_mistral_7b.yaml").read_text())
    assert sft["model"] == {"source": {"type": "huggingface", "identifier": "mistralai/Mistral-7B-Instruct-v0.1"},
                            "adapter": {"type": "qlora", "r": 16, "lora_alpha": 32}}
    estimate = estimate_gpu_memory(parse_task((CONFIGS / "sft_mistral_7b.yaml").read_bytes()))
    assert estimate is not None and estimate.gb == 9  # the figure the file's comment promises
    ppo = yaml.safe_load((CONFIGS / "ppo_example.yaml").read_text())["hyperparameters"]
    assert ppo == {"reward_model": "OpenAssistant/reward-model-deberta-v3-large-v2", "ppo_epochs": 4, "target_kl": 0.1}
    rag = yaml.safe_load((CONFIGS / "rag_example.yaml").read_text())["hyperparameters"]
    assert {k: rag[k] for k in ("embedding_model", "vector_db", "retrieval_k")} == {
        "embedding_model": "sentence-transformers/all-MiniLM-L6-v2", "vector_db": "chromadb", "retrieval_k": 5}
    agent = yaml.safe_load((CONFIGS / "agent_inference_example.yaml").read_text())["hyperparameters"]
    assert agent["agent_type"] == "react" and agent["tools"] == ["python_repl", "web_search"]


@pytest.mark.ml
def test_cpu_example_configs_train_on_a_cpu_agent(coordinator: Coordinator, start_agent, tiny_lm: Path) -> None:
    start_agent("laptop")
    for path in CPU_CONFIGS:
        body = path.read_text().replace(TINY_PLACEHOLDER, str(tiny_lm))
        assert TINY_PLACEHOLDER in path.read_text(), f"{path.name} should point at the documented tiny model path"
        resp = coordinator.http.post("/api/v1/tasks", content=body)
        assert resp.status_code == 201, resp.text
        task_id = resp.json()["id"]
        done = coordinator.wait_state(task_id, {"succeeded", "failed"}, timeout=180)
        assert done["state"] == "succeeded", f"{path.name}: {done.get('error')}"
        spec = yaml.safe_load(body)
        if spec["taskType"] == "eval":  # measures, trains nothing
            result = done["result"]
            assert result["metrics"]["perplexity"] > 1 and result["rows"] == len(spec["dataset"]["rows"])
        else:
            assert done["result"]["global_step"] == spec["hyperparameters"]["max_steps"]
