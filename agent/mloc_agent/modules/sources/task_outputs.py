"""``model.source: {type: task, identifier: <id>}`` inside the task process: the model a finished
task left behind, from the outputs the agent fetched before the start (mloc_agent/sources.py).

A fine-tune leaves ``merged/`` or ``model/`` (a full model) and/or ``adapter/`` (LoRA). An adapter
needs its base: the source task's own ``model.source`` (recorded next to its outputs), resolved as
any model source would be, else the ``base_model_name_or_path`` in its adapter_config.json.
Stdlib only: the vLLM runtime imports this too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mloc_agent.modules.base import TaskContext
from mloc_agent.modules.errors import ModelSourceError

SOURCE_FILE = "mloc-source.json"
FULL_MODEL_DIRS = ("merged", "model")


class TaskOutputError(ModelSourceError):
    """The named task's outputs are missing or hold no model."""


@dataclass
class TaskOutput:
    task_id: str
    folder: Path
    task_type: str = "?"
    model_source: dict[str, Any] | None = None
    artifacts: list[str] = field(default_factory=list)

    def full_model(self) -> Path | None:
        for sub in FULL_MODEL_DIRS:
            if (self.folder / sub / "config.json").is_file():
                return self.folder / sub
        return None

    def adapter(self) -> Path | None:
        path = self.folder / "adapter"
        return path if (path / "adapter_config.json").is_file() else None

    def adapter_base(self) -> str | None:
        adapter = self.adapter()
        if adapter is None:
            return None
        return json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")


def task_output(task_id: str, ctx: TaskContext) -> TaskOutput:
    """The fetched outputs of ``task_id``; an error naming what is missing."""
    folder = ctx.sources_dir / task_id if ctx.sources_dir is not None else None
    if folder is None or not folder.is_dir():
        raise TaskOutputError(f"model.source: the outputs of task {task_id} were not fetched for this task "
                              "(the agent fetches them when the lease starts; is the agent older than the module?)")
    meta: dict[str, Any] = {}
    if (folder / SOURCE_FILE).is_file():
        meta = json.loads((folder / SOURCE_FILE).read_text())
    out = TaskOutput(task_id=task_id, folder=folder, task_type=meta.get("task_type", "?"),
                     model_source=meta.get("model_source"), artifacts=meta.get("artifacts", []))
    if out.full_model() is None and out.adapter() is None:
        raise TaskOutputError(f"model.source: task {task_id} ({out.task_type}) left no model (no merged/, model/ or "
                              f"adapter/ among its artifacts: {', '.join(out.artifacts) or 'none'})")
    return out
