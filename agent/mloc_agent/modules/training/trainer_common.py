"""What the Hugging Face based task modules share: device and precision, LoRA / QLoRA configs, TRL
trainer arguments, running with resume, and writing outputs. (Model sources: sources/models.py.)

torch / transformers / peft / trl are imported inside functions only: the agent's main process
imports module files to read class attributes and must never load torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Any

from mloc_shared.hyperparams import TrainingHyperparameters

from mloc_agent.modules.base import TaskContext
from mloc_agent.modules.errors import TaskInputError
from mloc_agent.modules.sources import hub

log = logging.getLogger(__name__)
TRAINING_REQUIRES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")


# -- device and precision ------------------------------------------------------------------------------


@dataclass
class DevicePlan:
    """How to load and train: fp32 on CPU; bf16 (fp16 on pre-Ampere cards) on CUDA."""

    cuda: bool
    load_dtype: str
    bf16: bool = False
    fp16: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def use_cpu(self) -> bool:
        return not self.cuda

    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.load_dtype)


def device_plan(dtype: str = "auto", adapter: str = "none") -> DevicePlan:
    import torch

    if not torch.cuda.is_available():
        plan = DevicePlan(cuda=False, load_dtype="float32")
        if dtype in ("bfloat16", "float16"):
            plan.notes.append(f"no CUDA device: {dtype} asked, training in float32 on CPU")
        return plan
    if dtype == "float32":
        return DevicePlan(cuda=True, load_dtype="float32")
    half = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    notes = ["this GPU has no bfloat16: using float16"] if dtype == "bfloat16" and half == "float16" else []
    if dtype == "float16":
        half = "float16"
    # an adapter trains over frozen half-precision weights; a full fine-tune keeps fp32 master weights
    load = half if adapter != "none" or dtype != "auto" else "float32"
    return DevicePlan(cuda=True, load_dtype=load, bf16=half == "bfloat16", fp16=half == "float16", notes=notes)


def quantization_config(adapter: str, plan: DevicePlan) -> Any:
    """QLoRA: a 4-bit NF4 base (bitsandbytes) computing in bf16 on GPU, fp32 on CPU."""
    if adapter != "qlora":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TaskInputError("adapter type qlora needs bitsandbytes on the agent: pip install 'mloc-agent[train]'")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=plan.torch_dtype())


def lora_config(adapter: dict[str, Any] | None, task_type: str = "CAUSAL_LM") -> Any:
    """peft LoraConfig from ``model.adapter`` (None for ``type: none``); all linear layers unless told."""
    if not adapter or adapter.get("type", "none") == "none":
        return None
    from peft import LoraConfig

    return LoraConfig(r=adapter.get("r", 16), lora_alpha=adapter.get("lora_alpha", 32),
                      lora_dropout=adapter.get("lora_dropout", 0.05),
                      target_modules=adapter.get("target_modules") or "all-linear", bias="none", task_type=task_type)


def load_tokenizer(name: str, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# -- trainer arguments ----------------------------------------------------------------------------------


def training_args(hp: TrainingHyperparameters, ctx: TaskContext, plan: DevicePlan, *, default_lr: float,
                  revision: str | None = None) -> dict[str, Any]:
    """Keyword arguments shared by every TRL config, from our hyperparameters."""
    warmup: float = hp.warmup_steps or hp.warmup_ratio
    init: dict[str, Any] = {"dtype": plan.load_dtype}
    if revision:
        init["revision"] = revision
    return {
        "output_dir": str(ctx.workdir / "trainer"), "num_train_epochs": hp.num_train_epochs, "max_steps": hp.max_steps,
        "learning_rate": hp.learning_rate or default_lr, "per_device_train_batch_size": hp.per_device_train_batch_size,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps, "lr_scheduler_type": hp.lr_scheduler_type,
        "warmup_steps": warmup, "weight_decay": hp.weight_decay, "max_grad_norm": hp.max_grad_norm, "optim": hp.optim,
        "logging_steps": hp.logging_steps, "logging_first_step": True, "save_strategy": "steps",
        "save_steps": hp.save_steps, "save_total_limit": hp.save_total_limit, "seed": hp.seed, "report_to": "none",
        "bf16": plan.bf16, "fp16": plan.fp16, "use_cpu": plan.use_cpu, "disable_tqdm": True,
        # the new name, so transformers 5.x does not warn about the deprecated gradient_checkpointing
        "gradient_checkpointing": None, "activation_checkpointing": hp.gradient_checkpointing,
        "model_init_kwargs": init, "dataloader_num_workers": 0,
    }


def user_callbacks(references: list[str]) -> list[Any]:
    """TrainerCallback classes named 'package.module:Class' in the hyperparameters."""
    out = []
    for ref in references:
        module_name, _, attr = ref.partition(":")
        try:
            out.append(getattr(importlib.import_module(module_name), attr)())
        except (ImportError, AttributeError) as exc:
            raise TaskInputError(f"hyperparameters.callbacks: cannot load {ref!r}: {exc}") from None
    return out


# -- running and outputs ----------------------------------------------------------------------------------


def run_training(trainer: Any, ctx: TaskContext, record: Any) -> dict[str, Any]:
    """Train, resuming from the attempt's downloaded checkpoint when there is one; the result's numbers."""
    from mloc_agent.modules.training.progress import resume_checkpoint

    resume = resume_checkpoint(ctx)
    out = trainer.train(resume_from_checkpoint=resume)
    state = trainer.state
    result: dict[str, Any] = {
        "global_step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
        "train_loss": out.training_loss, "train_runtime_s": out.metrics.get("train_runtime"),
        "resumed_from_step": record.resumed_from_step, "checkpoint_steps": record.checkpoints,
        "final_metrics": {k: v for k, v in record.last_logs.items() if k not in ("loss", "epoch")},
    }
    result.update(record.loss_summary())
    return result


def save_outputs(trainer: Any, ctx: TaskContext, *, adapter: bool, merge: bool, base: str, plan: DevicePlan,
                 auto_class: str = "AutoModelForCausalLM", revision: str | None = None,
                 load_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Adapter (or full model) into the output folder — the agent uploads it as artifacts — and,
    on request, the base model with the adapter merged in."""
    import json

    name = "adapter" if adapter else "model"
    target = ctx.output_dir / name
    trainer.save_model(str(target))  # every rank: FSDP and ZeRO-3 gather the shards; the main process writes
    if ctx.rank != 0:  # global rank 0 alone writes outputs (the agent uploads that node's output folder)
        return {name: name + "/"}
    for junk in ("training_args.bin", "README.md"):
        (target / junk).unlink(missing_ok=True)
    if adapter:
        hub.name_mirrored_base(target / "adapter_config.json")
    (ctx.output_dir / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1, default=str))
    outputs = {name: name + "/"}
    if merge and adapter:
        import transformers
        from peft import PeftModel

        merged_dir = ctx.output_dir / "merged"
        model_cls = getattr(transformers, auto_class)
        dtype = plan.torch_dtype() if plan.load_dtype != "float32" else None
        base_model = model_cls.from_pretrained(base, revision=revision, dtype=dtype, **(load_kwargs or {}))
        merged = PeftModel.from_pretrained(base_model, str(target)).merge_and_unload()
        merged.save_pretrained(merged_dir)
        if trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(merged_dir)
        outputs["merged"] = "merged/"
    shutil.rmtree(ctx.workdir / "trainer", ignore_errors=True)
    return outputs


def quiet_environment() -> None:
    """Settings for a child process that has no terminal and no business calling home."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
