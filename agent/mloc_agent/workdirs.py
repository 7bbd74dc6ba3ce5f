"""Each task's work dir: made before the task starts, removed once its result is acknowledged, and
swept at start-up when an earlier run of the agent died without removing it.

Both happen off the event loop (a busy or network disk can stall a mkdir for milliseconds, and every
other lease's heartbeats wait on that loop). Removal is fire-and-forget: one janitor thread takes
dirs from a queue, so a finished task costs the loop a queue put, not a thread hop and a wake-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import threading
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)


def make_dirs(*dirs: Path) -> None:
    """Each dir and its parents (os.makedirs: no exception per missing parent, unlike Path.mkdir)."""
    for d in dirs:
        os.makedirs(d, exist_ok=True)


def remove_workdir(workdir: Path, max_entries: int = 16) -> None:
    """Delete a task's work dir. A dir the task left (nearly) empty goes with a few rmdir/unlink
    calls; anything larger with rmtree."""
    try:
        entries = list(os.scandir(workdir))
        if len(entries) <= max_entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    os.rmdir(entry.path)  # OSError if not empty: rmtree below
                else:
                    os.unlink(entry.path)
            os.rmdir(workdir)
            return
    except FileNotFoundError:
        return
    except NotADirectoryError:
        with contextlib.suppress(OSError):
            os.unlink(workdir)
        return
    except OSError:
        pass
    shutil.rmtree(workdir, ignore_errors=True)


def set_aside_stale(work_root: Path, trash: Path) -> list[Path]:
    """Move what an earlier run of this agent left in ``work_root`` (killed with -9, or the box lost
    power: its task processes are gone, the warden saw to that) into ``trash``, and return everything
    there for the janitor. Renames only, so the agent starts at once however large the leftovers."""
    try:
        leftovers = list(os.scandir(work_root))
    except FileNotFoundError:
        leftovers = []
    if leftovers:
        os.makedirs(trash, exist_ok=True)
    for entry in leftovers:
        with contextlib.suppress(OSError):
            os.rename(entry.path, trash / f"{entry.name}.{uuid.uuid4().hex[:8]}")
    try:  # an earlier sweep may have been cut short too
        return [Path(e.path) for e in os.scandir(trash)]
    except FileNotFoundError:
        return []


class Janitor:
    """Removes finished tasks' work dirs in a thread of its own, in the order they finished."""

    _STOP = object()

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="mloc-janitor", daemon=True)
        self._thread.start()

    def discard(self, workdir: Path) -> None:
        """Remove ``workdir`` soon; returns at once."""
        self._queue.put(workdir)

    def close(self, timeout: float = 10.0) -> None:
        """Finish the removals already queued (at most ``timeout`` seconds), then stop the thread."""
        self._queue.put(self._STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("work dirs still being removed after %.0fs; leaving the rest", timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            t0 = time.monotonic()
            remove_workdir(item)  # type: ignore[arg-type]
            if time.monotonic() - t0 > 5:
                log.warning("removing %s took %.0fs", item, time.monotonic() - t0)
