"""Prepares the GPU machine, which has no network: a venv over its packages holding the carried
wheels and MLOC from the working tree.

``--system-site-packages`` keeps the machine's CUDA torch (and whatever else satisfies MLOC's
pins); pip installs a carried wheel only where nothing there does (transformers 5.24 over the
machine's 5.17, for one). MLOC's three packages are built from the working tree without build
isolation (no network for setuptools) and without their dependencies, which the step before put
in place. Standard library only, plus ``packaging`` (pins.py): it runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from bench.gpu import pins
from bench.gpu.wheels import ARCHIVE, MANIFEST

VERSIONS_OF = ("torch", "transformers", "trl", "datasets", "peft", "accelerate", "bitsandbytes", "pyarrow", "pandas",
               "huggingface-hub", "nvidia-ml-py", "pydantic", "sqlalchemy", "mloc-shared", "mloc-server", "mloc-agent")


def _stamp(wheels: Path) -> str:
    """Changes when the carried set or the project's pins do: a venv from an earlier run is reused otherwise."""
    digest = hashlib.sha256((wheels / MANIFEST).read_bytes())
    for part in ("shared", "server", "agent"):
        digest.update((pins.REPO / part / "pyproject.toml").read_bytes())
    return digest.hexdigest()[:16]


def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=pins.REPO,
                              env={**os.environ, **(env or {})})
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{cmd[2:5]} failed (exit {done.returncode}); the end of {log}:\n{tail}")


def versions(python: Path, env: dict[str, str] | None = None) -> dict[str, str | None]:
    """The versions the venv's interpreter resolves (the machine's or the carried ones)."""
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {}\n"
            "for n in sys.argv[1:]:\n"
            "    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: out[n] = None\n"
            "print(json.dumps(out))")
    done = subprocess.run([str(python), "-c", code, *VERSIONS_OF], capture_output=True, text=True, check=True,
                          env={**os.environ, **(env or {})})
    return json.loads(done.stdout)


USER_BASE = pins.REPO / ".gpu-kit-user"  # the fallback when the machine's Python cannot make a venv


def _layout(venv: Path | None, log: Path) -> tuple[str, Path, Path, list[str], dict[str, str]]:
    """(kind, home, python, extra pip flags, environment) of where the kit installs. A venv over the
    machine's packages; if this Python cannot make one (no ensurepip), a user base of the kit's own,
    ahead of the machine's packages on sys.path; ``venv=None``: this interpreter's environment
    (a rehearsal in a venv that stands for the GPU machine)."""
    if venv is None:
        return "here", Path(sys.prefix), Path(sys.executable), [], {}
    try:
        _run([sys.executable, "-m", "venv", "--clear", "--system-site-packages", str(venv)], log)
        return "venv", venv, venv / "bin" / "python", [], {}
    except RuntimeError:
        # a user base of our own: PEP 668's guard protects the machine's packages, which this leaves alone
        env = {"PYTHONUSERBASE": str(USER_BASE), "PIP_BREAK_SYSTEM_PACKAGES": "1"}
        return "user", USER_BASE, Path(sys.executable), ["--user"], env


def ensure_venv(venv: Path | None, wheels: Path, log: Path) -> dict[str, object]:
    """The environment ready to run the kit, and how it was made (for the report; ``env`` holds the
    variables the kit must run with)."""
    started = time.monotonic()
    if not (wheels / MANIFEST).exists():
        raise RuntimeError(f"no carried wheels in {wheels}: run `make gpu-wheels` and carry that folder")
    stamp = _stamp(wheels)
    user = (USER_BASE, Path(sys.executable), {"PYTHONUSERBASE": str(USER_BASE)})
    done_before = [(venv, venv / "bin" / "python", {}), user] if venv is not None else [
        (Path(sys.prefix), Path(sys.executable), {})]
    for home, python, env in done_before:
        mark = home / ".mloc-gpu-kit"
        if python.exists() and mark.exists() and mark.read_text() == stamp:
            return {"environment": str(home), "python": str(python), "reused": True, "seconds": 0.0, "env": env,
                    "versions": versions(python, env)}
    log.parent.mkdir(parents=True, exist_ok=True)
    kind, home, python, flags, env = _layout(venv, log)
    home.mkdir(parents=True, exist_ok=True)
    house = home / "mloc-wheelhouse"
    with tarfile.open(wheels / ARCHIVE, "r:xz") as tar:
        tar.extractall(house, filter="data")
    manifest = json.loads((wheels / MANIFEST).read_text())
    carried = tuple(pins.Pin(w["name"], w["version"], w["why"]) for w in manifest["wheels"])
    constraints = home / "mloc-constraints.txt"
    constraints.write_text(pins.constraints_text(carried))
    wanted = pins.install_requirements()
    if any(p.name == pins.BITSANDBYTES.name for p in carried):
        wanted.append(pins.BITSANDBYTES.requirement)
    pip = [str(python), "-m", "pip", "install", "--no-index", "--find-links", str(house), "--disable-pip-version-check",
           *flags]
    _run([*pip, "-c", str(constraints), *wanted], log, env)
    _run([*pip, "--no-deps", "--no-build-isolation", "./shared", "./server", "./agent"], log, env)
    (home / ".mloc-gpu-kit").write_text(stamp)
    return {"environment": str(home), "kind": kind, "python": str(python), "reused": False,
            "seconds": round(time.monotonic() - started, 1), "requested": wanted, "env": env,
            "versions": versions(python, env)}
