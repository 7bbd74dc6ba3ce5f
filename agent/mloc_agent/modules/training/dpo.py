"""dpo: direct preference optimisation with TRL's DPOTrainer on prompt/chosen/rejected rows.

With an adapter the reference model is the base itself (adapter disabled), so no second copy is
loaded; a full fine-tune loads a frozen reference copy.
"""

from __future__ import annotations

from typing import Any

from mloc_agent.modules.training.base import TrainingJob, TrainingModule


class DPOModule(TrainingModule):
    task_type = "dpo"
    warm_imports = (*TrainingModule.warm_imports, "trl.trainer.dpo_trainer")
    lr_adapter = 5e-6  # TRL's LoRA advice; DPOConfig's own default (full) is 1e-6
    lr_full = 1e-6

    def build_trainer(self, job: TrainingJob) -> tuple[Any, dict[str, Any]]:
        from trl import DPOConfig, DPOTrainer

        from mloc_agent.modules.training.data import for_preference

        hp = job.hp
        rows = for_preference(job.rows, job.data_spec)
        loss_type = hp.loss_type if isinstance(hp.loss_type, list) else [hp.loss_type]
        config = DPOConfig(**job.args, max_length=hp.max_length, beta=hp.beta, loss_type=loss_type,
                           label_smoothing=hp.label_smoothing)
        trainer = DPOTrainer(model=job.base, args=config, train_dataset=rows, processing_class=job.tokenizer,
                             peft_config=job.peft(), quantization_config=job.quantization(), callbacks=job.callbacks)
        return trainer, {"data_format": "preference", "beta": hp.beta, "loss_type": loss_type}
