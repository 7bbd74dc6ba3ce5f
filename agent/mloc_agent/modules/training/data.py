"""Training data for the TRL modules: read rows from where the spec says, shape them for a trainer.

Sources (exactly one, see mloc_shared.hyperparams.TrainingDataset): ``path`` on the agent (json,
jsonl, txt, csv, parquet, or a folder saved with ``datasets``), ``uri`` (http/https, e.g. a
presigned object-store URL), ``hub`` (a Hugging Face dataset id) or inline ``rows``.
Formats: plain text, instruction (alpaca: instruction/input/output), chat ``messages``,
prompt/completion, preference (prompt/chosen/rejected) and prompt-only (GRPO).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mloc_shared.hyperparams import TrainingDataset

from mloc_agent.modules.base import TaskContext
from mloc_agent.modules.training.trainer_common import TaskInputError, download

ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
_NORMAL = {"alpaca": "instruction", "messages": "chat"}


def detect_format(columns: list[str]) -> str:
    """The data's format from its column names (after the spec's ``columns`` renames)."""
    cols = set(columns)
    if "messages" in cols:
        return "chat"
    if {"chosen", "rejected"} <= cols:
        return "preference"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    if {"instruction", "output"} <= cols:
        return "instruction"
    if "text" in cols:
        return "text"
    if "prompt" in cols:
        return "prompt"
    raise TaskInputError(f"dataset: cannot tell the format from columns {sorted(cols)}; set dataset.format and, "
                         "if the names differ, dataset.columns (e.g. {instruction: question, output: answer})")


def _read_file(path: Path, file_format: str) -> list[dict[str, Any]] | Any:
    kind = file_format if file_format != "auto" else path.suffix.lstrip(".").lower()
    if kind in ("json", "jsonl"):
        text = path.read_text(encoding="utf-8")
        stripped = text.lstrip()
        if stripped.startswith("["):
            return json.loads(text)
        if stripped.startswith("{") and kind == "json" and "\n{" not in text.strip():
            data = json.loads(text)
            return data.get("data") or data.get("rows") or [data]
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if kind == "txt":
        return [{"text": line} for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if kind in ("csv", "parquet"):
        from datasets import load_dataset

        return load_dataset(kind, data_files=str(path), split="train")
    raise TaskInputError(f"dataset.path: cannot read {path.name!r}; use .json, .jsonl, .txt, .csv or .parquet "
                         "(or set dataset.file_format)")


def _from_path(path: Path, spec: TrainingDataset) -> Any:
    from datasets import Dataset, concatenate_datasets, load_from_disk

    if not path.exists():
        raise TaskInputError(f"dataset.path: {path} does not exist on this agent")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            loaded = load_from_disk(str(path))
            return loaded[spec.split] if hasattr(loaded, "keys") else loaded
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".txt",
                                                                                   ".csv", ".parquet"))
        if not files:
            raise TaskInputError(f"dataset.path: folder {path} holds no .json/.jsonl/.txt/.csv/.parquet file")
        parts = [_read_file(f, spec.file_format) for f in files]
        return concatenate_datasets([p if isinstance(p, Dataset) else Dataset.from_list(p) for p in parts])
    rows = _read_file(path, spec.file_format)
    return rows if isinstance(rows, Dataset) else Dataset.from_list(rows)


def load_rows(dataset: dict[str, Any] | None, ctx: TaskContext, seed: int = 42) -> tuple[Any, TrainingDataset]:
    """The spec's dataset as a ``datasets.Dataset`` with our column names, plus the parsed spec."""
    from datasets import Dataset, load_dataset

    if not dataset:
        raise TaskInputError("this task type needs a 'dataset' (path, uri, hub or rows); see docs/tasks.md")
    spec = TrainingDataset.model_validate(dataset)
    if spec.rows is not None:
        if not spec.rows:
            raise TaskInputError("dataset.rows is empty")
        ds = Dataset.from_list(spec.rows)
    elif spec.path is not None:
        ds = _from_path(Path(spec.path).expanduser(), spec)
    elif spec.uri is not None:
        ds = _from_path(download(spec.uri, ctx.workdir / "dataset", unpack=True), spec)
    else:
        ds = load_dataset(spec.hub, spec.subset, split=spec.split, revision=spec.revision)
    renames = {theirs: ours for ours, theirs in spec.columns.items() if theirs in ds.column_names and theirs != ours}
    missing = [theirs for theirs in spec.columns.values() if theirs not in ds.column_names]
    if missing:
        raise TaskInputError(f"dataset.columns: the data has no column {missing[0]!r} (it has {ds.column_names})")
    if renames:
        ds = ds.rename_columns(renames)
    if spec.shuffle:
        ds = ds.shuffle(seed=seed)
    if spec.max_samples is not None:
        ds = ds.select(range(min(spec.max_samples, len(ds))))
    if len(ds) == 0:
        raise TaskInputError("the dataset holds no rows")
    return ds, spec


def data_format(ds: Any, spec: TrainingDataset) -> str:
    fmt = _NORMAL.get(spec.format, spec.format)
    return detect_format(ds.column_names) if fmt == "auto" else fmt


def _with_system(messages: list[dict[str, Any]], system: str | None) -> list[dict[str, Any]]:
    if system and not (messages and messages[0].get("role") == "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages


def for_sft(ds: Any, spec: TrainingDataset, has_chat_template: bool) -> tuple[Any, str]:
    """Rows SFTTrainer understands, and their kind: text | chat | prompt_completion.

    Instruction rows become a conversational prompt/completion when the tokenizer has a chat
    template (TRL then trains on the response only), else the alpaca prompt as plain strings.
    """
    fmt = data_format(ds, spec)
    _require(ds, fmt)
    if fmt == "text":
        return ds.select_columns(["text"]), "text"
    if fmt == "chat":
        if spec.system_prompt:
            ds = ds.map(lambda r: {"messages": _with_system(r["messages"], spec.system_prompt)})
        return ds.select_columns(["messages"]), "chat"
    if fmt == "prompt_completion":
        return ds.select_columns(["prompt", "completion"]), "prompt_completion"
    if fmt == "instruction":
        def convert(row: dict[str, Any]) -> dict[str, Any]:
            extra = (row.get("input") or "").strip()
            if has_chat_template:
                user = row["instruction"] + (f"\n\n{extra}" if extra else "")
                prompt = _with_system([{"role": "user", "content": user}], spec.system_prompt)
                return {"prompt": prompt, "completion": [{"role": "assistant", "content": row["output"]}]}
            template = ALPACA_PROMPT_INPUT if extra else ALPACA_PROMPT
            return {"prompt": template.format(instruction=row["instruction"], input=extra),
                    "completion": row["output"]}

        return ds.map(convert, remove_columns=ds.column_names), "prompt_completion"
    raise TaskInputError(f"dataset.format {fmt!r} is not SFT data; use text, instruction, chat or prompt_completion")


def for_preference(ds: Any, spec: TrainingDataset) -> Any:
    """prompt (optional) / chosen / rejected rows, for DPO and reward-model training."""
    fmt = data_format(ds, spec)
    if fmt != "preference":
        raise TaskInputError(f"dataset: preference data needs chosen and rejected columns (format {fmt!r}, "
                             f"columns {ds.column_names}); map yours with dataset.columns")
    keep = [c for c in ("prompt", "chosen", "rejected") if c in ds.column_names]
    return ds.select_columns(keep)


def for_prompts(ds: Any, spec: TrainingDataset) -> Any:
    """Prompt rows for GRPO; other columns stay (reward functions receive them, e.g. ``answer``)."""
    if "prompt" not in ds.column_names:
        if "messages" in ds.column_names:  # a chat row: everything before the last assistant turn is the prompt
            def cut(row: dict[str, Any]) -> dict[str, Any]:
                msgs = row["messages"]
                end = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=len(msgs))
                return {"prompt": _with_system(msgs[:end], spec.system_prompt)}

            return ds.map(cut, remove_columns=["messages"])
        if "instruction" in ds.column_names:
            return ds.rename_column("instruction", "prompt")
        raise TaskInputError(f"dataset: GRPO needs a 'prompt' column (columns: {ds.column_names}); "
                             "map yours with dataset.columns: {prompt: your_column}")
    return ds


def _require(ds: Any, fmt: str) -> None:
    needed = {"text": ["text"], "chat": ["messages"], "prompt_completion": ["prompt", "completion"],
              "instruction": ["instruction", "output"]}.get(fmt, [])
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise TaskInputError(f"dataset: format {fmt!r} needs column {missing[0]!r} (the data has {ds.column_names}); "
                             "map yours with dataset.columns")
