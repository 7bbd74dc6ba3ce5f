"""What the chaos scenarios share: an independent ledger of task runs, reading every task back,
and waiting for a whole load to end while the coordinator may be down."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from tests.harness import FINAL, Coordinator


class Ledger:
    """A file each task appends one line to (``>>`` opens it O_APPEND; a short line is one write()).

    It is written by the task processes themselves, so it counts runs independently of what the
    coordinator believes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append_cmd(self, word: str = "") -> str:
        """A shell snippet that appends ``[word ]$MLOC_TASK_ID`` as one line."""
        prefix = f"{word} " if word else ""
        return f'echo "{prefix}$MLOC_TASK_ID" >> {self.path}'

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []

    def counts(self, word: str = "") -> Counter[str]:
        out: Counter[str] = Counter()
        for line in self.lines():
            parts = line.split()
            if word and len(parts) == 2 and parts[0] == word:
                out[parts[1]] += 1
            elif not word and len(parts) == 1:
                out[parts[0]] += 1
        return out


def exactly_once(counts: Counter[str], ids: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
    """(ids never run, ids run more than once, runs of ids nobody submitted)."""
    wanted = set(ids)
    missing = sorted(i for i in wanted if counts[i] == 0)
    twice = sorted(i for i in wanted if counts[i] > 1)
    unknown = sorted(set(counts) - wanted)
    return missing, twice, unknown


def all_tasks(coord: Coordinator) -> dict[str, dict[str, Any]]:
    """Every task the coordinator knows, by id (paged, 500 at a time)."""
    tasks: dict[str, dict[str, Any]] = {}
    page = 1
    while True:
        resp = coord.http.get("/api/v1/tasks", params={"page": page, "page_size": 500})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        tasks.update({t["id"]: t for t in body["tasks"]})
        if page >= body["pages"]:
            return tasks
        page += 1


def count_in(coord: Coordinator, state: str) -> int | None:
    """How many tasks are in ``state``; None while the coordinator does not answer."""
    try:
        resp = coord.http.get("/api/v1/tasks", params={"state": state, "page_size": 1}, timeout=5)
    except httpx.HTTPError:
        return None
    return resp.json()["total"] if resp.status_code == 200 else None


def wait_load_done(coord: Coordinator, total: int, timeout: float) -> dict[str, int]:
    """Wait until ``total`` tasks (all the coordinator has) are in a final state, tolerating a coordinator
    that is restarting."""
    deadline = time.monotonic() + timeout
    last: dict[str, int | None] = {}
    while time.monotonic() < deadline:
        last = {s: count_in(coord, s) for s in sorted(FINAL)}
        if all(v is not None for v in last.values()) and sum(v or 0 for v in last.values()) >= total:
            return {k: v or 0 for k, v in last.items()}
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s: {total} tasks not all finished (last counts {last})")
