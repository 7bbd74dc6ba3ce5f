"""An eval task's spec is checked at submit: a bad ``eval:`` block, a missing model or nothing to
measure is a 422 naming the field and its YAML line, never a task that fails on an agent later."""

from __future__ import annotations

import pytest
from mloc_shared.errors import ValidationFailed
from mloc_shared.spec_parsing import parse_task
from mloc_shared.taskspec import TaskSpec

from tests.harness import Coordinator


def parse(body: str) -> TaskSpec:
    return parse_task(body.encode())

HEAD = "taskType: eval\nmodel: {source: {type: local, identifier: /models/tiny}}\n"
ROWS = "dataset: {rows: [{text: the red cat}]}\n"


def test_a_perplexity_eval_needs_only_a_model_and_rows() -> None:
    spec = parse(HEAD + ROWS)
    assert spec.evaluation is None and spec.required_gpus() == 1
    full = parse(HEAD + ROWS + "eval:\n  max_rows: 50\n  batch_size: 4\n  max_length: 256\n"
                      "  generation: {prompt_field: question, reference_field: answer, max_new_tokens: 16}\n")
    assert full.evaluation is not None and full.evaluation.generation is not None
    assert full.wire()["eval"]["generation"]["metrics"] == ["exact_match", "rouge", "bleu"]
    assert parse(full.model_dump_json(by_alias=True, exclude_none=True)).evaluation == full.evaluation


@pytest.mark.parametrize(("body", "field", "line", "needle"), [
    (HEAD + ROWS + "eval:\n  max_rowz: 3\n", "eval.max_rowz", 5, "unknown field"),
    (HEAD + ROWS + "eval:\n  batch_size: 0\n", "eval.batch_size", 5, "greater than or equal to 1"),
    (HEAD + ROWS + "eval:\n  generation: {max_new_tokens: -1}\n", "eval.generation.max_new_tokens", 5, ""),
    (HEAD + ROWS + "eval:\n  generation: {metrics: [exact, bleu]}\n", "eval.generation.metrics.0", 5, "rouge"),
    (HEAD + "eval:\n  lm_eval: {tasks: []}\n", "eval.lm_eval.tasks", 4, "at least 1"),
    (HEAD + "eval:\n  generation: {}\n", "dataset", 1, "eval.generation reads rows"),
    (HEAD, "dataset", 1, "eval.lm_eval"),
    ("taskType: eval\n" + ROWS, "model", 1, "model.source"),
    ("taskType: sft\n" + ROWS + "eval: {max_rows: 3}\n", "eval", 3, "only allowed with taskType 'eval'"),
])
def test_a_bad_eval_spec_names_the_field(body: str, field: str, line: int, needle: str) -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse(body)
    assert exc.value.field == field and exc.value.line == line
    assert needle in exc.value.message and "\n" not in exc.value.message


def test_lm_eval_alone_needs_no_dataset() -> None:
    spec = parse(HEAD + "eval:\n  lm_eval: {tasks: [arc_easy, hellaswag], limit: 20}\n")
    assert spec.evaluation is not None and spec.evaluation.lm_eval is not None
    assert spec.evaluation.lm_eval.tasks == ["arc_easy", "hellaswag"]


def test_the_coordinator_answers_a_bad_eval_block_with_422_naming_it(coordinator: Coordinator) -> None:
    resp = coordinator.http.post("/api/v1/tasks", content=HEAD + ROWS + "eval:\n  max_length: 2\n")
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["field"] == "eval.max_length" and "Traceback" not in resp.text
    ok = coordinator.http.post("/api/v1/tasks", content=HEAD + ROWS + "eval: {max_rows: 5}\n")
    assert ok.status_code == 201, ok.text
    assert coordinator.http.get(f"/api/v1/tasks/{ok.json()['id']}").json()["spec"]["eval"]["max_rows"] == 5
