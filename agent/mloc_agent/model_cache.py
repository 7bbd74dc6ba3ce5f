"""What models and datasets this agent holds, for placement (the coordinator prefers a holder) and listings.

Three places count: the Hugging Face cache (``huggingface_hub.scan_cache_dir`` on the agent's HF_HOME /
HF_HUB_CACHE, which its tasks share, so hub models that earlier tasks fetched are there), copies fetched
from the coordinator's mirror (``<data dir>/mirror/models/<hub id>/``, ``.../mirror/datasets/<hub id>/``)
and the agent's store (``<data dir>/models/`` and ``<data dir>/datasets/``, the folders tasks may name).

Scanning walks directories, so it runs in a thread at start and after each task ends, never on a poll's
path: polls carry the last result, and only when it changed since the last poll that was answered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mloc_shared.protocol import MAX_HELD_MODELS, HeldModel

from mloc_agent.modules.sources.hub import looks_like_repo_id
from mloc_agent.modules.sources.path_policy import is_path_like

log = logging.getLogger("mloc.agent")
_PARTIAL = (".incomplete", ".partial", ".tmp", ".lock")


@dataclass(frozen=True)
class ModelScan:
    """One scan's result: what the agent holds, and the free bytes of its data dir's disk."""

    models: tuple[HeldModel, ...]
    disk_free_bytes: int

    def holds(self, hub_id: str) -> str | None:
        """Where the agent holds the hub model ``hub_id`` so that a task loads it without a download."""
        for m in self.models:
            if m.id == hub_id and m.kind == "model" and m.where in ("hf-cache", "mirror"):
                return m.where
        return None


def hub_cache_dir() -> Path | None:
    """The agent's Hugging Face hub cache (HF_HUB_CACHE, else HF_HOME/hub); None without huggingface_hub."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return Path(constants.HF_HUB_CACHE)


def scan_hf_cache(cache_dir: Path | None) -> list[HeldModel]:
    """Models and datasets in a hub cache with at least one complete snapshot (a revision)."""
    if cache_dir is None or not cache_dir.is_dir():
        return []
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return []
    return [HeldModel(id=repo.repo_id, kind=repo.repo_type, bytes=repo.size_on_disk, where="hf-cache")
            for repo in info.repos if repo.repo_type in ("model", "dataset") and repo.revisions]


def _folder_bytes(folder: Path) -> int | None:
    """Bytes of the files under ``folder``, each file counted once (links to one blob are one file); None
    when it holds no file or a download into it is still under way (a ``.partial`` or ``.incomplete`` file)."""
    seen: set[tuple[int, int]] = set()
    total, files_found = 0, False
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if name.endswith(_PARTIAL):
                return None
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            files_found = True
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total if files_found else None


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and not path.name.endswith(_PARTIAL)


def _entries(root: Path) -> Iterator[tuple[str, int]]:
    """(id, bytes) of what a folder holds: ``name/`` (a folder with files), ``org/name/`` (one level deeper,
    like a hub id) or a top-level file (a dataset file). Empty and half-downloaded folders are left out."""
    if not root.is_dir():
        return
    for entry in sorted(p for p in root.iterdir() if _visible(p)):
        if entry.is_file():
            yield entry.name, entry.stat().st_size
            continue
        if not entry.is_dir():
            continue
        children = list(entry.iterdir())
        if any(c.is_file() for c in children):
            found = [(entry.name, _folder_bytes(entry))]
        else:
            found = [(f"{entry.name}/{c.name}", _folder_bytes(c)) for c in sorted(children) if c.is_dir()
                     and _visible(c)]
        yield from ((name, size) for name, size in found if size is not None)


def scan_folders(data_dir: Path) -> list[HeldModel]:
    """Mirror copies and the agent's own store, under its data dir."""
    found = []
    for where, base in (("mirror", data_dir / "mirror"), ("store", data_dir)):
        for kind, folder in (("model", "models"), ("dataset", "datasets")):
            found.extend(HeldModel(id=name, kind=kind, bytes=size, where=where)
                         for name, size in _entries(base / folder))
    return found


def scan(data_dir: Path, cache_dir: Path | None) -> ModelScan:
    """Everything, blocking: call it in a thread. A place that cannot be read counts as empty (logged)."""
    models: list[HeldModel] = []
    for what, step in (("the Hugging Face cache", lambda: scan_hf_cache(cache_dir)),
                       ("the data dir", lambda: scan_folders(data_dir))):
        try:
            models.extend(step())
        except Exception as exc:  # best effort (a corrupted cache, a folder removed meanwhile): placement
            # only prefers holders, so a place that cannot be read counts as empty
            log.warning("could not list the models in %s: %s", what, exc)
    models.sort(key=lambda m: (m.where, m.kind, m.id))
    if len(models) > MAX_HELD_MODELS:
        log.warning("this agent holds %d models and datasets; reporting the first %d", len(models), MAX_HELD_MODELS)
    data_dir.mkdir(parents=True, exist_ok=True)
    return ModelScan(tuple(models[:MAX_HELD_MODELS]), shutil.disk_usage(data_dir).free)


def spec_hub_model(spec: dict[str, Any]) -> str | None:
    """The hub id a lease's spec loads its model from (``model.source`` of type huggingface, not a path)."""
    source = (spec.get("model") or {}).get("source") or {}
    name = source.get("identifier")
    if source.get("type", "huggingface") != "huggingface" or not isinstance(name, str):
        return None
    return name if looks_like_repo_id(name) and not is_path_like(name) else None


def model_line(spec: dict[str, Any], held: ModelScan | None) -> str | None:
    """The task log's system line saying whether its hub model was already on this agent (None: no hub model)."""
    hub_id = spec_hub_model(spec)
    if hub_id is None or held is None:
        return None
    where = held.holds(hub_id)
    if where is not None:
        return f"[mloc] model {hub_id} is on this agent already ({where})\n"
    return f"[mloc] model {hub_id} is not on this agent yet: loading it downloads it\n"


class ModelCache:
    """The last scan, and what the coordinator was last told: a poll carries a scan only when what the
    agent holds changed, or its free disk moved by more than ``DISK_SLACK_BYTES`` (every task's logs and
    outputs move it a little, and the list can be long)."""

    DISK_SLACK_BYTES = 1 << 30

    def __init__(self, data_dir: Path, cache_dir: Path | None = None) -> None:
        self.data_dir = data_dir
        self.cache_dir = cache_dir
        self._cache_dir_known = cache_dir is not None
        self.current: ModelScan | None = None
        self.reported: ModelScan | None = None
        self._lock = asyncio.Lock()
        self._asked = 0  # refreshes asked for; a scan that starts covers every one asked before it
        self._scanned_for = 0  # the refreshes the last scan covers

    async def refresh(self) -> bool:
        """Scan again, off the event loop; returns whether there is news for the coordinator. Scans do
        not overlap, and a burst of task ends costs at most two: the one running and one after it (a
        refresh asked for while another waits is covered by that one)."""
        self._asked += 1
        asked = self._asked
        async with self._lock:
            if self._scanned_for >= asked:
                return self.unreported() is not None
            self._scanned_for = self._asked
            if not self._cache_dir_known:
                self.cache_dir = await asyncio.to_thread(hub_cache_dir)
                self._cache_dir_known = True
            self.current = await asyncio.to_thread(scan, self.data_dir, self.cache_dir)
            return self.unreported() is not None

    def unreported(self) -> ModelScan | None:
        """The scan to send with the next poll, or None when the coordinator has what matters of it."""
        now, told = self.current, self.reported
        if now is None:
            return None
        if told is None or now.models != told.models:
            return now
        return now if abs(now.disk_free_bytes - told.disk_free_bytes) > self.DISK_SLACK_BYTES else None

    def reported_to_coordinator(self, sent: ModelScan | None) -> None:
        """A poll that carried ``sent`` was answered (or a registration did): the coordinator has it."""
        if sent is not None:
            self.reported = sent
