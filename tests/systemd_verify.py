"""`systemd-analyze verify` on a unit file, in a scratch root so that it needs nothing installed.

verify checks that ExecStart's program exists and is executable, so the unit is placed in a root
holding a stub at that path plus a copy of the host's system units (the targets it refers to).
verify exits 0 even when it warns about a line it ignored, so any output counts as a failure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ANALYZE = shutil.which("systemd-analyze")
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def verify(unit: Path, scratch: Path, dropins: list[Path] | None = None) -> str:
    """Run verify on ``unit`` (with its drop-ins); returns the output ('' when the unit is clean)."""
    root = scratch / f"root-{unit.stem}"
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    text = unit.read_text()
    extra = "\n".join(d.read_text() for d in dropins or [])
    for exe in re.findall(r"^Exec\w+=[-@+!:]*(/\S+)", text + "\n" + extra, flags=re.M):
        stub = root / exe.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    (units / unit.name).write_text(text)
    for dropin in dropins or []:
        target = units / f"{unit.name}.d" / dropin.name
        target.parent.mkdir(exist_ok=True)
        target.write_text(dropin.read_text())
    proc = subprocess.run([ANALYZE, "verify", f"--root={root}", "--man=no", "--generators=no", unit.name],
                          capture_output=True, text=True, timeout=120)
    return (proc.stdout + proc.stderr).strip() + ("" if proc.returncode == 0 else f"\nexit code {proc.returncode}")
