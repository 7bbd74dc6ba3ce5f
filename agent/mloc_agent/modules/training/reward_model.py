"""reward_model: train a scalar reward model (one-logit sequence classifier) with TRL's
RewardTrainer on chosen/rejected pairs — the model GRPO or PPO then scores completions with."""

from __future__ import annotations

from typing import Any, ClassVar

from mloc_agent.modules.training.base import TrainingJob, TrainingModule


class RewardModelModule(TrainingModule):
    task_type = "reward_model"
    warm_imports = (*TrainingModule.warm_imports, "trl.trainer.reward_trainer")
    lr_adapter = 1e-4
    lr_full = 1e-5
    auto_class = "AutoModelForSequenceClassification"
    merge_load_kwargs: ClassVar[dict[str, Any]] = {"num_labels": 1}

    def build_trainer(self, job: TrainingJob) -> tuple[Any, dict[str, Any]]:
        from trl import RewardConfig, RewardTrainer

        from mloc_agent.modules.training.data import for_preference

        hp = job.hp
        rows = for_preference(job.rows, job.data_spec)
        config = RewardConfig(**job.args, max_length=hp.max_length,
                              center_rewards_coefficient=hp.center_rewards_coefficient)
        trainer = RewardTrainer(model=job.base, args=config, train_dataset=rows, processing_class=job.tokenizer,
                                peft_config=job.peft("SEQ_CLS"), quantization_config=job.quantization(),
                                callbacks=job.callbacks)
        return trainer, {"data_format": "preference"}
