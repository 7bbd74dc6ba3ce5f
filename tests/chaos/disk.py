"""A small real filesystem for the coordinator's data dir, to fill up or make read-only.

A tmpfs of a few MiB mounted over the data dir (root only): writes past its size fail with ENOSPC
exactly as on a full disk, and ``mount -o remount,ro`` makes every write fail with EROFS, even
through files already open. chmod would not do: root ignores file modes."""

from __future__ import annotations

import errno
import subprocess
import uuid
from pathlib import Path


def available(probe_dir: Path) -> str | None:
    """Why a tmpfs cannot be mounted here (None when it can)."""
    probe = probe_dir / f"mount-probe-{uuid.uuid4().hex[:6]}"
    probe.mkdir(parents=True)
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True,
                             text=True)
        if res.returncode != 0:
            return f"cannot mount a tmpfs (needs root): {res.stderr.strip()}"
        subprocess.run(["umount", str(probe)], capture_output=True)
        return None
    finally:
        probe.rmdir()


class SmallDisk:
    def __init__(self, path: Path, size_mb: int) -> None:
        self.path, self.size_mb = path, size_mb
        self.filler = path / "filler.bin"
        self.mounted = False

    def mount(self) -> SmallDisk:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0755", "tmpfs", str(self.path)],
                       check=True, capture_output=True)
        self.mounted = True
        return self

    def fill(self) -> int:
        """Write a filler file until the filesystem is full; returns the bytes written."""
        written = 0
        block = b"\0" * 65536
        with open(self.filler, "ab", buffering=0) as fh:
            while True:
                try:
                    written += fh.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
            for size in (4096, 512, 1):  # the last partial blocks too
                try:
                    while True:
                        written += fh.write(b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def read_only(self, ro: bool) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if ro else 'rw'}", str(self.path)], check=True,
                       capture_output=True)

    def unmount(self) -> None:
        if self.mounted:
            res = subprocess.run(["umount", str(self.path)], capture_output=True)
            if res.returncode != 0:  # something still holds a file open: detach it anyway
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False
