"""``mloc submit`` of a pipeline file or a sweep, ``mloc pipelines`` and ``mloc pipeline ID``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from mloc_shared.api_client import ApiClient
from mloc_shared.pipelines import is_multi

DONE = frozenset({"succeeded", "failed", "cancelled"})
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def is_multi_file(body: bytes) -> bool:
    """Whether a file is a pipeline (``tasks:`` a mapping) or a sweep; unreadable ones go to the task
    endpoint, which says what is wrong with them."""
    try:
        data = yaml.load(body.decode("utf-8"), Loader=_LOADER)  # a safe loader
    except (yaml.YAMLError, UnicodeDecodeError):
        return False
    return is_multi(data)


def submit(client: ApiClient, body: bytes) -> dict[str, Any]:
    return client.post("/api/v1/pipelines", content=body, headers={"Content-Type": "application/yaml"})


def _values(step: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in (step.get("values") or {}).items())


def _final(step: dict[str, Any]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in (step.get("final") or {}).items())


def table(record: dict[str, Any]) -> Table:
    """Each step: its task, state, values (a sweep's), final metrics, and why it waits or failed."""
    out = Table("step", "task", "state", "values", "final", "reason / error",
                title=f"{record['kind']} {record['id']} ({record['name']}): {record['state']}")
    for s in record.get("steps", []):
        out.add_row(s["name"] or "", s["task_id"], s["state"], _values(s), _final(s),
                    (s.get("pending_reason") or s.get("error") or "")[:70])
    return out


def follow(client: ApiClient, pipeline_id: str, out: Console, call: Callable[..., Any],
           interval: float = 0.5) -> dict[str, Any]:
    """Print each step's state changes until every step has ended; the last record."""
    seen: dict[str, str] = {}
    while True:
        record = call(client.get, f"/api/v1/pipelines/{pipeline_id}")
        for s in record["steps"]:
            if seen.get(s["task_id"]) != s["state"]:
                seen[s["task_id"]] = s["state"]
                why = s.get("pending_reason") if s["state"] == "blocked" else s.get("error")
                out.print(f"{time.strftime('%H:%M:%S')} {s['name'] or s['task_id']:<24} {s['state']:<10}"
                          + (f" {_values(s)}" if s.get("values") else "") + (f"  {why}" if why else ""),
                          highlight=False)
        if all(s["state"] in DONE for s in record["steps"]):
            return record
        time.sleep(interval)
