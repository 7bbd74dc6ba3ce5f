"""Installing each peer into its own virtual environment under ``bench/.peers/<name>``, idempotently.

A stamp file records the pinned requirements that were installed; a venv whose stamp matches is
used as it is, so only the first run pays for installs. Packages come from PyPI (pip) and Debian
(apt-get, for the Redis server), nothing else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.peers import Peer

ROOT = Path(__file__).resolve().parents[2]
PEERS_DIR = ROOT / "bench" / ".peers"
STAMP = ".bench-installed"


def base_python() -> str:
    """The interpreter MLOC's venv was made from: peers run on the same Python version."""
    base = getattr(sys, "_base_executable", None)
    return base if base and os.path.exists(base) else shutil.which("python3") or sys.executable


def venv_python(peer: Peer) -> Path:
    return PEERS_DIR / peer.name / "bin" / "python"


def ensure_debian(packages: tuple[str, ...], log_path: Path) -> None:
    """apt-get install what is missing (needs root, as on the dev machines and CI)."""
    missing = [p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"missing Debian packages {missing}: run `sudo apt-get install -y {' '.join(missing)}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with open(log_path, "ab") as out:
        subprocess.run(["apt-get", "update", "-qq"], stdout=out, stderr=subprocess.STDOUT, env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], stdout=out, stderr=subprocess.STDOUT, env=env,
                       check=True)


def ensure(peer: Peer, log_path: Path) -> Path:
    """The peer's python, installing its venv first unless the stamp says it is already there."""
    ensure_debian(peer.debian, log_path)
    if not peer.in_own_venv:
        return Path(sys.executable)
    venv = PEERS_DIR / peer.name
    stamp = venv / STAMP
    wanted = "\n".join(peer.requirements) + "\n"
    python = venv_python(peer)
    if stamp.exists() and stamp.read_text() == wanted and python.exists():
        return python
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        if not python.exists():
            subprocess.run([base_python(), "-m", "venv", str(venv)], stdout=out, stderr=subprocess.STDOUT, check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *peer.requirements],
                       stdout=out, stderr=subprocess.STDOUT, check=True)
    stamp.write_text(wanted)
    return python
