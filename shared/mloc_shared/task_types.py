"""The built-in task types, listed once: the coordinator validates and sizes tasks from this table,
and the agent's module registry (mloc_agent/modules/registry.py) maps each name to its module.

The coordinator never imports the agent, so the names live here; a test asserts that the agent's
registry, the hyperparameter models and this table name the same types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["command", "training", "inference"]


@dataclass(frozen=True)
class TaskType:
    name: str
    family: Family
    default_gpus: int  # when the spec's resources.gpus is unset
    takes_dataset: bool  # ``dataset:`` is a training dataset (path, uri, hub or rows), checked at submit


_TABLE = (
    TaskType("command", "command", default_gpus=0, takes_dataset=False),
    TaskType("sft", "training", default_gpus=1, takes_dataset=True),
    TaskType("ppo", "training", default_gpus=1, takes_dataset=True),
    TaskType("dpo", "training", default_gpus=1, takes_dataset=True),
    TaskType("grpo", "training", default_gpus=1, takes_dataset=True),
    TaskType("reward_model", "training", default_gpus=1, takes_dataset=True),
    TaskType("inference", "inference", default_gpus=1, takes_dataset=True),
    # perplexity, generation metrics and lm-eval on a model (modules/eval): it runs a model, trains none
    TaskType("eval", "inference", default_gpus=1, takes_dataset=True),
    TaskType("rag_inference", "inference", default_gpus=1, takes_dataset=False),
    # its model is an endpoint: no GPU on the box unless asked
    TaskType("agent_inference", "inference", default_gpus=0, takes_dataset=False),
)
TASK_TYPES: dict[str, TaskType] = {t.name: t for t in _TABLE}

BUILTIN_TASK_TYPES: tuple[str, ...] = tuple(TASK_TYPES)
TRAINING_TYPES = frozenset(t.name for t in _TABLE if t.family == "training")
INFERENCE_TYPES = frozenset(t.name for t in _TABLE if t.family == "inference")
ML_TASK_TYPES = TRAINING_TYPES | INFERENCE_TYPES
DATASET_TYPES = frozenset(t.name for t in _TABLE if t.takes_dataset)


def default_gpus(task_type: str) -> int:
    """GPUs a task of this type gets when its spec does not say; a third-party type gets none."""
    known = TASK_TYPES.get(task_type)
    return known.default_gpus if known is not None else 0
