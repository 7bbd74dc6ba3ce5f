"""The one reader of row files, so a file means the same rows to every task type: training data,
inference prompts, RAG documents and question lists.

    .json     a list; an object holding a list under rows, data or prompts; one object; or JSON Lines
    .jsonl    one value a line (a file that starts with ``[`` is read as one JSON list)
    .csv      one object a row, values as strings
    .txt      one string a non-empty line
    .parquet  one object a row (needs pyarrow, which datasets brings)

A row is an object or a string; what a row must hold is the caller's business. Stdlib at import:
the vLLM runtime imports this too.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from mloc_agent.modules.errors import DatasetError
from mloc_agent.modules.sources.path_policy import PathPolicy

KINDS = ("json", "jsonl", "csv", "txt", "parquet")
ROW_KEYS = ("rows", "data", "prompts")


def kind_of(path: Path, file_format: str = "auto", default: str | None = None) -> str | None:
    """The format to read ``path`` as: the one asked, else its suffix, else ``default``."""
    if file_format != "auto":
        return file_format
    suffix = path.suffix.lstrip(".").lower()
    return suffix if suffix in KINDS else default


def _json_lines(text: str, where: str) -> list[Any]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise DatasetError(f"{where}: line {number} is not JSON ({exc})") from None
    return rows


def _json(text: str, where: str) -> list[Any]:
    stripped = text.lstrip()
    if not stripped.startswith(("[", "{")):
        return _json_lines(text, where)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if stripped.startswith("{") and exc.msg == "Extra data":  # objects one a line, in a .json file
            return _json_lines(text, where)
        raise DatasetError(f"{where}: not valid JSON ({exc})") from None
    if isinstance(data, list):
        return data
    held = next((data[key] for key in ROW_KEYS if isinstance(data.get(key), list)), None)
    return held if held is not None else [data]


def _parquet(path: Path, where: str) -> list[Any]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(f"{where}: reading Parquet needs pyarrow on the agent (pip install datasets)") from None
    return pq.read_table(path).to_pylist()


def read_rows(path: Path, file_format: str = "auto", *, default: str | None = None,
              where: str = "dataset.path") -> list[Any]:
    """The rows of one file. ``default`` is the format of a file whose suffix says none (None: refuse it)."""
    kind = kind_of(path, file_format, default)
    if kind is None:  # never read as text: a key or token file has no row-file suffix
        hint = " (or set dataset.file_format)" if where.startswith("dataset") else ""
        raise DatasetError(f"{where}: cannot read {path.name!r}; use .json, .jsonl, .txt, .csv or .parquet{hint}")
    if kind == "parquet":
        return _parquet(path, where)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{where}: {path.name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if kind == "jsonl":
        return _json(text, where) if text.lstrip().startswith("[") else _json_lines(text, where)
    if kind == "json":
        return _json(text, where)
    if kind == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    return [line for line in text.splitlines() if line.strip()]


def read_path(path: Path, file_format: str = "auto", *, default: str | None = None,
              where: str = "dataset.path", paths: PathPolicy | None = None) -> list[Any]:
    """The rows of a file, or of every readable file in a folder (recursively, in name order). A folder a
    task named comes with the agent's ``paths`` policy, which checks each file in it (None: the agent's
    own download)."""
    if not path.exists():
        raise DatasetError(f"{where}: {path} does not exist on this agent")
    if not path.is_dir():
        return read_rows(path, file_format, default=default, where=where)
    listed = paths.files_in(path, where) if paths is not None else sorted(p for p in path.rglob("*") if p.is_file())
    files = [p for p in listed if kind_of(p) is not None]
    if not files:
        raise DatasetError(f"{where}: folder {path} holds no .json/.jsonl/.txt/.csv/.parquet file")
    return [row for f in files for row in read_rows(f, file_format, where=where)]
