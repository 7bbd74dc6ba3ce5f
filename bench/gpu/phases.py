"""The kit's phases other than the SFT comparison (training.py): inventory, QLoRA, inference, a
full fine-tune for the memory rule, what has not landed, and the memory rule against the peaks.

Each returns a dict with ``status``: ok, skipped (with ``reason``) or not landed; a phase that
raises is recorded as failed by kit.py and the others still run.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from bench.gpu import nvml
from bench.gpu.cluster import Cluster
from bench.gpu.profiles import Profile
from bench.gpu.training import run_mloc, sft_spec, task_env

NO_CUDA = "no CUDA"
GPU_FIELDS = ("index", "name", "memory_total_mb", "compute_capability", "driver", "uuid", "declared")


def inventory(cluster: Cluster, cuda: bool, sft_samples: list[dict[str, Any]]) -> dict[str, Any]:
    """What the agent reported (NVML, not declared), checked against NVML read here, and whether
    the coordinator received utilisation and memory while the SFT task ran."""
    worker = cluster.worker()
    out: dict[str, Any] = {
        "gpu_source": worker["gpu_source"], "gpus": [{k: g.get(k) for k in GPU_FIELDS} for g in worker["gpus"]],
        "hostname": worker["hostname"], "cpu_count": worker["cpu_count"], "memory_mb": worker["memory_mb"],
    }
    stats = [g for s in sft_samples for g in s["gpus"] if g.get("utilization_pct") is not None]
    out["stats_while_training"] = {
        "samples": len(sft_samples), "with_gpu_stats": len(stats),
        "utilization_peak_pct": max((g["utilization_pct"] for g in stats), default=None),
        "memory_used_peak_mb": max((g["memory_used_mb"] or 0 for g in stats), default=None),
    }
    if not cuda:
        return {"status": "skipped", "reason": f"{NO_CUDA}: the agent found no NVML GPU", **out}
    here = nvml.device_facts()
    reported = out["gpus"][0] if out["gpus"] else {}
    out["matches_nvml_here"] = bool(here) and all(reported.get(k) == here.get(k) for k in ("name", "uuid"))
    ok = worker["gpu_source"] == "nvml" and not reported.get("declared") and out["matches_nvml_here"]
    return {"status": "ok" if ok else "failed", **out}


def qlora(cluster: Cluster, model: dict[str, Any], profile: Profile, cuda: bool, packaging: dict[str, Any],
          timeout: float) -> dict[str, Any]:
    if not cuda:
        return {"status": "skipped", "reason": NO_CUDA}
    if importlib.util.find_spec("bitsandbytes") is None:
        wheel = next((w for w in packaging.get("wheels") or [] if w["name"] == "bitsandbytes"), None)
        why = "carried but not importable" if wheel else "not carried (bench.gpu.wheels --no-bitsandbytes)"
        return {"status": "skipped", "reason": f"bitsandbytes is not installed: {why}",
                "sizes": {"wheel": wheel, "archive_mb": packaging.get("archive_mb"),
                          "carry_limit_mb": packaging.get("carry_limit_mb")}}
    run = run_mloc(cluster, sft_spec(model, profile, 1, adapter="qlora", steps=profile.qlora_steps), timeout)
    return {"status": "ok" if run["quantized_4bit"] else "failed", **_drop_samples(run)}


def full_finetune(cluster: Cluster, model: dict[str, Any], profile: Profile, cuda: bool,
                  timeout: float) -> dict[str, Any]:
    """No adapter: the rule's other branch (fp32 master weights, gradients, AdamW moments)."""
    if not cuda or not profile.full_steps:
        return {"status": "skipped", "reason": NO_CUDA}
    run = run_mloc(cluster, sft_spec(model, profile, 1, adapter="none", steps=profile.full_steps), timeout)
    return {"status": "ok", **_drop_samples(run)}


def inference(cluster: Cluster, model: dict[str, Any], profile: Profile, gpus: int, timeout: float
              ) -> dict[str, Any]:
    spec = {
        "taskType": "inference", "name": "gpu-kit-inference",
        "model": {"source": {"type": "local", "identifier": model["model_dir"]}, "parameters_b": model["parameters_b"]},
        "hyperparameters": {"engine": "transformers", "prompts": model["prompts"], "chat": False, "temperature": 0,
                            "max_new_tokens": profile.max_new_tokens, "batch_size": profile.inference_batch,
                            "seed": 0},
        "resources": {"gpus": gpus}, "env": task_env(profile),
    }
    seen = cluster.run(spec, timeout)
    task = seen["task"]
    if task["state"] != "succeeded":
        raise RuntimeError(f"inference task {task['state']}: {task.get('error')}")
    result = task["result"] or {}
    return {"status": "ok", "engine": "transformers", "task_id": task["id"],
            **{k: result.get(k) for k in ("prompts", "completion_tokens", "generation_s", "tokens_per_s", "device",
                                          "dtype")},
            "resources": task.get("resources"), "nvml": seen["nvml"],
            "vllm": {"status": "skipped", "reason": "not carried: vLLM's wheel and its pinned torch/CUDA stack are "
                     "hundreds of MB, several times the 64 MiB that travels with the working tree"}}


def distributed(cluster: Cluster, model: dict[str, Any], profile: Profile, cuda: bool, timeout: float
                ) -> dict[str, Any]:
    """FSDP2 through the Trainer, under torchrun, on the GPU(s) at hand: what CPU tests cannot show
    (accelerate applies FSDP on GPUs only). One GPU: a single FSDP rank (the torchrun path, sharding
    over one rank); the 2-rank CPU run is tests/ml/test_distributed.py and bench/distributed.py."""
    if not cuda:
        return {"status": "skipped", "reason": f"{NO_CUDA}: FSDP runs on GPUs only (docs/distributed.md)"}
    gpus = 1  # the kit's agent leases the machine's first GPU
    spec = {**sft_spec(model, profile, gpus, adapter="none", steps=profile.full_steps or None),
            "name": "gpu-kit-fsdp", "distributed": {"strategy": "fsdp"}}
    seen = cluster.run(spec, timeout)
    task = seen["task"]
    if task["state"] != "succeeded":
        raise RuntimeError(f"fsdp task {task['state']}: {task.get('error')}\n{cluster.logs(task['id'])[-3000:]}")
    result = task["result"] or {}
    ok = result.get("strategy") == "fsdp" and result.get("world_size") == gpus
    return {"status": "ok" if ok else "failed", "task_id": task["id"], "gpus": gpus,
            **{k: result.get(k) for k in ("world_size", "nodes", "strategy", "ranks", "global_step",
                                          "train_runtime_s", "final_loss")}, "nvml": seen["nvml"]}


def not_landed() -> dict[str, Any]:
    return {"status": "not landed", "reason": "MLOC has no multi-GPU/multi-node training or warm model starts yet; "
            "this phase is a placeholder the kit fills once they land"}


def _drop_samples(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "worker_samples"}


def memory_rows(phases: dict[str, dict[str, Any]], specs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per phase: the GB the rule (shared/mloc_shared/resources.py) predicts for that phase's spec, as
    the coordinator derived it, against the peak the GPU showed (NVML, above the idle baseline) and
    PyTorch's own peak. Positive error: the rule asks for more than was used."""
    rows = []
    for name, phase in phases.items():
        if phase.get("status") != "ok":
            continue
        predicted, rule, source = _prediction(phase, specs.get(name))
        nv = phase.get("nvml") or {}
        device_gb = (round((nv["peak_used_mb"] - (nv.get("baseline") or 0)) / 1024, 2)
                     if nv.get("peak_used_mb") is not None else None)
        mem = phase.get("memory") or {}
        torch_gb = round(mem["max_reserved_mb"] / 1024, 2) if mem.get("max_reserved_mb") is not None else None
        row = {"phase": name, "predicted_gb": predicted, "rule": rule, "rule_source": source,
               "measured_device_gb": device_gb, "measured_torch_reserved_gb": torch_gb}
        if predicted is not None and device_gb:
            row["error_gb"] = round(predicted - device_gb, 2)
            row["predicted_over_measured"] = round(predicted / device_gb, 2)
            row["direction"] = "over" if predicted >= device_gb else "under"
        rows.append(row)
    measured = [r for r in rows if "error_gb" in r]
    if not measured:
        return {"status": "skipped", "reason": f"{NO_CUDA}: nothing measured", "rows": rows}
    return {"status": "ok", "rows": rows,
            "most_over_gb": max(r["error_gb"] for r in measured), "most_under_gb": min(r["error_gb"] for r in measured)}


def _prediction(phase: dict[str, Any], spec: dict[str, Any] | None) -> tuple[float | None, str | None, str]:
    """The coordinator's derivation when the task asked for a GPU; else the same rule applied here to
    the spec as if it had (the dry run asks for none)."""
    resources = phase.get("resources") or {}
    if resources.get("gpu_memory_rule"):
        return resources.get("gpu_memory_gb"), resources["gpu_memory_rule"], "coordinator"
    if spec is None:
        return None, None, "none"
    from mloc_shared.resources import estimate_gpu_memory
    from mloc_shared.taskspec import TaskSpec

    estimate = estimate_gpu_memory(TaskSpec.model_validate({**spec, "resources": {"gpus": 1}}))
    return (estimate.gb, estimate.rule, "applied here") if estimate else (None, None, "none")
