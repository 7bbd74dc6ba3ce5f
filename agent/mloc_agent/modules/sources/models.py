"""The one model-source resolver: ``model.source`` -> a base model, plus a LoRA adapter to apply on it.

``model.source`` may name a model (hub id, path, URL), an adapter folder (it holds
adapter_config.json and names its base), or a finished task (``type: task``): that task's merged or
full model if it wrote one, else its adapter on the base that task itself started from (resolved
recursively through chains of tasks). Every module resolves models here: training (sft, dpo, grpo,
reward_model), ppo (a policy that starts from a fine-tune's adapter) and inference (both engines).
A hub id is checked once (sources/hub.py) so an agent without network fails in a second, not 50.
Stdlib only at import: the vLLM runtime imports it too.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mloc_agent.modules.base import TaskContext
from mloc_agent.modules.errors import ModelSourceError
from mloc_agent.modules.sources import hub
from mloc_agent.modules.sources.downloads import download
from mloc_agent.modules.sources.path_policy import is_path_like
from mloc_agent.modules.sources.task_outputs import task_output

MAX_CHAIN = 4


@dataclass
class ResolvedModel:
    base: str  # what from_pretrained / vLLM opens
    adapter: Path | None  # a LoRA folder applied on top, or None
    tokenizer: str
    label: str

    def describe(self) -> str:
        return self.label + (f" + adapter {self.adapter.parent.name}/{self.adapter.name}" if self.adapter else "")

    def loadable(self) -> str:
        """One name for ``from_pretrained``: the adapter folder (transformers puts it on its base when
        peft is installed), else the model itself. What the training modules load."""
        return str(self.adapter) if self.adapter is not None else self.base


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file()


def _adapter_base(adapter: Path) -> str | None:
    return json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")


def source_path(source: dict[str, Any], ctx: TaskContext) -> str:
    """A name or folder that ``from_pretrained`` can open, for a source that is not ``type: task``."""
    kind, identifier = source.get("type", "huggingface"), str(source["identifier"])
    if kind == "local":
        path = ctx.paths.check(identifier, "model.source.identifier")
        if not path.exists():
            raise ModelSourceError(f"model.source.identifier: {path} does not exist on agent {socket.gethostname()}")
        return str(path)
    if kind in ("uri", "s3"):
        return str(download(identifier, ctx.workdir / "model-source", urls=ctx.urls, unpack=True,
                            what="model.source"))
    return hub.model_name(identifier, source.get("revision"), paths=ctx.paths)  # huggingface: a hub id (or a path)


def resolve_model(model_spec: dict[str, Any], ctx: TaskContext) -> ResolvedModel:
    """``model.source`` -> base (+ adapter). A source folder holding adapter_config.json is an adapter too."""
    source = model_spec["source"]
    if source.get("type") == "task":
        return _from_task(str(source["identifier"]), ctx, 0)
    path = source_path(source, ctx)
    folder = Path(path)
    if (folder / "adapter_config.json").is_file():
        base = _adapter_base(folder)
        if not base:
            raise ModelSourceError(f"model.source: adapter {folder} does not name its base model")
        return ResolvedModel(base, folder, str(folder) if _has_tokenizer(folder) else base, base)
    return ResolvedModel(path, None, path, source["identifier"])


def _from_task(task_id: str, ctx: TaskContext, depth: int) -> ResolvedModel:
    out = task_output(task_id, ctx)
    full = out.full_model()
    if full is not None:
        return ResolvedModel(str(full), None, str(full), f"task {task_id} {full.name}/")
    adapter = out.adapter()
    assert adapter is not None
    base: str | None = None
    src = out.model_source or {}
    if src.get("type") == "task":
        if depth >= MAX_CHAIN:
            raise ModelSourceError(f"model.source: more than {MAX_CHAIN} tasks chained")
        parent = _from_task(str(src["identifier"]), ctx, depth + 1)
        if parent.adapter is not None:
            raise ModelSourceError(f"task {task_id} trained an adapter on another task's adapter; run that task with "
                                 "merge_adapter: true so its merged model can be the base")
        base = parent.base
    elif src:
        try:
            base = source_path(src, ctx)
        except ModelSourceError:
            base = None  # e.g. a local path of the training agent: try the adapter's own record
    field = f"model.source: task {task_id}'s adapter base"
    if not base:
        base = out.adapter_base()
        if base and not is_path_like(base) and hub.looks_like_repo_id(base):
            base = hub.model_name(base, paths=ctx.paths, field=field)
    if base and is_path_like(base):
        base = str(ctx.paths.check(base, field))
    if not base or (is_path_like(base) and not Path(base).exists()):
        raise ModelSourceError(f"model.source: task {task_id}'s adapter needs its base model {base!r}, which is not on "
                             "this agent; place it at the same path, or train with merge_adapter: true")
    tokenizer = str(adapter) if _has_tokenizer(adapter) else base
    return ResolvedModel(base, adapter, tokenizer, f"{base} (task {task_id})")
