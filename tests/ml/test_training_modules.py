"""Every training module end to end on CPU: a real coordinator, a real agent, a tiny Llama built in
the session, TRL doing the training, and the adapter read back through the artifacts API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.harness import Coordinator
from tests.ml.conftest import REPO, artifacts, download_folder, run_to_end, train_spec

pytestmark = pytest.mark.ml

CHAT_ROWS = [{"messages": [{"role": "user", "content": f"question {i}"},
                           {"role": "assistant", "content": f"answer {i * 2}"}]} for i in range(16)]
PREFERENCE_ROWS = [{"prompt": f"question {i}", "chosen": f" answer {i * 2}", "rejected": " bad dog"}
                   for i in range(16)]


def load_adapter(base: Path, adapter_dir: Path, auto_class: str = "AutoModelForCausalLM") -> Any:
    import transformers
    from peft import PeftModel

    model = getattr(transformers, auto_class).from_pretrained(str(base), **(
        {"num_labels": 1} if "Sequence" in auto_class else {}))
    return PeftModel.from_pretrained(model, str(adapter_dir))


def lora_weights_moved(peft_model: Any) -> bool:
    """LoRA starts with B = 0; a trained adapter has a non-zero B somewhere."""
    return any(float(p.abs().sum()) > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)


def assert_trained(done: dict[str, Any], steps: int) -> dict[str, Any]:
    result = done["result"]
    assert result["global_step"] == steps and result["max_steps"] == steps
    assert isinstance(result["train_loss"], float)
    assert result["final_loss"] == pytest.approx(result["losses"][-1][1], abs=1e-5)
    assert [s for s, _ in result["losses"]] == list(range(1, steps + 1))
    progress = result["progress"]  # the last progress line the agent relayed in a heartbeat
    assert progress["step"] == progress["total"] == steps and progress["percent"] == 100.0
    assert isinstance(progress["loss"], float) and progress["learning_rate"] > 0
    assert result["device"] == "cpu" and result["dtype"] == "float32"
    return result


def test_sft_lora_on_text_data_uploads_a_loadable_adapter(
    coordinator: Coordinator, start_agent, tiny_lm: Path, tmp_path: Path
) -> None:
    start_agent("trainer")
    rows = [{"text": f"the model answer {i} is {i * 2}."} for i in range(32)]
    done = run_to_end(coordinator, train_spec("sft", tiny_lm, {"rows": rows},
                                              {"max_steps": 12, "save_steps": 6, "learning_rate": 1e-3}))
    result = assert_trained(done, 12)
    assert result["data_format"] == "text" and result["adapter"] == "lora"
    assert result["final_loss"] < result["first_loss"]
    assert result["checkpoint_steps"] == [6, 12]
    names = artifacts(coordinator, done["id"])
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "train_log.json"} <= set(names)
    assert names["checkpoints/step-6.tar"]["kind"] == "checkpoint"
    assert done["last_checkpoint"]["step"] == 12
    model = load_adapter(tiny_lm, download_folder(coordinator, done["id"], "adapter", tmp_path))
    assert lora_weights_moved(model)


def test_sft_lora_on_chat_data_masks_all_but_assistant_turns(
    coordinator: Coordinator, start_agent, tiny_lm: Path, tmp_path: Path
) -> None:
    start_agent("trainer")
    done = run_to_end(coordinator, train_spec("sft", tiny_lm, {"rows": CHAT_ROWS, "format": "chat"},
                                              {"max_steps": 10, "save_steps": 100}))
    result = assert_trained(done, 10)
    assert result["data_format"] == "chat" and result["assistant_only_loss"] is True
    assert result["checkpoint_steps"] == [10]  # the final save, not step 100
    load_adapter(tiny_lm, download_folder(coordinator, done["id"], "adapter", tmp_path))


def test_sft_instruction_data_from_a_jsonl_file(
    coordinator: Coordinator, start_agent, tiny_lm: Path, tmp_path: Path
) -> None:
    import json

    data = tmp_path / "alpaca.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"add {i} and {i}", "input": "", "answer": str(2 * i)})
                              for i in range(16)))
    start_agent("trainer")
    dataset = {"path": str(data), "columns": {"instruction": "question", "output": "answer"}}
    done = run_to_end(coordinator, train_spec("sft", tiny_lm, dataset, {"max_steps": 4, "save_steps": 100}))
    result = assert_trained(done, 4)
    assert result["data_format"] == "prompt_completion"  # rendered with the chat template, loss on the answer


def test_sft_qlora_trains_over_a_4bit_base(
    coordinator: Coordinator, start_agent, tiny_lm: Path, tmp_path: Path, file_server: tuple[Path, str]
) -> None:
    """bitsandbytes 0.50 has a CPU backend: the base really is 4-bit (Linear4bit), LoRA trains on top.
    Model and data come from http URLs here (a model folder as .tar.gz, a .txt file), as from presigned URLs."""
    import tarfile

    served, url = file_server
    with tarfile.open(served / "tiny-lm.tar.gz", "w:gz") as tar:
        tar.add(tiny_lm, arcname="tiny-lm")
    (served / "corpus.txt").write_text("\n".join(f"the model answer {i} is {i * 2}." for i in range(16)))
    start_agent("trainer")
    spec = train_spec("sft", tiny_lm, {"uri": f"{url}/corpus.txt"},
                      {"max_steps": 8, "save_steps": 4, "merge_adapter": True}, adapter="qlora")
    spec["model"]["source"] = {"type": "uri", "identifier": f"{url}/tiny-lm.tar.gz?X-Amz-Signature=abc"}
    done = run_to_end(coordinator, spec)
    result = assert_trained(done, 8)
    assert result["adapter"] == "qlora" and result["quantized_4bit"] is True
    assert result["data_format"] == "text" and result["examples"] == 16
    assert result["outputs"] == {"adapter": "adapter/", "merged": "merged/"}
    assert lora_weights_moved(load_adapter(tiny_lm, download_folder(coordinator, done["id"], "adapter", tmp_path)))
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(download_folder(coordinator, done["id"], "merged", tmp_path)))
    assert merged.config.vocab_size > 0 and not hasattr(merged, "peft_config")


def test_dpo_prefers_chosen_answers(coordinator: Coordinator, start_agent, tiny_lm: Path, tmp_path: Path) -> None:
    start_agent("trainer")
    done = run_to_end(coordinator, train_spec("dpo", tiny_lm, {"rows": PREFERENCE_ROWS},
                                              {"max_steps": 10, "save_steps": 5, "learning_rate": 5e-3}))
    result = assert_trained(done, 10)
    assert result["first_loss"] == pytest.approx(0.6931, abs=1e-3)  # log(2): policy == reference at step 1
    assert result["final_loss"] < result["first_loss"]
    assert result["final_metrics"]["rewards/margins"] > 0
    load_adapter(tiny_lm, download_folder(coordinator, done["id"], "adapter", tmp_path))


def test_grpo_scores_with_builtin_python_and_model_rewards(
    coordinator: Coordinator, start_agent, tiny_lm: Path, tiny_rm: Path, tmp_path: Path
) -> None:
    plugin = tmp_path / "plugins"
    plugin.mkdir()
    (plugin / "my_rewards.py").write_text(
        "def mentions_answer(prompts, completions, **kw):\n"
        "    return [1.0 if 'answer' in c else 0.0 for c in completions]\n")
    # code the agent's operator installed (the agent's own PYTHONPATH): a spec's env may not set PYTHON*
    start_agent("trainer", extra_env={"PYTHONPATH": str(plugin)})
    rewards = [{"type": "length", "target": 12}, "my_rewards:mentions_answer",
               {"type": "regex", "pattern": r"\d"}, {"type": "model", "identifier": str(tiny_rm), "weight": 0.5}]
    rows = [{"prompt": f"question {i}", "answer": str(2 * i)} for i in range(8)]
    spec = train_spec("grpo", tiny_lm, {"rows": rows},
                      {"max_steps": 6, "save_steps": 3, "num_generations": 4, "max_completion_length": 8,
                       "reward_funcs": rewards})
    result = assert_trained(run_to_end(coordinator, spec), 6)
    assert result["reward_functions"] == ["length", "my_rewards:mentions_answer", "regex", str(tiny_rm)]
    assert result["reward_weights"] == [1.0, 1.0, 1.0, 0.5]
    metrics = result["final_metrics"]
    for name in ("length", "mentions_answer", "regex", "tiny-rm"):
        assert f"rewards/{name}/mean" in metrics, sorted(metrics)
    assert 0.0 <= metrics["rewards/length/mean"] <= 1.0


def test_reward_model_learns_to_rank_chosen_above_rejected(
    coordinator: Coordinator, start_agent, tiny_lm: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    start_agent("trainer")
    rows = [{"chosen": f"good answer {i}", "rejected": f"bad dog {i}"} for i in range(16)]
    done = run_to_end(coordinator, train_spec("reward_model", tiny_lm, {"rows": rows},
                                              {"max_steps": 20, "save_steps": 10, "learning_rate": 2e-3,
                                               "merge_adapter": True}))
    result = assert_trained(done, 20)
    assert result["final_loss"] < result["first_loss"] and result["final_metrics"]["accuracy"] == 1.0
    merged = download_folder(coordinator, done["id"], "merged", tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(str(merged)).eval()
    tok = AutoTokenizer.from_pretrained(str(merged))
    with torch.no_grad():
        scores = model(**tok(["good answer 99", "bad dog 99"], return_tensors="pt", padding=True)).logits[:, 0]
    assert scores[0] > scores[1]


def test_callbacks_from_the_spec_are_loaded(coordinator: Coordinator, start_agent, tiny_lm: Path) -> None:
    start_agent("trainer", extra_env={"PYTHONPATH": str(REPO)})  # the callback is code on the agent's path
    spec = train_spec("sft", tiny_lm, {"rows": CHAT_ROWS}, {"max_steps": 2, "save_steps": 100,
                                                            "callbacks": ["tests.ml.throttle:SlowSteps"]})
    assert run_to_end(coordinator, spec)["result"]["train_runtime_s"] >= 0.6  # 2 steps x 0.3 s
