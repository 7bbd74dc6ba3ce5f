"""GPU memory a task needs when its spec does not say: a documented rule, not a measurement.

Used by the coordinator (no ML import) so that, say, a 7B QLoRA fine-tune is never placed on an
8 GB card. The rule, in GB (1e9 parameters * bytes per parameter = GB):

    weights      = P * bytes/param       4-bit (qlora) 0.5, 8-bit 1, bf16/fp16/auto 2, fp32 4
    train state  = full fine-tune: P * 12 (fp32 gradients 4 + AdamW moments 8);
                   lora/qlora: 10 % of the weights (adapter, its optimizer state, dequant buffers)
    reference    = dpo/ppo full fine-tune: a frozen copy of the weights (P * 2);
                   ppo: + a value model (P * 2 * 1.1) — with an adapter both are the base itself
    activations  = P * tokens/1024 * (0.1 with gradient checkpointing, else 0.6)
                   tokens = per_device_train_batch_size * max_length (* 2 for chosen+rejected in
                   dpo/reward_model; grpo: * num_generations, max_completion_length)
    inference    = weights * 1.2 (KV cache, workspace); the vllm engine * 1.3
    overhead     = 1.5 GB (CUDA context, cuBLAS workspace, allocator slack)
    need         = ceil(sum), at least 1 GB, per GPU

Across N ranks (N = gpus * nodes; docs/distributed.md), per GPU:

    ddp          everything replicated: the sum above, whatever N
    zero 1       optimizer states / N (AdamW moments: 8 of the 12 bytes a parameter of a full fine-tune)
    zero 2       + gradients / N (the whole training state / N)
    fsdp, zero 3 weights, training state and reference models / N; activations and overhead stay per rank
    offload      fsdp cpu_offload, ZeRO offload_optimizer / offload_param: that part lives in CPU memory
    inference    tensor parallel (vllm) and device_map="auto" (transformers) split the weights: / N

So a task too big for any one card (a 7B full fine-tune: 106 GB) fits 8 cards as fsdp (about 20 GB each).

P (billions of parameters) comes from ``model.parameters_b``, else from the model identifier
("Mistral-7B-Instruct" → 7, "Qwen2.5-1.5B" → 1.5, "Mixtral-8x7B" → 56, "opt-350m" → 0.35).
Unknown P, or a task that asks for no GPU: no derivation, the task runs on any GPU.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mloc_shared.hyperparams import HYPERPARAMETERS
from mloc_shared.task_types import INFERENCE_TYPES, TRAINING_TYPES

if TYPE_CHECKING:
    from mloc_shared.taskspec import TaskSpec

OVERHEAD_GB = 1.5
_MOE = re.compile(r"(?<![\w.])(\d+)\s*x\s*(\d+(?:\.\d+)?)\s*([bm])(?![a-z])", re.IGNORECASE)
_SIZE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*([bm])(?![a-z])", re.IGNORECASE)


@dataclass(frozen=True)
class MemoryEstimate:
    gb: float
    rule: str


def parameters_from_name(identifier: str) -> float | None:
    """Billions of parameters read from a model name ("Llama-2-7b-hf" → 7.0); None if it does not say."""
    name = identifier.rsplit("/", 1)[-1]
    moe = _MOE.search(name)
    if moe:
        count, size, unit = int(moe.group(1)), float(moe.group(2)), moe.group(3).lower()
        return count * (size if unit == "b" else size / 1000)
    match = _SIZE.search(name)
    if not match:
        return None
    size, unit = float(match.group(1)), match.group(2).lower()
    return size if unit == "b" else size / 1000


def bytes_per_parameter(dtype: str, adapter: str) -> tuple[float, str]:
    if adapter == "qlora":
        return 0.5, "4-bit"
    if dtype == "float32":
        return 4.0, "fp32"
    return 2.0, "bf16" if dtype in ("auto", "bfloat16") else "fp16"


def _hp(spec: TaskSpec, key: str) -> Any:
    """A hyperparameter as given, else its documented default (one source of truth: hyperparams.py)."""
    if key in spec.hyperparameters:
        return spec.hyperparameters[key]
    model = HYPERPARAMETERS.get(spec.task_type)
    field = model.model_fields.get(key) if model is not None else None
    return field.default if field is not None else None


def _training_tokens(spec: TaskSpec) -> tuple[float, str]:
    if spec.task_type == "ppo":
        batch, length = _hp(spec, "mini_batch_size"), (_hp(spec, "max_length") or 512)
        return batch * length, f"{batch}*{length}"
    batch = _hp(spec, "per_device_train_batch_size") or 8
    if spec.task_type == "grpo":
        length = _hp(spec, "max_completion_length") or 256
        gens = _hp(spec, "num_generations") or 8
        return max(batch, gens) * length, f"{max(batch, gens)}*{length}"
    length = _hp(spec, "max_length") or 1024
    pairs = 2 if spec.task_type in ("dpo", "reward_model") else 1
    return batch * length * pairs, f"{batch}*{length}" + ("*2" if pairs == 2 else "")


def _sharded(spec: TaskSpec, ranks: int, weights: float, state: float, ref: float,
             parts: list[str]) -> float:
    """Weights + training state + reference models on one GPU under the task's strategy (the rule above)."""
    from mloc_shared.distributed import Distributed

    block = spec.distributed or Distributed()
    strategy = block.resolved()
    if strategy == "fsdp":
        offload = block.fsdp is not None and block.fsdp.cpu_offload
        if offload:
            parts.append("fsdp cpu_offload: weights and training state in CPU memory")
            return 0.0
        share = (weights + state + ref) / ranks
        if ranks > 1:
            parts.append(f"[fsdp over {ranks} ranks: ({weights + state + ref:.1f})/{ranks} = {share:.1f} a GPU]")
        return share
    if strategy == "deepspeed":
        ds = block.deepspeed
        stage = ds.stage() if ds is not None else 2
        optimizer, grads = state * 8 / 12, state * 4 / 12
        if ds is not None and ds.offload_optimizer:
            optimizer = 0.0
            parts.append("optimizer offloaded to CPU")
        if ds is not None and ds.offload_param:
            weights, ref = 0.0, 0.0
            parts.append("parameters offloaded to CPU")
        if stage >= 1:
            optimizer /= ranks
        if stage >= 2:
            grads /= ranks
        if stage >= 3:
            weights, ref = weights / ranks, ref / ranks
        share = weights + optimizer + grads + ref
        if ranks > 1:
            parts.append(f"[zero {stage} over {ranks} ranks: weights {weights:.1f} + gradients {grads:.1f} + "
                         f"optimizer {optimizer:.1f} + reference {ref:.1f} = {share:.1f} a GPU]")
        return share
    if ranks > 1:
        parts.append(f"[ddp: replicated on each of {ranks} ranks]")
    return weights + state + ref


def estimate_gpu_memory(spec: TaskSpec) -> MemoryEstimate | None:
    """The rule above applied to a spec, per GPU; None when it cannot or need not be applied."""
    if spec.model is None or spec.required_gpus() == 0:
        return None
    if spec.task_type not in TRAINING_TYPES | INFERENCE_TYPES:
        return None
    params = spec.model.parameters_b or parameters_from_name(spec.model.source.identifier)
    if not params:
        return None
    adapter = spec.model.adapter.type if spec.model.adapter else "none"
    per_param, precision = bytes_per_parameter(spec.model.dtype, adapter)
    weights = params * per_param
    parts = [f"weights {params:g}B*{per_param:g} ({precision}) = {weights:.1f}"]
    ranks = spec.required_gpus() * spec.resources.nodes
    total = weights + OVERHEAD_GB
    if spec.task_type in INFERENCE_TYPES:
        factor = 1.3 if spec.hyperparameters.get("engine") == "vllm" else 1.2
        total = weights * factor / ranks + OVERHEAD_GB
        parts.append(f"*{factor:g} for KV cache" + (f", split over {ranks} GPUs" if ranks > 1 else ""))
    else:
        ref = 0.0
        if adapter == "none":
            state = params * 12
            parts.append(f"full fine-tune state {params:g}B*12 = {state:.1f}")
            if spec.task_type in ("dpo", "ppo"):
                ref = params * 2 * (2.1 if spec.task_type == "ppo" else 1)
                parts.append(f"reference{'/value' if spec.task_type == 'ppo' else ''} models {ref:.1f}")
        else:
            state = weights * 0.1
            parts.append(f"{adapter} adapter state {state:.1f}")
        total = _sharded(spec, ranks, weights, state, ref, parts) + OVERHEAD_GB
        tokens, shape = _training_tokens(spec)
        checkpointing = _hp(spec, "gradient_checkpointing") is not False and spec.task_type != "ppo"
        per = 0.1 if checkpointing else 0.6
        activations = params * tokens / 1024 * per
        parts.append(f"activations {params:g}B*{shape}/1024*{per:g} = {activations:.1f}")
        total += activations
    gb = max(1.0, float(math.ceil(total - 1e-9)))
    parts.append(f"overhead {OVERHEAD_GB:g}")
    return MemoryEstimate(gb=gb, rule=f"derived: {' + '.join(parts)} → {gb:g} GB (docs/tasks.md#gpu-memory)")
