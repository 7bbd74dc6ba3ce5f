"""The built-in task types are listed once (mloc_shared.task_types); everything else that names them
must agree: the agent's module registry, the hyperparameter models, and what the coordinator accepts."""

from __future__ import annotations

import pytest
from mloc_agent.modules import registry
from mloc_shared.hyperparams import HYPERPARAMETERS
from mloc_shared.task_types import BUILTIN_TASK_TYPES, DATASET_TYPES, ML_TASK_TYPES, TASK_TYPES, default_gpus
from mloc_shared.taskspec import TaskSpec


def test_the_agent_registry_maps_exactly_the_shared_task_types() -> None:
    assert sorted(registry.BUILTIN) == sorted(BUILTIN_TASK_TYPES)


@pytest.mark.parametrize("task_type", BUILTIN_TASK_TYPES)
def test_each_registered_module_class_says_the_type_it_is_registered_under(task_type: str) -> None:
    assert registry.load(registry.BUILTIN[task_type]).task_type == task_type


def test_every_ml_type_has_hyperparameters_and_command_has_none() -> None:
    assert set(HYPERPARAMETERS) == ML_TASK_TYPES
    assert set(BUILTIN_TASK_TYPES) - ML_TASK_TYPES == {"command"}


def test_dataset_types_are_ml_types() -> None:
    assert DATASET_TYPES <= ML_TASK_TYPES and "rag_inference" not in DATASET_TYPES


# what a type needs beyond its name to be a valid spec
MINIMAL = {"command": {"command": "true"},
           "eval": {"model": {"source": {"identifier": "m"}}, "dataset": {"rows": [{"text": "t"}]}}}


@pytest.mark.parametrize("task_type", BUILTIN_TASK_TYPES)
def test_a_spec_without_resources_gets_its_types_default_gpus(task_type: str) -> None:
    spec = TaskSpec.model_validate({"taskType": task_type, **MINIMAL.get(task_type, {})})
    assert spec.required_gpus() == TASK_TYPES[task_type].default_gpus == default_gpus(task_type)


def test_a_third_party_type_gets_no_gpu_unless_asked() -> None:
    assert default_gpus("my_plugin.task") == 0
