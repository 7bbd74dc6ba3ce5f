"""Task modules by task type: the built-ins plus third-party ones from the ``mloc.modules`` entry
point group. Looking a module up imports only its light module file; a module imports its heavy
libraries (torch, trl, ...) inside ``execute``, in the child process.

The built-in names are mloc_shared.task_types.BUILTIN_TASK_TYPES (what the coordinator accepts);
``BUILTIN`` maps each to its class, and tests/test_task_types.py checks that the two agree."""

from __future__ import annotations

import importlib
import importlib.util
import logging
from importlib.metadata import entry_points

from mloc_agent.modules.base import BaseModule

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "mloc.modules"
BUILTIN: dict[str, str] = {  # mloc_shared.task_types names -> 'package.module:Class'
    "command": "mloc_agent.modules.command:CommandModule",
    "rag_inference": "mloc_agent.modules.rag.rag_inference:RagModule",
    "agent_inference": "mloc_agent.modules.agents.agent_inference:AgentInferenceModule",
    "sft": "mloc_agent.modules.training.sft:SFTModule",
    "dpo": "mloc_agent.modules.training.dpo:DPOModule",
    "grpo": "mloc_agent.modules.training.grpo:GRPOModule",
    "reward_model": "mloc_agent.modules.training.reward_model:RewardModelModule",
    "ppo": "mloc_agent.modules.ppo.ppo:PPOModule",
    "inference": "mloc_agent.modules.inference.inference:InferenceModule",
    "eval": "mloc_agent.modules.eval.evaluate:EvalModule",
}


def references() -> dict[str, str]:
    """task type -> 'package.module:Class', built-ins first, entry points may add (not replace)."""
    refs = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        refs.setdefault(ep.name, ep.value)
    return refs


def load(reference: str) -> type[BaseModule]:
    module_name, _, attr = reference.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, BaseModule)):
        raise TypeError(f"{reference} is not a BaseModule subclass")
    return cls


def missing_requirements(cls: type[BaseModule]) -> list[str]:
    return [name for name in cls.requires if importlib.util.find_spec(name) is None]


def available(disabled: list[str], runtimes: dict[str, str]) -> dict[str, str]:
    """The task types this agent can run: installed (or given a runtime), and not disabled."""
    out: dict[str, str] = {}
    for task_type, ref in references().items():
        if task_type in disabled:
            continue
        try:
            cls = load(ref)
        except Exception as exc:  # a broken third-party module must not stop the agent
            log.warning("task module %s (%s) cannot be loaded: %s", task_type, ref, exc)
            continue
        missing = [] if task_type in runtimes else missing_requirements(cls)
        if missing:
            log.info("task type %s unavailable: missing %s", task_type, ", ".join(missing))
            continue
        out[task_type] = ref
    return out
