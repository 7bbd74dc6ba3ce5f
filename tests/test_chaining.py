"""Which finished tasks' outputs a spec reads: the coordinator presigns exactly these for a lease."""

from __future__ import annotations

from typing import Any

import pytest
from mloc_shared.chaining import referenced_tasks


@pytest.mark.parametrize(("spec", "expected"), [
    ({"taskType": "inference", "model": {"source": {"type": "task", "identifier": "t1"}}}, ["t1"]),
    ({"taskType": "ppo", "model": {"source": {"type": "task", "identifier": "sft"}},
      "hyperparameters": {"reward_model": "task:rm"}}, ["sft", "rm"]),
    ({"taskType": "ppo", "model": {"source": {"type": "local", "identifier": "/m"}},
      "hyperparameters": {"reward_model": "OpenAssistant/reward-model-deberta-v3-large-v2"}}, []),
    ({"taskType": "ppo", "hyperparameters": {"reward_model": "task:"}}, []),  # no id: nothing to fetch
    ({"taskType": "inference", "model": {"source": {"type": "task", "identifier": "t1"}},
      "hyperparameters": {"reward_model": "task:t1"}}, ["t1"]),  # named twice, fetched once
    ({"taskType": "command", "command": "true"}, []),
    ({"taskType": "rag_inference", "hyperparameters": {"documents": ["task:w1", "/srv/docs", "task:w2/notes/*.md",
                                                                     "task:/x", "task:w1/a.txt"]}}, ["w1", "w2"]),
])
def test_referenced_tasks(spec: dict[str, Any], expected: list[str]) -> None:
    assert referenced_tasks(spec) == expected
