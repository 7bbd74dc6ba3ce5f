"""Training data for the TRL modules: read rows from where the spec says, shape them for a trainer.

Sources (exactly one, see mloc_shared.hyperparams.TrainingDataset): ``path`` on the agent (a file
or folder the one row reader reads, sources/rows.py, or a folder saved with ``datasets``), ``uri``
(http/https, e.g. a presigned object-store URL), ``hub`` (a Hugging Face dataset id) or inline ``rows``.
Formats: plain text, instruction (alpaca: instruction/input/output), chat ``messages``,
prompt/completion, preference (prompt/chosen/rejected) and prompt-only (GRPO).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mloc_shared.hyperparams import TrainingDataset

from mloc_agent.modules.base import TaskContext
from mloc_agent.modules.errors import DatasetError
from mloc_agent.modules.sources import hub
from mloc_agent.modules.sources.downloads import download
from mloc_agent.modules.sources.path_policy import PathPolicy
from mloc_agent.modules.sources.rows import read_path

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
    raise DatasetError(f"dataset: cannot tell the format from columns {sorted(cols)}; set dataset.format and, "
                       "if the names differ, dataset.columns (e.g. {instruction: question, output: answer})")


def _from_path(path: Path, spec: TrainingDataset, paths: PathPolicy | None) -> Any:
    """Rows from a file or folder: a task-named one (``paths`` checks each file of a folder) or a download."""
    from datasets import Dataset, load_from_disk

    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        loaded = load_from_disk(str(path))
        return loaded[spec.split] if hasattr(loaded, "keys") else loaded
    rows = read_path(path, spec.file_format, where="dataset.uri" if spec.uri else "dataset.path", paths=paths)
    bad = next((row for row in rows if not isinstance(row, (dict, str))), None)
    if bad is not None:
        raise DatasetError(f"dataset: a row must be an object or a string, not {bad!r}"[:200])
    return Dataset.from_list([{"text": row} if isinstance(row, str) else row for row in rows])


def load_rows(dataset: dict[str, Any] | None, ctx: TaskContext, seed: int = 42) -> tuple[Any, TrainingDataset]:
    """The spec's dataset as a ``datasets.Dataset`` with our column names, plus the parsed spec."""
    from datasets import Dataset

    if not dataset:
        raise DatasetError("this task type needs a 'dataset' (path, uri, hub or rows); see docs/tasks.md")
    spec = TrainingDataset.model_validate(dataset)
    if spec.rows is not None:
        if not spec.rows:
            raise DatasetError("dataset.rows is empty")
        ds = Dataset.from_list(spec.rows)
    elif spec.path is not None:
        ds = _from_path(ctx.paths.check(spec.path, "dataset.path"), spec, ctx.paths)
    elif spec.uri is not None:
        ds = _from_path(download(spec.uri, ctx.workdir / "dataset", urls=ctx.urls, unpack=True, what="dataset.uri"),
                        spec, None)
    else:
        ds = hub.load_dataset(spec.hub, spec.subset, spec.split, spec.revision)
    renames = {theirs: ours for ours, theirs in spec.columns.items() if theirs in ds.column_names and theirs != ours}
    missing = [theirs for theirs in spec.columns.values() if theirs not in ds.column_names]
    if missing:
        raise DatasetError(f"dataset.columns: the data has no column {missing[0]!r} (it has {ds.column_names})")
    if renames:
        ds = ds.rename_columns(renames)
    if spec.shuffle:
        ds = ds.shuffle(seed=seed)
    if spec.max_samples is not None:
        ds = ds.select(range(min(spec.max_samples, len(ds))))
    if len(ds) == 0:
        raise DatasetError("the dataset holds no rows")
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
    raise DatasetError(f"dataset.format {fmt!r} is not SFT data; use text, instruction, chat or prompt_completion")


def for_preference(ds: Any, spec: TrainingDataset) -> Any:
    """prompt (optional) / chosen / rejected rows, for DPO and reward-model training."""
    fmt = data_format(ds, spec)
    if fmt != "preference":
        raise DatasetError(f"dataset: preference data needs chosen and rejected columns (format {fmt!r}, "
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
        raise DatasetError(f"dataset: GRPO needs a 'prompt' column (columns: {ds.column_names}); "
                           "map yours with dataset.columns: {prompt: your_column}")
    return ds


def _require(ds: Any, fmt: str) -> None:
    needed = {"text": ["text"], "chat": ["messages"], "prompt_completion": ["prompt", "completion"],
              "instruction": ["instruction", "output"]}.get(fmt, [])
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise DatasetError(f"dataset: format {fmt!r} needs column {missing[0]!r} (the data has {ds.column_names}); "
                           "map yours with dataset.columns")
