"""Before a task that reads hub ids starts: fetch their mirrored copies when the hub is out of reach
(or always, when the coordinator is set to mirror-first), and tell the task where they are.

The agent asks the coordinator (its credential, the lease's epoch) for presigned downloads of the
mirrored snapshots of the spec's hub ids (docs/models.md), and lays each out in
``<data_dir>/mirror/<kind>s/<hub id>/<revision>/``. A file is downloaded next to its place as
``<file>.mloc-part`` and resumed with a Range request after a broken connection or an agent restart;
it takes its name once its sha256 matches the manifest. A finished snapshot (its manifest written as
``.mloc-mirror.json``) is reused by later tasks without a download. The task gets the folders in
``MLOC_MIRRORED`` (modules/sources/hub.py resolves the ids to them). httpx only: the agent's main
process never imports torch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
from mloc_shared.chaining import referenced_tasks
from mloc_shared.errors import NotFound
from mloc_shared.mirror import ENV_VARIABLE, MirroredSnapshot, MirrorRequest, hub_references
from mloc_shared.protocol import Lease

from mloc_agent.client import CoordinatorClient
from mloc_agent.retries import with_retries

MANIFEST = ".mloc-mirror.json"
PART_SUFFIX = ".mloc-part"
PROBE_TIMEOUT_S = 3.0
PROBE_CACHE_S = 60.0
PROGRESS_EVERY_S = 2.0
DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = ("1", "true", "yes", "on")

_probes: dict[str, tuple[float, bool]] = {}  # endpoint -> (when, reachable)
_locks: dict[Path, asyncio.Lock] = {}  # one download of a snapshot at a time on this agent


class MirrorError(Exception):
    """A mirrored file could not be fetched intact."""


class MirrorStopped(Exception):
    """The lease was cancelled or lost while a snapshot came down (its partial files stay, to resume)."""


async def hub_reachable(env: Mapping[str, str], now: Callable[[], float] = time.monotonic) -> bool:
    """Whether the task would reach the hub: False when it is told to stay offline, else one HEAD of
    HF_ENDPOINT with a short timeout, its answer kept a minute (every task of a burst asks)."""
    if env.get("HF_HUB_OFFLINE", "").lower() in _TRUE:
        return False
    endpoint = env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    cached = _probes.get(endpoint)
    if cached is not None and now() - cached[0] < PROBE_CACHE_S:
        return cached[1]
    try:
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client:
            await client.head(endpoint)
        reachable = True  # any answer: a 4xx from a proxy still means the network reaches it
    except httpx.HTTPError:
        reachable = False
    _probes[endpoint] = (now(), reachable)
    return reachable


def snapshot_folder(data_dir: Path, snap: MirroredSnapshot) -> Path:
    return data_dir / "mirror" / f"{snap.kind}s" / snap.hub_id / snap.revision


def _inside(root: Path, name: str) -> Path:
    target = (root / name).resolve()
    if not str(target).startswith(str(root.resolve()) + os.sep):
        raise MirrorError(f"mirrored file {name!r} leaves its folder")
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _manifest(snap: MirroredSnapshot) -> list[dict[str, object]]:
    return [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in snap.files]


def _is_complete(folder: Path, snap: MirroredSnapshot) -> bool:
    try:
        return json.loads((folder / MANIFEST).read_text()) == _manifest(snap)
    except (OSError, ValueError):
        return False


class _Progress:
    """``[mloc] mirror: <id> 12/40 MB`` every few seconds, and once at the end."""

    def __init__(self, label: str, total: int, write: Callable[[str], None],
                 stopped: Callable[[], bool] = lambda: False) -> None:
        self.label, self.total, self.write, self.stopped = label, total, write, stopped
        self.done = 0
        self.shown = time.monotonic()  # a snapshot fetched within seconds shows its last line only

    def add(self, n: int, force: bool = False) -> None:
        if self.stopped():
            raise MirrorStopped
        self.done += n
        now = time.monotonic()
        if force or now - self.shown >= PROGRESS_EVERY_S:
            self.shown = now
            self.write(f"[mloc] mirror: {self.label} {self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB\n")


async def download_snapshot(client: CoordinatorClient, snap: MirroredSnapshot, data_dir: Path,
                            write: Callable[[str], None],
                            stopped: Callable[[], bool] = lambda: False) -> tuple[Path, bool]:
    """The snapshot's folder on this agent, downloaded (or finished) now unless it already was; and
    whether anything was downloaded."""
    folder = snapshot_folder(data_dir, snap)
    lock = _locks.setdefault(folder, asyncio.Lock())
    async with lock:
        if _is_complete(folder, snap):
            return folder, False
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        progress = _Progress(f"{snap.hub_id}@{snap.revision}", sum(f.size for f in snap.files), write, stopped)
        for f in snap.files:
            target = _inside(folder, f.path)
            if target.is_file() and target.stat().st_size == f.size and await asyncio.to_thread(_sha256, target) \
                    == f.sha256:
                progress.add(f.size)
                continue
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
            part = target.with_name(target.name + PART_SUFFIX)
            await _fetch_file(client, f.url, part, f.size, f.sha256, progress)
            os.replace(part, target)
        progress.add(0, force=True)
        await asyncio.to_thread((folder / MANIFEST).write_text, json.dumps(_manifest(snap)))
        return folder, True


async def _fetch_file(client: CoordinatorClient, url: str, part: Path, size: int, sha256: str,
                      progress: _Progress) -> None:
    """Download into ``part``, resuming what is there; a file whose digest is wrong is fetched once more
    from its first byte."""
    for fresh in (False, True):
        if fresh or (part.exists() and part.stat().st_size > size):
            part.unlink(missing_ok=True)
        if part.exists():
            progress.add(part.stat().st_size)
        await with_retries(lambda: client.download_resuming(url, str(part), progress.add), 600, "mirror download")
        if part.stat().st_size == size and await asyncio.to_thread(_sha256, part) == sha256:
            return
        progress.add(-part.stat().st_size)
    part.unlink(missing_ok=True)
    raise MirrorError(f"mirrored file {part.name.removesuffix(PART_SUFFIX)} does not match its sha256 "
                      "after two downloads; push the snapshot again")


async def fetch_mirror(client: CoordinatorClient, lease: Lease, data_dir: Path, env: Mapping[str, str],
                       write: Callable[[str], None], stopped: Callable[[], bool] = lambda: False) -> dict[str, str]:
    """The variables to add to the task's environment: ``MLOC_MIRRORED`` (and offline flags when the
    hub is out of reach), or none when the task reads no mirrored hub id or can use the hub, or when
    ``stopped`` (a cancel, a lost lease) ended the download: the run then stops as it would have."""
    if not hub_references(lease.spec) and not referenced_tasks(lease.spec):  # a chained task's base may be one
        return {}
    try:
        answer = await with_retries(lambda: client.mirror(lease.task_id, MirrorRequest(epoch=lease.epoch)), 120,
                                    "mirror")
    except NotFound:  # a coordinator older than the mirror: the task uses the hub as before
        return {}
    if not answer.snapshots or answer.mode == "off":
        return {}
    reachable = True if answer.mode == "first" else await hub_reachable(env)
    if answer.mode == "fallback" and reachable:
        return {}
    mapping: dict[str, str] = {}
    for snap in answer.snapshots:
        try:
            folder, fetched = await download_snapshot(client, snap, data_dir, write, stopped)
        except MirrorStopped:
            write(f"[mloc] mirror: stopped fetching {snap.hub_id}@{snap.revision}; its files resume next time\n")
            return {}
        how = "downloaded" if fetched else "already on this agent"
        write(f"[mloc] mirror: {snap.kind} {snap.hub_id}@{snap.revision} from the coordinator's mirror ({how})\n")
        mapping[f"{snap.kind}:{snap.hub_id}"] = str(folder)
    out = {ENV_VARIABLE: json.dumps(mapping)}
    if answer.mode == "fallback" or not await hub_reachable(env):
        out.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")  # no 50 s of retries for anything else
    return out
