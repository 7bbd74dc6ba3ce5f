"""Tasks that read another task's outputs (fine-tune -> inference, reward_model -> ppo).

A spec names a finished task with ``model.source: {type: task, identifier: <task_id>}`` or, for
PPO's reward model, ``hyperparameters.reward_model: "task:<task_id>"``. Both sides use this one
function: the coordinator to decide which tasks' artifacts an agent may fetch for a lease, the
agent to know whether to ask.
"""

from __future__ import annotations

from typing import Any

TASK_PREFIX = "task:"


def referenced_tasks(spec: dict[str, Any]) -> list[str]:
    """The ids of the tasks whose outputs ``spec`` reads, in order, without duplicates."""
    found: list[str] = []
    source = ((spec.get("model") or {}).get("source") or {}) if isinstance(spec.get("model"), dict) else {}
    if source.get("type") == "task" and source.get("identifier"):
        found.append(str(source["identifier"]))
    reward = (spec.get("hyperparameters") or {}).get("reward_model")
    if isinstance(reward, str) and reward.startswith(TASK_PREFIX) and len(reward) > len(TASK_PREFIX):
        found.append(reward[len(TASK_PREFIX):])
    return list(dict.fromkeys(found))
