"""Pipeline files and sweeps expanded and validated without a coordinator (mloc_shared.pipelines),
and the example pipeline files in configs/."""

from __future__ import annotations

from pathlib import Path

import pytest
from mloc_shared.errors import ValidationFailed
from mloc_shared.pipelines import check_document, plan_document
from mloc_shared.spec_parsing import parse_document

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize(("path", "chain"), [
    ("pipeline_example.yaml", {"sft": [], "dpo": ["sft"], "eval": ["dpo"], "inference": ["dpo", "eval"]}),
    ("cpu/pipeline_tiny.yaml", {"sft": [], "eval": ["sft"], "inference": ["sft", "eval"]}),
])
def test_the_example_pipelines_validate_and_chain_their_steps(path: str, chain: dict[str, list[str]]) -> None:
    plan = check_document(*parse_document((CONFIGS / path).read_bytes()))
    assert plan.kind == "pipeline"
    assert {s.name: s.needs for s in plan.steps} == chain


def test_a_grid_sweep_is_the_cartesian_product_of_its_paths() -> None:
    doc = (b"taskType: command\ncommand: 'true'\nsweep:\n  grid:\n    hyperparameters.learning_rate: [1, 2, 3]\n"
           b"    env.SEED: ['1', '2']\n")
    plan = check_document(*parse_document(doc))
    assert [s.values for s in plan.steps] == [
        {"hyperparameters.learning_rate": lr, "env.SEED": seed} for lr in (1, 2, 3) for seed in ("1", "2")]
    assert [s.data["hyperparameters"]["learning_rate"] for s in plan.steps] == [1, 1, 2, 2, 3, 3]
    assert len({s.name for s in plan.steps}) == 6


def test_a_bad_step_names_its_field_and_yaml_line() -> None:
    doc = b"tasks:\n  a:\n    taskType: command\n    command: 'true'\n  b:\n    taskType: command\n    comand: x\n"
    with pytest.raises(ValidationFailed) as refused:
        check_document(*parse_document(doc))
    assert (refused.value.field, refused.value.line) == ("tasks.b.comand", 7)


def test_a_sweep_path_into_a_value_that_is_no_mapping_is_refused() -> None:
    doc = b"taskType: command\ncommand: 'true'\nsweep: {grid: {command.x: [1]}}\n"
    with pytest.raises(ValidationFailed) as refused:
        plan_document(*parse_document(doc))
    assert refused.value.field == "sweep.command.x"
