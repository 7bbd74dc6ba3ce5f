"""The ``distributed:`` block at submit: impossible combinations are a 422 naming the field (and the YAML
line), the strategy that runs is resolved from what is given, and the GPU memory rule divides what the
strategy shards across gpus * nodes ranks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mloc_shared.distributed import Distributed
from mloc_shared.errors import ValidationFailed
from mloc_shared.resources import estimate_gpu_memory
from mloc_shared.spec_parsing import validate_spec
from mloc_shared.taskspec import TaskSpec

from tests.harness import Coordinator
from tests.test_bad_input import refused

SFT = {"taskType": "sft", "model": {"source": {"identifier": "mistralai/Mistral-7B-v0.1"}}}

REFUSED = [  # (id, distributed block or a whole spec, field, words)
    ("fsdp-settings-with-ddp", {"strategy": "ddp", "fsdp": {"cpu_offload": True}}, "distributed.fsdp",
     ("strategy: fsdp",)),
    ("deepspeed-settings-with-fsdp", {"strategy": "fsdp", "deepspeed": {"zero_stage": 3}}, "distributed.deepspeed",
     ("do not apply",)),
    ("both-settings", {"fsdp": {}, "deepspeed": {}}, "distributed.deepspeed", ("not both",)),
    ("json-and-stage", {"deepspeed": {"config": {"zero_optimization": {"stage": 2}}, "zero_stage": 3}},
     "distributed.deepspeed.zero_stage", ("used as is",)),
    ("offload-param-without-zero3", {"deepspeed": {"zero_stage": 2, "offload_param": True}},
     "distributed.deepspeed.offload_param", ("zero_stage: 3",)),
    ("unknown-strategy", {"strategy": "horovod"}, "distributed.strategy", ()),
    ("typo", {"fsdp": {"cpu_ofload": True}}, "distributed.fsdp.cpu_ofload", ("unknown field",)),
    ("zero-4", {"deepspeed": {"zero_stage": 4}}, "distributed.deepspeed.zero_stage", ()),
    ("command-task", {"taskType": "command", "command": "torchrun train.py", "distributed": {}}, "distributed",
     ("WORLD_SIZE", "own launcher")),
    ("inference-task", {"taskType": "inference", "distributed": {"strategy": "ddp"}}, "distributed",
     ("does not run under torchrun",)),
    ("ppo-task", {"taskType": "ppo", "hyperparameters": {"reward_model": "rm"}, "distributed": {}}, "distributed",
     ("ppo",)),
]


def as_spec(body: dict[str, Any]) -> dict[str, Any]:
    return body if "taskType" in body else {**SFT, "distributed": body}


@pytest.mark.parametrize(("body", "field", "words"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_impossible_combinations_name_their_field(body: dict[str, Any], field: str, words: tuple[str, ...]) -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate_spec(as_spec(body))
    assert caught.value.field == field, caught.value
    for word in words:
        assert word in str(caught.value), caught.value


@pytest.mark.parametrize(("block", "strategy"), [
    ({}, "ddp"), ({"fsdp": {"cpu_offload": True}}, "fsdp"), ({"deepspeed": {"zero_stage": 3}}, "deepspeed"),
    ({"strategy": "deepspeed"}, "deepspeed"), ({"deepspeed": {"config": "ds_zero3.json"}}, "deepspeed"),
])
def test_the_strategy_that_runs(block: dict[str, Any], strategy: str) -> None:
    spec = validate_spec({**SFT, "distributed": block})
    assert spec.distributed is not None and spec.distributed.resolved() == strategy
    assert Distributed.model_validate(block).resolved() == strategy


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    c = Coordinator(Path(tmp_path_factory.mktemp("dist-spec"))).start()
    try:
        yield c
    finally:
        c.stop()


def test_the_coordinator_answers_422_with_the_field_and_line(coord: Coordinator) -> None:
    body = ("taskType: sft\nmodel:\n  source: {identifier: m-7B}\ndistributed:\n  strategy: ddp\n"
            "  fsdp:\n    cpu_offload: true\n")
    refused(coord.http.post("/api/v1/tasks", content=body), 422, "fsdp settings", field="distributed.fsdp", line=6)
    ok = coord.http.post("/api/v1/tasks", content=body.replace("strategy: ddp", "strategy: fsdp"))
    assert ok.status_code == 201, ok.text
    assert ok.json()["spec"]["distributed"]["fsdp"]["cpu_offload"] is True


def gb(spec: dict[str, Any]) -> tuple[float, str]:
    estimate = estimate_gpu_memory(TaskSpec.model_validate(spec))
    assert estimate is not None
    return estimate.gb, estimate.rule


@pytest.mark.parametrize(("gpus", "nodes", "block", "expect"), [
    (1, 1, None, 106),                                  # docs/tasks.md's 7B full fine-tune: no single card
    (8, 1, None, 106),                                  # ddp replicates: the same on every card
    (8, 1, {"strategy": "fsdp"}, 20),                   # (14 + 84) / 8 + activations 5.6 + 1.5
    (4, 2, {"strategy": "fsdp"}, 20),                   # world size = gpus * nodes
    (8, 1, {"deepspeed": {"zero_stage": 3}}, 20),
    (8, 1, {"deepspeed": {"zero_stage": 2}}, 32),       # weights 14 replicated + 84 / 8
    (8, 1, {"deepspeed": {"zero_stage": 1}}, 57),       # + gradients 28 replicated, moments 56 / 8
    (1, 1, {"fsdp": {"cpu_offload": True}}, 8),         # all but activations in CPU memory
])
def test_the_memory_rule_divides_what_the_strategy_shards(gpus: int, nodes: int, block: dict | None,
                                                          expect: float) -> None:
    spec: dict[str, Any] = {**SFT, "model": {**SFT["model"], "adapter": {"type": "none"}},
                            "resources": {"gpus": gpus, "nodes": nodes}}
    if block:
        spec["distributed"] = block
    need, rule = gb(spec)
    assert need == expect, rule
    if block and gpus * nodes > 1:
        assert f"over {gpus * nodes} ranks" in rule and "a GPU]" in rule


def test_inference_splits_the_weights_over_its_gpus() -> None:
    one, _ = gb({"taskType": "inference", "model": SFT["model"]})
    two, rule = gb({"taskType": "inference", "model": SFT["model"], "resources": {"gpus": 2}})
    assert (one, two) == (19, 10) and "split over 2 GPUs" in rule
