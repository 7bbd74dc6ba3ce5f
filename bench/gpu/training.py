"""SFT through MLOC and as a bare TRL script, same model, data, seed, steps, batch and length.

Throughput on both sides is the trainer's own count of training tokens (TRL's ``num_tokens`` at
the last logging step) over the trainer's own train time (``train_runtime``): MLOC's task result
carries both (``final_metrics.num_tokens``, ``train_runtime_s``). What MLOC adds around the loop (a
process per task, a progress callback, heartbeats, log streaming) is what the ratio measures; the
process start and model load, also MLOC's, are reported apart as wall time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.gpu import nvml
from bench.gpu.cluster import Cluster
from bench.gpu.profiles import Profile

REPO = Path(__file__).resolve().parents[2]
CALLBACK = "bench.gpu.peak_memory:PeakMemory"
TARGET_RATIO = 0.97


def hyperparameters(profile: Profile, steps: int | None = None) -> dict[str, Any]:
    """Every setting explicit, so the bare script gets the very values MLOC's task does."""
    return {"max_steps": steps or profile.steps, "per_device_train_batch_size": profile.batch,
            "gradient_accumulation_steps": 1, "learning_rate": 2e-4, "lr_scheduler_type": "linear",
            "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "optim": "adamw_torch",
            "logging_steps": profile.logging_steps, "save_steps": 100_000, "seed": 42,
            "max_length": profile.max_length, "gradient_checkpointing": True, "packing": False}


def task_env(profile: Profile) -> dict[str, str]:
    """Nothing may reach for the Hub; the profile's CPU threads, if it sets them. (The kit's callback
    is found on the agent's PYTHONPATH, which its tasks inherit: a spec may not set PYTHON* variables.)"""
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if profile.cpu_threads:
        env["OMP_NUM_THREADS"] = str(profile.cpu_threads)
    return env


def sft_spec(model: dict[str, Any], profile: Profile, gpus: int, *, adapter: str = "lora",
             steps: int | None = None) -> dict[str, Any]:
    adapter_spec = ({"type": adapter, "r": profile.lora_r, "lora_alpha": profile.lora_alpha}
                    if adapter != "none" else {"type": "none"})
    return {
        "taskType": "sft", "name": f"gpu-kit-sft-{adapter}",
        "model": {"source": {"type": "local", "identifier": model["model_dir"]},
                  "parameters_b": model["parameters_b"], "adapter": adapter_spec},
        "dataset": {"path": model["data"], "format": "text"},
        "hyperparameters": {**hyperparameters(profile, steps), "callbacks": [CALLBACK]},
        "resources": {"gpus": gpus}, "env": task_env(profile),
    }


def _tokens_per_s(tokens: float | None, seconds: float | None) -> float | None:
    return round(tokens / seconds, 1) if tokens and seconds else None


def _seconds_between(start: str | float | None, end: str | float | None) -> float | None:
    from datetime import datetime

    def at(value: str | float | None) -> float | None:
        if value is None:
            return None
        return float(value) if isinstance(value, int | float) else datetime.fromisoformat(value).timestamp()

    a, b = at(start), at(end)
    return round(b - a, 2) if a is not None and b is not None else None


def run_mloc(cluster: Cluster, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One MLOC sft task: its result's figures, the peak memory artifact, what the coordinator saw."""
    seen = cluster.run(spec, timeout)
    task = seen["task"]
    if task["state"] != "succeeded":
        raise RuntimeError(f"MLOC task {task['state']}: {task.get('error')}\n{cluster.logs(task['id'])[-3000:]}")
    result = task["result"] or {}
    tokens = (result.get("final_metrics") or {}).get("num_tokens")
    memory = cluster.artifact(task["id"], "gpu_memory.json")
    return {
        "task_id": task["id"], "global_step": result.get("global_step"),
        "train_runtime_s": result.get("train_runtime_s"),
        "num_tokens": tokens, "tokens_per_s": _tokens_per_s(tokens, result.get("train_runtime_s")),
        "first_loss": result.get("first_loss"), "final_loss": result.get("final_loss"), "losses": result.get("losses"),
        "train_loss": result.get("train_loss"), "device": result.get("device"), "dtype": result.get("dtype"),
        "bf16": result.get("bf16"), "quantized_4bit": result.get("quantized_4bit"),
        "wall_s": _seconds_between(task.get("started_at"), task.get("finished_at")),
        "memory": json.loads(memory) if memory else None, "resources": task.get("resources"),
        "nvml": seen["nvml"], "worker_samples": seen["worker_samples"],
    }


def run_bare(model: dict[str, Any], profile: Profile, work: Path, timeout: float) -> dict[str, Any]:
    """The bare TRL script in its own process (as MLOC's task is), under the same NVML sampler."""
    work.mkdir(parents=True, exist_ok=True)
    config = {"model": model["model_dir"], "data": model["data"], "output_dir": str(work),
              "lora": {"r": profile.lora_r, "lora_alpha": profile.lora_alpha},
              "hyperparameters": hyperparameters(profile)}
    (work / "config.json").write_text(json.dumps(config, indent=1))
    sampler = nvml.Sampler()
    baseline = sampler.baseline()
    sampler.start()
    started = time.monotonic()
    with open(work / "bare_trl.log", "w") as log:
        done = subprocess.run([sys.executable, "-m", "bench.gpu.bare_trl", str(work / "config.json"),
                               str(work / "result.json")], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              timeout=timeout, env={**_clean_env(), **task_env(profile), "PYTHONPATH": str(REPO)})
    device = sampler.stop()
    if done.returncode != 0:
        raise RuntimeError(f"bare TRL exited {done.returncode}:\n{(work / 'bare_trl.log').read_text()[-3000:]}")
    result = json.loads((work / "result.json").read_text())
    result["tokens_per_s"] = _tokens_per_s(result.get("num_tokens"), result.get("train_runtime_s"))
    result["wall_s"] = round(time.monotonic() - started, 2)
    result["nvml"] = {"baseline": baseline, **device}
    return result


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("MLOC_")}


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return max(runs, key=lambda r: r.get("tokens_per_s") or 0)


def compare(cluster: Cluster, model: dict[str, Any], profile: Profile, gpus: int, work: Path, repeats: int,
            timeout: float) -> dict[str, Any]:
    """MLOC and bare TRL, alternating ``repeats`` times; the best run of each side is compared."""
    mloc_runs, bare_runs = [], []
    for i in range(repeats):
        mloc_runs.append(run_mloc(cluster, sft_spec(model, profile, gpus), timeout))
        bare_runs.append(run_bare(model, profile, work / f"bare-{i + 1}", timeout))
    mloc, bare = best(mloc_runs), best(bare_runs)
    ratio = round(mloc["tokens_per_s"] / bare["tokens_per_s"], 4) if mloc["tokens_per_s"] and bare["tokens_per_s"] \
        else None
    expected = profile.steps * profile.batch * profile.max_length
    return {
        "status": "ok", "expected_tokens": expected, "mloc": mloc, "bare_trl": bare,
        "mloc_runs_tokens_per_s": [r["tokens_per_s"] for r in mloc_runs],
        "bare_runs_tokens_per_s": [r["tokens_per_s"] for r in bare_runs],
        "ratio": ratio, "target_ratio": TARGET_RATIO, "meets_target": ratio is not None and ratio >= TARGET_RATIO,
        "same_tokens": mloc["num_tokens"] == bare["num_tokens"],
    }
