"""grpo: group relative policy optimisation with TRL's GRPOTrainer.

Each prompt gets ``num_generations`` completions, scored by the reward functions in
``hyperparameters.reward_funcs`` (built-ins, ``package.module:function`` references or a reward
model; see grpo_rewards.py), weighted by their ``weight``. Dataset columns other than ``prompt`` reach
the reward functions by name (e.g. ``answer`` for ``answer_match``).
"""

from __future__ import annotations

from typing import Any

from mloc_agent.modules.training.base import TrainingJob, TrainingModule


class GRPOModule(TrainingModule):
    task_type = "grpo"
    warm_imports = (*TrainingModule.warm_imports, "trl.trainer.grpo_trainer")
    lr_adapter = 1e-5  # TRL's LoRA advice; GRPOConfig's own default (full) is 1e-6
    lr_full = 1e-6

    def build_trainer(self, job: TrainingJob) -> tuple[Any, dict[str, Any]]:
        from trl import GRPOConfig, GRPOTrainer

        from mloc_agent.modules.training.data import for_prompts
        from mloc_agent.modules.training.grpo_rewards import build_rewards

        hp = job.hp
        rows = for_prompts(job.rows, job.data_spec)
        funcs, weights, names = build_rewards(hp.reward_funcs, self.ctx.paths)
        vllm: dict[str, Any] = {}
        if hp.use_vllm:
            vllm = {"use_vllm": True, "vllm_mode": hp.vllm_mode}
            if hp.vllm_server_base_url:
                self.ctx.urls.check(hp.vllm_server_base_url, "hyperparameters.vllm_server_base_url")
                vllm["vllm_server_base_url"] = hp.vllm_server_base_url
        config = GRPOConfig(**job.args, num_generations=hp.num_generations,
                            max_completion_length=hp.max_completion_length, temperature=hp.temperature,
                            top_p=hp.top_p, beta=hp.beta, num_iterations=hp.num_iterations, epsilon=hp.epsilon,
                            loss_type=hp.loss_type, reward_weights=weights, **vllm)
        trainer = GRPOTrainer(model=job.base, reward_funcs=funcs, args=config, train_dataset=rows,
                              processing_class=job.tokenizer, peft_config=job.peft(),
                              quantization_config=job.quantization(), callbacks=job.callbacks)
        return trainer, {"data_format": "prompt", "reward_functions": names, "reward_weights": weights}
