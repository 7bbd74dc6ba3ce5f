"""The flow every TRL training module shares: read the spec, load, train with progress and
checkpoints, resume when the attempt has a checkpoint, write the adapter. A task type supplies
only ``build_trainer`` (its TRL trainer and config) and its defaults.
"""

from __future__ import annotations

from typing import Any, ClassVar

from mloc_shared.hyperparams import TrainingHyperparameters, parse_hyperparameters

from mloc_agent.modules.base import BaseModule, ProgressCallback
from mloc_agent.modules.errors import TaskInputError
from mloc_agent.modules.sources.models import resolve_model
from mloc_agent.modules.training.strategies import TokenCounter, run_facts, strategy_args
from mloc_agent.modules.training.trainer_common import (
    TRAINING_REQUIRES,
    DevicePlan,
    device_plan,
    load_tokenizer,
    lora_config,
    quantization_config,
    quiet_environment,
    run_training,
    save_outputs,
    training_args,
    user_callbacks,
)


class TrainingJob:
    """Everything ``build_trainer`` needs, resolved once."""

    def __init__(self, base: str, revision: str | None, tokenizer: Any, rows: Any, data_spec: Any,
                 hp: TrainingHyperparameters, args: dict[str, Any], plan: DevicePlan, adapter: dict[str, Any],
                 callbacks: list[Any]) -> None:
        self.base, self.revision, self.tokenizer = base, revision, tokenizer
        self.rows, self.data_spec, self.hp, self.args = rows, data_spec, hp, args
        self.plan, self.adapter, self.callbacks = plan, adapter, callbacks

    @property
    def adapter_type(self) -> str:
        return self.adapter.get("type", "none")

    def peft(self, task_type: str = "CAUSAL_LM") -> Any:
        return lora_config(self.adapter, task_type)

    def quantization(self) -> Any:
        return quantization_config(self.adapter_type, self.plan)


class TrainingModule(BaseModule):
    """Base of sft, dpo, grpo and reward_model; subclasses set the class attributes and build_trainer."""

    requires: ClassVar[tuple[str, ...]] = TRAINING_REQUIRES
    warm_imports: ClassVar[tuple[str, ...]] = (
        "torch", "transformers", "transformers.trainer", "transformers.models.auto.modeling_auto", "peft", "datasets",
        "trl", "mloc_agent.modules.training.trainer_common", "mloc_agent.modules.training.data",
        "mloc_agent.modules.training.progress", "mloc_agent.modules.training.preemption")
    lr_adapter: ClassVar[float] = 2e-4  # TRL's advice: about 10x the full fine-tune rate with LoRA
    lr_full: ClassVar[float] = 2e-5
    auto_class: ClassVar[str] = "AutoModelForCausalLM"
    merge_load_kwargs: ClassVar[dict[str, Any]] = {}
    checkpoints_on_preempt = classmethod(lambda cls, spec: True)  # training/preemption.py

    def build_trainer(self, job: TrainingJob) -> tuple[Any, dict[str, Any]]:
        """The TRL trainer for this task type plus facts for the result (data format, …)."""
        raise NotImplementedError

    def rows(self, job_spec: dict[str, Any], seed: int) -> tuple[Any, Any]:
        from mloc_agent.modules.training.data import load_rows

        return load_rows(job_spec.get("dataset"), self.ctx, seed=seed)

    async def execute(self, progress_callback: ProgressCallback | None = None) -> dict[str, Any]:
        from mloc_agent.modules.training.preemption import make_preemption_callback
        from mloc_agent.modules.training.progress import TrainingRecord, make_progress_callback

        quiet_environment()
        spec = self.spec
        hp = parse_hyperparameters(self.task_type, spec.get("hyperparameters"))
        model_spec = spec.get("model")
        if not model_spec:
            raise TaskInputError(f"taskType {self.task_type!r} needs 'model' (source, optional adapter)")
        adapter = model_spec.get("adapter") or {"type": "none"}
        source = model_spec["source"]
        model = resolve_model(model_spec, self.ctx)
        base = model.loadable()
        plan = device_plan(model_spec.get("dtype", "auto"), adapter.get("type", "none"))
        send = progress_callback or self.ctx.progress
        send({"message": f"loading {source['identifier']} ({plan.load_dtype}, {'cuda' if plan.cuda else 'cpu'})"})
        tokenizer = load_tokenizer(model.tokenizer, source.get("revision"))
        rows, data_spec = self.rows(spec, hp.seed)
        record = TrainingRecord()
        callbacks = [make_progress_callback(self.ctx, send, record), make_preemption_callback(self.ctx),
                     *user_callbacks(hp.callbacks)]
        default_lr = self.lr_full if adapter.get("type", "none") == "none" else self.lr_adapter
        args = training_args(hp, self.ctx, plan, default_lr=default_lr, revision=source.get("revision"))
        args.update(strategy_args(spec, hp, plan.cuda))  # ddp (nothing to add), fsdp or deepspeed: strategies.py
        job = TrainingJob(base, source.get("revision"), tokenizer, rows, data_spec, hp, args, plan, adapter, callbacks)
        trainer, info = self.build_trainer(job)
        counter = TokenCounter()
        counter.wrap(trainer)
        result = run_training(trainer, self.ctx, record)
        result.update(run_facts(trainer, counter, result.get("train_runtime_s")))
        outputs = save_outputs(trainer, self.ctx, adapter=job.adapter_type != "none", merge=hp.merge_adapter,
                               base=base, plan=plan, auto_class=self.auto_class, revision=source.get("revision"),
                               load_kwargs=self.merge_load_kwargs)
        quantized = bool(getattr(trainer.model, "is_loaded_in_4bit", False))
        return {**result, **info, "outputs": outputs, "adapter": job.adapter_type, "quantized_4bit": quantized,
                "device": "cuda" if plan.cuda else "cpu", "dtype": plan.load_dtype, "bf16": plan.bf16,
                "learning_rate": args["learning_rate"], "examples": len(job.rows), "notes": plan.notes}
