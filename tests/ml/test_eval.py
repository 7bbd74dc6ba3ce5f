"""The eval task type through a real coordinator and agent: a fine-tune measured against its base
model on held-out rows of the distribution it learnt (lower perplexity, better generations), and the
perplexity maths checked against transformers' own loss."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Coordinator, wait_for
from tests.ml.conftest import train_spec
from tests.ml.test_inference import CHAT_ROWS, generations, inference_spec
from tests.test_eval_metrics import needs

pytestmark = pytest.mark.ml
# the fine-tune (tests/ml/test_inference.py) learns 'question i' -> 'answer 2i' on i < 16; these it never saw
# conversational prompt/completion rows: perplexity scores the reply given the prompt, as the SFT trained it
HELD_OUT = [{"id": f"q{i}", "prompt": [{"role": "user", "content": f"question {i}"}],
             "completion": [{"role": "assistant", "content": f"answer {i * 2}"}]} for i in range(40, 46)]


def eval_spec(source: dict[str, Any]) -> dict[str, Any]:
    return {"taskType": "eval", "model": {"source": source}, "dataset": {"rows": HELD_OUT},
            "eval": {"batch_size": 4, "max_length": 64, "generation": {"max_new_tokens": 6}},
            "resources": {"gpus": 0}, "env": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}}


def artifact(coordinator: Coordinator, task_id: str, name: str) -> str:
    resp = coordinator.http.get(f"/api/v1/tasks/{task_id}/artifacts/{name}", follow_redirects=True)
    assert resp.status_code == 200, resp.text
    return resp.text


@pytest.mark.timeout(600)  # four tasks that each import torch and load a model: a loaded box needs more than 300 s
def test_a_pipeline_fine_tunes_then_evaluates_both_models_and_serves_the_adapter(
    coordinator: Coordinator, start_agent, tiny_lm: Path
) -> None:
    """One pipeline file (issue 15's must-show): sft -> eval of the fine-tune -> inference on it, with the base
    model's eval beside it. The steps that read the sft wait blocked until it succeeds; the fine-tune's
    perplexity on held-out rows of its distribution is lower than the base model's."""
    needs("rouge")
    needs("bleu")
    pytest.importorskip("trl", reason="the ML training stack is not installed (make venv-ml)")
    start_agent("box")
    step_sft = {"type": "step", "identifier": "sft"}
    doc = {"name": "tune-and-measure", "tasks": {
        "sft": train_spec("sft", tiny_lm, {"rows": CHAT_ROWS}, {"max_steps": 30, "learning_rate": 5e-3,
                                                                "save_steps": 1000}),
        "base": eval_spec({"type": "local", "identifier": str(tiny_lm)}),
        "tuned": eval_spec(step_sft),
        "serve": inference_spec(step_sft)}}
    resp = coordinator.http.post("/api/v1/pipelines", json=doc)
    assert resp.status_code == 201, resp.text
    pipeline = resp.json()
    steps = {s["name"]: s for s in pipeline["steps"]}
    assert steps["tuned"]["state"] == steps["serve"]["state"] == "blocked"
    assert steps["sft"]["task_id"] in steps["tuned"]["pending_reason"]

    def ended() -> dict[str, Any] | None:
        r = coordinator.http.get(f"/api/v1/pipelines/{pipeline['id']}").json()
        return r if r["state"] in ("succeeded", "failed", "cancelled") else None

    done = wait_for(ended, 540, "the pipeline to end")
    by_name = {s["name"]: coordinator.task(s["task_id"]) for s in done["steps"]}
    assert done["state"] == "succeeded", {n: (t["state"], t.get("error")) for n, t in by_name.items()}
    sft, base, tuned = by_name["sft"], by_name["base"], by_name["tuned"]
    assert tuned["started_at"] >= sft["finished_at"] and by_name["serve"]["started_at"] >= sft["finished_at"]
    b, t = base["result"]["metrics"], tuned["result"]["metrics"]
    assert t["perplexity"] < b["perplexity"] and t["loss"] < b["loss"], (b, t)
    assert math.isclose(t["perplexity"], math.exp(t["loss"]))
    assert t["rouge1"] > b["rouge1"], (b, t)  # the adapter's replies open with 'answer', as the references do
    assert set(t) == {"loss", "perplexity", "exact_match", "rouge1", "rouge2", "rougeL", "bleu"}
    assert tuned["result"]["adapter"].endswith(f"{sft['id']}/adapter") and base["result"]["adapter"] is None
    rollup = {r["name"]: r["final"] for r in done["rollup"]}
    assert rollup["tuned"]["perplexity"] == t["perplexity"]  # the roll-up reads the eval's metrics
    served = generations(coordinator, by_name["serve"]["id"])
    assert served and all(r["generation"].strip().startswith("answer") for r in served), served

    assert json.loads(artifact(coordinator, tuned["id"], "metrics.json"))["metrics"] == t
    rows = [json.loads(line) for line in artifact(coordinator, tuned["id"], "examples.jsonl").splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in HELD_OUT]
    tokens = sum(r["tokens"] for r in rows)
    assert tokens == tuned["result"]["tokens"] > 0
    assert math.isclose(sum(r["loss"] * r["tokens"] for r in rows) / tokens, t["loss"], rel_tol=1e-6)  # token-weighted
    assert math.isclose(sum(r["exact_match"] for r in rows) / len(rows), t["exact_match"])
    assert all(r["reference"] == f"answer {int(r['id'][1:]) * 2}" and isinstance(r["generation"], str) for r in rows)
    progress = tuned["result"]["progress"]
    assert progress["step"] == progress["total"] == 2 * len(HELD_OUT)  # perplexity, then generation


def test_row_losses_match_transformers_loss_with_padding_and_a_masked_prompt(tiny_lm: Path) -> None:
    import torch
    from mloc_agent.modules.eval.perplexity import IGNORE, Scored, row_losses, summary, tokenize_row
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    rows = [tokenize_row(tokenizer, {"text": "the red cat is one two three"}, "text", 64),
            tokenize_row(tokenizer, {"prompt": "question 7", "completion": " answer 14"}, "prompt_completion", 64),
            tokenize_row(tokenizer, {"messages": HELD_OUT[0]["prompt"] + HELD_OUT[0]["completion"]}, "chat", 64),
            tokenize_row(tokenizer, HELD_OUT[1], "prompt_completion", 64),
            tokenize_row(tokenizer, {"text": "dog"}, "text", 64)]
    assert rows[1].labels[0] == IGNORE and rows[1].labels[-1] != IGNORE
    assert rows[3].labels[0] == IGNORE and 0 < sum(label != IGNORE for label in rows[3].labels) < len(rows[3].labels)
    losses = row_losses(model, tokenizer.pad_token_id, rows, batch_size=3, device="cpu")  # padded batches
    for row, got in zip(rows, losses, strict=True):
        if got.tokens == 0:
            continue
        with torch.no_grad():
            want = model(input_ids=torch.tensor([row.input_ids]), labels=torch.tensor([row.labels])).loss.item()
        assert math.isclose(got.loss, want, rel_tol=1e-4), (got, want)
    whole = summary(losses)
    assert math.isclose(whole["loss"], sum(r.nll for r in losses) / sum(r.tokens for r in losses))
    assert summary([row_losses(model, tokenizer.pad_token_id, [Scored([5], [5])], 1, "cpu")[0]]) == {}
