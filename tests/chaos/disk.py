"""Small real filesystems for the coordinator's data dir, to fill up or to turn read-only (root only).

Full: a tmpfs of a few MiB; writes past its size fail with ENOSPC exactly as on a full disk.
Read-only: an ext4 image on a loop device mounted with ``errors=remount-ro``, then ext4's own
``trigger_fs_error``: the kernel turns the mounted filesystem read-only under the open files, as it
does when a real disk reports errors. Other ways do not work here: root ignores file modes (chmod),
and ``mount -o remount,ro`` is refused (EBUSY) while the coordinator holds its files open for
writing. Recovery is what an operator does: stop, unmount, e2fsck, mount again, start."""

from __future__ import annotations

import errno
import shutil
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

    def unmount(self) -> None:
        if self.mounted:
            res = subprocess.run(["umount", str(self.path)], capture_output=True)
            if res.returncode != 0:  # something still holds a file open: detach it anyway
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False


class Ext4Disk:
    """An ext4 image on a loop device, mounted ``errors=remount-ro`` over ``path``."""

    def __init__(self, path: Path, image: Path, size_mb: int = 32) -> None:
        self.path, self.image, self.size_mb = path, image, size_mb
        self.mounted = False

    @staticmethod
    def missing() -> str | None:
        for tool in ("mkfs.ext4", "e2fsck", "losetup"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed (e2fsprogs, mount)"
        return None

    def create(self) -> Ext4Disk:
        with open(self.image, "wb") as fh:
            fh.truncate(self.size_mb << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True, capture_output=True)
        return self.mount()

    def mount(self) -> Ext4Disk:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.path)], check=True,
                       capture_output=True)
        self.mounted = True
        return self

    def device(self) -> str:
        out = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(self.path)], capture_output=True, text=True)
        return out.stdout.strip()

    def fail(self) -> str:
        """A filesystem error, as a failing disk causes: the kernel remounts it read-only at once."""
        dev = Path(self.device()).name
        Path(f"/sys/fs/ext4/{dev}/trigger_fs_error").write_text("chaos test: simulated disk error\n")
        return subprocess.run(["findmnt", "-n", "-o", "OPTIONS", str(self.path)], capture_output=True,
                              text=True).stdout.strip()

    def repair(self) -> str:
        """Unmount, check and mount again (the coordinator must be stopped); returns e2fsck's verdict."""
        self.unmount()
        res = subprocess.run(["e2fsck", "-f", "-y", str(self.image)], capture_output=True, text=True)
        assert res.returncode in (0, 1), res.stdout + res.stderr  # 1: errors were corrected
        self.mount()
        return res.stdout.strip().splitlines()[-1] if res.stdout.strip() else f"exit {res.returncode}"

    def unmount(self) -> None:
        if self.mounted:
            res = subprocess.run(["umount", str(self.path)], capture_output=True)
            if res.returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False
