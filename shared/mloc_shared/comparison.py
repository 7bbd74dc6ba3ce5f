"""Comparing tasks: each one's final metrics and the hyperparameters that tell them apart.

One place for "the final metrics of a task", used by the coordinator's ``GET /api/v1/compare`` (which
the compare page and a pipeline or sweep page read) and by ``mloc compare``. Pure functions of task
records (``GET /api/v1/tasks/{id}``'s answer): no I/O here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# the last progress line's own fields that are metrics (step, total, ETA... are not)
PROGRESS_FIELDS = ("loss", "learning_rate")
MAX_TASKS = 50  # ids one comparison takes


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def final_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """A task's final metrics: its last progress line's loss, learning rate and metrics, then its
    result's ``metrics`` (an eval's, a module's summary), which win over a progress value of the same name."""
    out: dict[str, float] = {}
    progress = record.get("progress") or {}
    for name in PROGRESS_FIELDS:
        if (v := _number(progress.get(name))) is not None:
            out[name] = v
    for source in (progress.get("metrics"), (record.get("result") or {}).get("metrics")):
        if isinstance(source, Mapping):
            for name, value in source.items():
                if (v := _number(value)) is not None:
                    out[str(name)] = v
    return out


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted paths (``optim.betas``); lists stay values."""
    if not isinstance(value, Mapping):
        return {prefix: value} if prefix else {}
    out: dict[str, Any] = {}
    for key, item in value.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(item, Mapping) and item:
            out.update(flatten(item, path))
        else:
            out[path] = item
    return out


def hyperparameters(record: Mapping[str, Any]) -> dict[str, Any]:
    return flatten((record.get("spec") or {}).get("hyperparameters") or {})


def differing(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The paths whose values are not the same in every row (missing counts as a value); with a single
    row, all of them, so one task's table still shows what it ran with."""
    paths = sorted({p for row in rows for p in row})
    if len(rows) <= 1:
        return paths
    missing = object()
    return [p for p in paths if len({json.dumps(r.get(p, missing), sort_keys=True, default=repr) for r in rows}) > 1]


def compare(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The comparison table: ``tasks`` (id, name, type, state, metrics, hyperparameters that differ), in
    the order given, and the column names: ``hyperparameters`` (dotted paths) and ``metrics``."""
    records = list(records)
    hps = [hyperparameters(r) for r in records]
    columns = differing(hps)
    finals = [final_metrics(r) for r in records]
    metric_names = sorted({m for f in finals for m in f}, key=lambda m: (m not in PROGRESS_FIELDS, m))
    tasks = [{"id": r.get("id"), "name": r.get("name"), "task_type": r.get("task_type"), "state": r.get("state"),
              "step": (r.get("progress") or {}).get("step"), "metrics": f,
              "hyperparameters": {c: hp[c] for c in columns if c in hp}}
             for r, hp, f in zip(records, hps, finals, strict=True)]
    return {"tasks": tasks, "hyperparameters": columns, "metrics": metric_names}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def table_rows(comparison: Mapping[str, Any]) -> list[list[str]]:
    """The table as text cells, a header row first: task, type, state, step, hyperparameters, metrics."""
    hp, metrics = comparison["hyperparameters"], comparison["metrics"]
    header = ["task", "type", "state", "step", *hp, *metrics]
    rows = [header]
    for t in comparison["tasks"]:
        rows.append([str(t.get("name") or t["id"]), str(t.get("task_type") or ""), str(t.get("state") or ""),
                     _cell(t.get("step")), *(_cell(t["hyperparameters"].get(c)) for c in hp),
                     *(_cell(t["metrics"].get(m)) for m in metrics)])
    return rows


def format_table(comparison: Mapping[str, Any]) -> str:
    """Aligned columns (text left, numbers right), for a terminal."""
    rows = table_rows(comparison)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    numeric = [all(_is_number(r[i]) for r in rows[1:]) and len(rows) > 1 for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    if text == "-":
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True
