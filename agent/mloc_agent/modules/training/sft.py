"""sft: supervised fine-tuning with TRL's SFTTrainer — full, LoRA or QLoRA (4-bit base + LoRA).

Data: plain text, instruction (alpaca), chat ``messages`` (assistant-only loss when the chat
template marks assistant turns with ``{% generation %}``) or prompt/completion. Output: the adapter
(``adapter/``) or the full model (``model/``), and ``merged/`` when ``merge_adapter`` is set.
"""

from __future__ import annotations

from typing import Any

from mloc_agent.modules.training.base import TrainingJob, TrainingModule


def template_marks_assistant(tokenizer: Any) -> bool:
    """TRL's assistant-only loss needs {% generation %} markers in the chat template."""
    template = tokenizer.chat_template or ""
    return isinstance(template, str) and "generation %}" in template


class SFTModule(TrainingModule):
    task_type = "sft"
    warm_imports = (*TrainingModule.warm_imports, "trl.trainer.sft_trainer")
    lr_adapter = 2e-4
    lr_full = 2e-5

    def build_trainer(self, job: TrainingJob) -> tuple[Any, dict[str, Any]]:
        from trl import SFTConfig, SFTTrainer

        from mloc_agent.modules.training.data import for_sft

        hp = job.hp
        rows, kind = for_sft(job.rows, job.data_spec, has_chat_template=bool(job.tokenizer.chat_template))
        assistant_only = hp.assistant_only_loss
        if assistant_only is None:
            assistant_only = kind == "chat" and template_marks_assistant(job.tokenizer)
        config = SFTConfig(**job.args, max_length=hp.max_length, packing=hp.packing,
                           assistant_only_loss=assistant_only, completion_only_loss=hp.completion_only_loss,
                           neftune_noise_alpha=hp.neftune_noise_alpha)
        trainer = SFTTrainer(model=job.base, args=config, train_dataset=rows, processing_class=job.tokenizer,
                             peft_config=job.peft(), quantization_config=job.quantization(), callbacks=job.callbacks)
        return trainer, {"data_format": kind, "assistant_only_loss": assistant_only}
