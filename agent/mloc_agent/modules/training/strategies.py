"""The ``distributed:`` block as trainer arguments, and what the ranks report about the run.

Under torchrun every rank runs the same module; transformers' Trainer (through accelerate) reads
torchrun's variables and wraps the model: DDP by default (gloo on CPU, NCCL on CUDA), FSDP2 with
``fsdp``/``fsdp_config``, DeepSpeed ZeRO with ``deepspeed=<dict or path>``. Nothing here builds an
engine of its own. torch is imported inside functions (module files stay importable without it).
"""

from __future__ import annotations

import os
import time
from typing import Any

from mloc_shared.distributed import Distributed, FsdpSettings
from mloc_shared.hyperparams import TrainingHyperparameters

from mloc_agent.modules.errors import TaskInputError

_WRAP = {"transformer_layer": "TRANSFORMER_BASED_WRAP", "size": "SIZE_BASED_WRAP", "none": "NO_WRAP"}
_DISTRIBUTED_TYPE = {"FSDP": "fsdp", "DEEPSPEED": "deepspeed", "MULTI_CPU": "ddp", "MULTI_GPU": "ddp", "NO": "none"}


def strategy_args(spec: dict[str, Any], hp: TrainingHyperparameters, cuda: bool) -> dict[str, Any]:
    """TrainingArguments fields for the task's strategy (laid over trainer_common.training_args)."""
    block = Distributed.model_validate(spec.get("distributed") or {})
    strategy = block.resolved()
    if strategy == "fsdp":
        if not cuda:  # accelerate 1.x applies its FSDP plugin on GPUs only: on CPU it silently runs DDP
            raise TaskInputError("distributed.strategy fsdp needs CUDA GPUs (accelerate shards with FSDP on GPUs "
                                 "only; on CPU it would silently replicate): use strategy ddp on a CPU agent")
        return fsdp_args(block.fsdp or FsdpSettings(), hp)
    if strategy == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise TaskInputError("distributed.strategy deepspeed: DeepSpeed is not installed on this agent "
                                 "(pip install deepspeed in its runtime), or use strategy: fsdp")
        return {"deepspeed": deepspeed_config(block)}
    return {}


def fsdp_args(settings: FsdpSettings, hp: TrainingHyperparameters) -> dict[str, Any]:
    """FSDP2 through transformers (fsdp_config "version": 2). Activation checkpointing is FSDP's own
    (asked in the block, or hyperparameters.gradient_checkpointing): the trainer-level one would add
    an all-gather in the backward pass."""
    config: dict[str, Any] = {
        "version": 2, "auto_wrap_policy": _WRAP[settings.auto_wrap], "cpu_offload": settings.cpu_offload,
        "activation_checkpointing": settings.activation_checkpointing or hp.gradient_checkpointing,
        "reshard_after_forward": settings.reshard_after_forward,
    }
    if settings.auto_wrap == "size":
        config["min_num_params"] = settings.min_num_params
    return {"fsdp": True, "fsdp_config": config, "activation_checkpointing": False}


def deepspeed_config(block: Distributed) -> dict[str, Any] | str:
    """The user's JSON as is, else ZeRO from stage and offloads; "auto" lets transformers fill in the
    batch sizes, clipping and precision from the hyperparameters (one source of truth)."""
    ds = block.deepspeed
    if ds is not None and ds.config is not None:
        return ds.config
    stage = ds.stage() if ds is not None else 2
    zero: dict[str, Any] = {"stage": stage}
    if ds is not None and ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds is not None and ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # rank 0 writes a loadable model
    return {"zero_optimization": zero, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
            "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}


class TokenCounter:
    """This rank's own tokens (its micro-batches' attention masks), for per-rank throughput, and the step
    it started training from (each rank's own: a resumed attempt shows every rank restored)."""

    def __init__(self) -> None:
        self.tokens = 0
        self.started = time.monotonic()
        self.first_step: int | None = None

    def wrap(self, trainer: Any) -> None:
        inner = trainer.training_step

        def counted(model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            if self.first_step is None:
                self.first_step = trainer.state.global_step
            mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
            ids = inputs.get("input_ids") if isinstance(inputs, dict) else None
            if mask is not None:
                self.tokens += int(mask.sum())
            elif ids is not None:
                self.tokens += int(ids.numel())
            return inner(model, inputs, *args, **kwargs)

        trainer.training_step = counted


def run_facts(trainer: Any, counter: TokenCounter, runtime_s: float | None) -> dict[str, Any]:
    """What ran, as the ranks themselves report it: world size from the process group, nodes from
    torchrun's LOCAL_WORLD_SIZE, the strategy accelerate applied, and every rank's tokens/s
    (gathered to every rank; a collective, so all ranks call it)."""
    import torch.distributed as dist

    ws = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    kind = str(getattr(getattr(trainer.accelerator, "distributed_type", None), "value", "NO"))
    runtime = runtime_s or max(1e-9, time.monotonic() - counter.started)
    mine = {"rank": dist.get_rank() if ws > 1 else 0, "tokens": counter.tokens, "runtime_s": round(runtime, 3),
            "tokens_per_s": round(counter.tokens / runtime, 1), "first_step": counter.first_step}
    ranks: list[Any] = [mine]
    if ws > 1:
        ranks = [None] * ws
        dist.all_gather_object(ranks, mine)
    return {"world_size": ws, "nodes": max(1, ws // local), "strategy": _DISTRIBUTED_TYPE.get(kind, kind.lower()),
            "ranks": sorted(ranks, key=lambda r: r["rank"])}


def barrier() -> None:
    """Wait for every rank (no-op outside torchrun): rank 0 cleans up only once the others are done."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
