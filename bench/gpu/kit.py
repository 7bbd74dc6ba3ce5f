"""The GPU proof kit: one command that proves MLOC on a real GPU and writes what it found.

    python -m bench.gpu.kit --out DIR              # on the GPU machine (prepares its venv first)
    python -m bench.gpu.kit --out DIR --dry-run    # on CPU, tiny sizes: part of `make test`

It starts a real coordinator and agent, checks the agent's NVML inventory, runs SFT (LoRA, bf16)
through MLOC's sft module and as a bare TRL script and compares their tokens/s, runs QLoRA if
bitsandbytes travelled, inference on the transformers engine, a full fine-tune for the memory
rule, and sets each phase's peak GPU memory against the rule. ``DIR/report.json`` holds it all,
``DIR/summary.md`` the short version. Exit 0 when no phase failed.

Standard library only at the top: on the GPU machine this module starts under the system Python,
builds the venv (bootstrap.py) and runs itself again inside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
IN_VENV = "MLOC_GPU_KIT_PREPARED"  # set when the kit re-runs itself inside the venv it prepared
VENV = REPO / ".gpu-kit-venv"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu.kit", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where report.json and summary.md go")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, no install step")
    parser.add_argument("--install", action="store_true", help="install the carried wheels even in a dry run "
                        "(a rehearsal of the GPU machine's install step)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--wheels", type=Path, default=REPO / "bench" / "gpu" / "wheels")
    parser.add_argument("--venv", default=str(VENV), help="'none': install into this interpreter's environment")
    parser.add_argument("--repeats", type=int, help="MLOC/bare TRL pairs (default: 2 on GPU, 1 dry)")
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """On the GPU machine: build the environment, then run again inside it (never returns there)."""
    from bench.gpu import bootstrap
    from bench.gpu.wheels import carried_plan

    packaging = {"status": "ok", **carried_plan(args.wheels)}
    if os.environ.get(IN_VENV):
        return packaging
    venv = None if args.venv == "none" else Path(args.venv)
    made = bootstrap.ensure_venv(venv, args.wheels, args.out / "install.log")
    python = made["python"]
    os.environ.update(made["env"])
    os.environ[IN_VENV] = "1"
    os.environ["MLOC_GPU_KIT_INSTALL"] = json.dumps(made)
    os.execv(python, [python, "-m", "bench.gpu.kit", *argv])
    raise AssertionError("unreachable")


def _phase(report: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.monotonic()
    try:
        result = fn()
    except Exception as exc:  # one phase failing must not lose the others' figures
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-4000:]}
    result["seconds"] = round(time.monotonic() - started, 1)
    report["phases"][name] = result
    return result


def build_model(profile_name: str, root: Path) -> dict[str, Any]:
    import subprocess

    done = subprocess.run([sys.executable, "-m", "bench.gpu.model", str(root), "--profile", profile_name],
                          cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"building the model failed:\n{done.stderr[-3000:]}")
    return json.loads((root / "model.json").read_text())


def run(args: argparse.Namespace, packaging: dict[str, Any], work: Path) -> dict[str, Any]:
    from bench.gpu import nvml, phases, training
    from bench.gpu.cluster import Cluster
    from bench.gpu.profiles import DRY, GPU
    from bench.gpu.report import write

    started = time.monotonic()
    cuda = not args.dry_run and nvml.available()
    profile = GPU if cuda else DRY  # GPU sizes on a CPU would run for hours and prove nothing
    gpus = 1 if cuda else 0
    repeats = args.repeats or (2 if cuda else 1)
    facts = nvml.device_facts()
    note = ("Run on the GPU machine." if cuda else
            "Dry run: no GPU at hand, so this ran on CPU at tiny sizes. It proves the kit works end to end "
            "(coordinator, agent, both training paths, the comparison, the report); the GPU figures "
            "(NVML inventory, bf16 speed, QLoRA, peak GPU memory) wait for a run on the GPU machine.")
    if not args.dry_run and not cuda:
        note = "No GPU found (NVML sees no device), so the kit ran its dry run. " + note
    report: dict[str, Any] = {
        "kit": "mloc-gpu-kit", "report_version": 1, "mode": "gpu" if cuda else "dry-run", "note": note,
        "started_at": time.time(), "seconds": 0.0, "profile": profile.to_dict(), "repeats": repeats,
        "machine": {"hostname": platform.node(), "python": platform.python_version(), "platform": platform.platform(),
                    "cuda": cuda, "gpu": facts.get("name")},
        "packaging": packaging, "phases": {},
    }
    install = os.environ.get("MLOC_GPU_KIT_INSTALL")
    if install:
        packaging["install"] = json.loads(install)
    timeout = 600.0 if cuda else 240.0
    model = _phase(report, "model", lambda: {"status": "ok", **build_model(profile.name, work / "model")})
    if model["status"] != "ok":
        write(args.out, report)
        return report
    cluster = Cluster(work / "cluster", readable=work / "model")
    specs: dict[str, dict[str, Any]] = {}
    try:
        _phase(report, "start", lambda: {"status": "ok", "coordinator_and_agent_s": round(cluster.start(), 2)})
        specs["sft"] = training.sft_spec(model, profile, gpus)
        sft = _phase(report, "sft", lambda: training.compare(cluster, model, profile, gpus, work / "bare", repeats,
                                                             timeout))
        samples = (sft.get("mloc") or {}).pop("worker_samples", [])
        _phase(report, "inventory", lambda: phases.inventory(cluster, cuda, samples))
        specs["qlora"] = training.sft_spec(model, profile, 1, adapter="qlora", steps=profile.qlora_steps or None)
        _phase(report, "qlora", lambda: phases.qlora(cluster, model, profile, cuda, packaging, timeout))
        specs["inference"] = {"taskType": "inference", "model": {
            "source": {"type": "local", "identifier": model["model_dir"]}, "parameters_b": model["parameters_b"]},
            "hyperparameters": {"engine": "transformers"}}
        _phase(report, "inference", lambda: phases.inference(cluster, model, profile, gpus, timeout))
        specs["full_finetune"] = training.sft_spec(model, profile, 1, adapter="none", steps=profile.full_steps or None)
        _phase(report, "full_finetune", lambda: phases.full_finetune(cluster, model, profile, cuda, timeout))
        _phase(report, "distributed", lambda: phases.distributed(cluster, model, profile, cuda, timeout))
        report["phases"]["warm_starts"] = phases.not_landed()
        measured = {"sft": {**(sft.get("mloc") or {}), "status": sft.get("status")},
                    **{n: report["phases"][n] for n in ("qlora", "inference", "full_finetune")}}
        _phase(report, "memory", lambda: phases.memory_rows(measured, specs))
    finally:
        cluster.stop()
        report["seconds"] = round(time.monotonic() - started, 1)
        write(args.out, report)
    return report


def _install_failed(args: argparse.Namespace, exc: Exception) -> int:
    from bench.gpu.report import write

    report = {"kit": "mloc-gpu-kit", "report_version": 1, "mode": "gpu", "seconds": 0.0,
              "note": "The install step failed on this machine, so nothing ran; see install.log.",
              "machine": {"hostname": platform.node(), "python": platform.python_version(), "gpu": None},
              "packaging": {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}, "phases": {}}
    write(args.out, report)
    print((args.out / "summary.md").read_text())
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))  # bench/ and tests/harness.py, whatever the working directory
    if args.dry_run and not args.install:
        from bench.gpu.wheels import carried_plan

        packaging = {"status": "skipped", "reason": "the dry run uses this environment", **carried_plan(args.wheels)}
    else:
        try:
            packaging = prepare(args, argv)
        except Exception as exc:  # no environment, no run: the report says why
            return _install_failed(args, exc)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        report = run(args, packaging, args.work.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="mloc-gpu-kit-") as tmp:
            report = run(args, packaging, Path(tmp))
    print((args.out / "summary.md").read_text())
    return 1 if any(p.get("status") == "failed" for p in report["phases"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
