"""Tasks that read another task's outputs (fine-tune -> inference, reward_model -> ppo).

A spec names a finished task with ``model.source: {type: task, identifier: <task_id>}``, for
PPO's reward model ``hyperparameters.reward_model: "task:<task_id>"``, and among RAG documents
``"task:<task_id>"`` or ``"task:<task_id>/<artifact name or glob>"``. Both sides use this one
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
    hyperparameters = spec.get("hyperparameters") if isinstance(spec.get("hyperparameters"), dict) else {}
    documents = hyperparameters.get("documents")
    for ref in [hyperparameters.get("reward_model"), *(documents if isinstance(documents, list) else [])]:
        if isinstance(ref, str) and ref.startswith(TASK_PREFIX) and ref[len(TASK_PREFIX):].partition("/")[0]:
            found.append(ref[len(TASK_PREFIX):].partition("/")[0])
    return list(dict.fromkeys(found))
