"""Builds what travels to the GPU machine: the pinned wheels (pins.py), slimmed, in one xz archive.

    python -m bench.gpu.wheels download   # make gpu-wheels: pip download, slim, pack into bench/gpu/wheels/
    python -m bench.gpu.wheels check      # the pins cover the pyprojects' requirements; sizes when packed

Why an archive: the wheels as PyPI ships them take ~144 MB, over twice the 64 MiB that travels with the
working tree. Cut to what the kit imports (pyarrow without Flight, S3 and its headers and tests;
pandas without its tests; bitsandbytes with its CUDA 12.8+ libraries only), shared libraries
stripped of their static symbol tables, stored uncompressed and packed in one solid xz stream,
they take ~49 MB (~39 MB without bitsandbytes). bootstrap.py unpacks them and pip installs them as wheels.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from bench.gpu.pins import (
    BITSANDBYTES,
    PINS,
    REPO,
    Pin,
    coverage_problems,
    find_wheels,
    install_requirements,
    metadata_problems,
)

WHEELS_DIR = REPO / "bench" / "gpu" / "wheels"  # carried to the GPU machine (gitignored)
CACHE_DIR = REPO / "bench" / "gpu" / ".wheel-cache"  # as pip downloaded them, and the slimmed copies (not carried)
ARCHIVE = "wheels.tar.xz"
MANIFEST = "manifest.json"
CARRY_LIMIT_MB = 64 * 1024 * 1024 / 1e6  # the working tree and every carried path together
BUDGET_MB = 50.0  # what the archive may take, leaving room for the working tree
MB = 1e6
_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_24_x86_64", "manylinux_2_28_x86_64")


def download(dest: Path, pins: tuple[Pin, ...], python_version: str = "3.12") -> None:
    """``pip download`` exactly the pins, binary only and without resolving: the pins are the resolution."""
    abi = "cp" + python_version.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps",
           "--python-version", python_version, "--implementation", "cp", "--abi", abi, "--abi", "abi3",
           "--abi", "none", "-d", str(dest)]
    for platform in _PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run([*cmd, *(p.requirement for p in pins)], check=True)


def _is_shared_library(name: str) -> bool:
    return re.search(r"\.so(\.\d+)*$", name) is not None


def _strip(data: bytes, scratch: Path) -> bytes:
    """A shared library without its static symbol table (the dynamic one, which loading uses, stays)."""
    scratch.write_bytes(data)
    done = subprocess.run(["strip", "--strip-unneeded", str(scratch)], capture_output=True)
    return scratch.read_bytes() if done.returncode == 0 else data


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}\n"


def slim(path: Path, target: Path, drop: tuple[str, ...]) -> dict[str, int]:
    """Write ``target``: the wheel at ``path`` without the members matching ``drop``, its shared
    libraries stripped, its RECORD rewritten to match, stored uncompressed (xz packs it later)."""
    tmp, scratch = target.with_suffix(".partial"), target.with_suffix(".so-scratch")
    can_strip = shutil.which("strip") is not None
    dropped = unpacked = 0
    records: list[str] = []
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as dst:
        record = next(i for i in src.infolist() if i.filename.endswith(".dist-info/RECORD"))
        for info in src.infolist():
            if info is record:
                continue
            if any(fnmatch.fnmatch(info.filename, p) for p in drop):
                dropped += 1
                continue
            data = src.read(info)
            if can_strip and _is_shared_library(info.filename):
                data = _strip(data, scratch)
            records.append(_record_line(info.filename, data))
            unpacked += len(data)
            dst.writestr(info, data, compress_type=zipfile.ZIP_STORED)
        dst.writestr(record, "".join(records) + f"{record.filename},,\n", compress_type=zipfile.ZIP_STORED)
    scratch.unlink(missing_ok=True)
    tmp.replace(target)
    return {"files_dropped": dropped, "unpacked_bytes": unpacked}


def prepare(cache: Path, pins: tuple[Pin, ...], python_version: str) -> tuple[Path, list[dict[str, object]]]:
    """Download what the cache lacks; the slimmed wheels in ``cache/slim-<py>``, one manifest row each."""
    raw = cache / f"py{python_version}"
    stage = cache / f"slim-py{python_version}"
    raw.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    todo = tuple(p for p in pins if p.name not in find_wheels(raw, pins))
    if todo:
        download(raw, todo, python_version)
    found = find_wheels(raw, pins)
    rows = []
    for pin in pins:
        src = found[pin.name]
        cut = slim(src, stage / src.name, pin.drop)
        rows.append({"name": pin.name, "version": pin.version, "why": pin.why, "wheel": src.name,
                     "pypi_mb": round(src.stat().st_size / MB, 2), "unpacked_mb": round(cut["unpacked_bytes"] / MB, 2),
                     "files_dropped": cut["files_dropped"]})
    return stage, rows


def pack(stage: Path, dest: Path, rows: list[dict[str, object]], python_version: str, preset: int = 9
         ) -> dict[str, object]:
    """One solid xz stream of the slimmed wheels, and its manifest."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.iterdir():
        if old.is_file():
            old.unlink()
    archive = dest / ARCHIVE
    with tarfile.open(archive, "w:xz", preset=preset) as tar:
        for wheel in sorted(stage.glob("*.whl")):
            tar.add(wheel, arcname=wheel.name)
    manifest = {"python_version": python_version, "archive": ARCHIVE,
                "archive_mb": round(archive.stat().st_size / MB, 2), "wheels": rows}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def carried_plan(folder: Path = WHEELS_DIR) -> dict[str, object]:
    """What is carried and what is not, with sizes: the packaging part of the kit's report."""
    manifest_path = folder / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    names = {w["name"] for w in manifest["wheels"]} if manifest else set()
    plan: dict[str, object] = {
        "folder": str(folder.relative_to(REPO)) if folder.is_relative_to(REPO) else str(folder),
        "packed": manifest is not None, "install_requirements": install_requirements(),
        "coverage_problems": coverage_problems(), "budget_mb": BUDGET_MB, "carry_limit_mb": round(CARRY_LIMIT_MB, 1),
    }
    if manifest is None:
        plan["note"] = "not packed here: make gpu-wheels builds it"
        return plan
    plan.update(python_version=manifest["python_version"], archive_mb=manifest["archive_mb"],
                wheels=manifest["wheels"], missing=sorted(p.name for p in PINS if p.name not in names),
                bitsandbytes_carried=BITSANDBYTES.name in names,
                pypi_total_mb=round(sum(w["pypi_mb"] for w in manifest["wheels"]), 1),
                unpacked_total_mb=round(sum(w["unpacked_mb"] for w in manifest["wheels"]), 1))
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu.wheels", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("download", "check"))
    parser.add_argument("--dest", type=Path, default=WHEELS_DIR, help="the carried folder")
    parser.add_argument("--cache", type=Path, default=CACHE_DIR, help="downloads and slimmed copies (not carried)")
    parser.add_argument("--python-version", default="3.12", help="3.11 builds a set for a CPU rehearsal here")
    parser.add_argument("--no-bitsandbytes", action="store_true", help="leave QLoRA's kernels out")
    parser.add_argument("--no-archive", action="store_true", help="stop at the slimmed wheels in the cache")
    parser.add_argument("--xz-preset", type=int, default=9, choices=range(10), help="9: smallest (minutes here)")
    args = parser.parse_args(argv)
    problems = coverage_problems()
    if args.action == "download":
        pins = PINS if args.no_bitsandbytes else (*PINS, BITSANDBYTES)
        stage, rows = prepare(args.cache, pins, args.python_version)
        problems += metadata_problems(find_wheels(stage, pins), pins)
        if args.no_archive:
            print(stage)
            return 1 if problems else 0
        pack(stage, args.dest, rows, args.python_version, args.xz_preset)
    plan = carried_plan(args.dest)
    print(json.dumps({k: v for k, v in plan.items() if k != "wheels"}, indent=1))
    for row in plan.get("wheels", []):
        print(f"  {row['pypi_mb']:7.2f} MB on PyPI, {row['unpacked_mb']:7.2f} MB unpacked once slimmed: {row['wheel']}")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    over = plan.get("archive_mb", 0) > BUDGET_MB
    if over:
        print(f"the archive takes {plan['archive_mb']} MB, over the {BUDGET_MB} MB budget", file=sys.stderr)
    return 1 if problems or over else 0


if __name__ == "__main__":
    raise SystemExit(main())
