"""The same SFT as MLOC's sft module, as a bare TRL script: the yardstick for MLOC's overhead.

    python -m bench.gpu.bare_trl CONFIG.json RESULT.json

CONFIG holds the model folder, the data file, the LoRA settings and the very hyperparameters the
kit gives MLOC's task, all explicit. This script builds the SFTConfig the sft module builds from
them (trainer_common.training_args: same field for field, checkpointing under whichever name this
transformers knows), the same LoRA config and the same dataset, and runs it with no MLOC around it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

STARTED = time.monotonic()


def sft_config(hp: dict[str, Any], output_dir: Path, cuda: bool) -> Any:
    from trl import SFTConfig

    names = {f.name for f in fields(SFTConfig)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return SFTConfig(
        output_dir=str(output_dir), num_train_epochs=1, max_steps=hp["max_steps"], learning_rate=hp["learning_rate"],
        per_device_train_batch_size=hp["per_device_train_batch_size"],
        gradient_accumulation_steps=hp["gradient_accumulation_steps"], lr_scheduler_type=hp["lr_scheduler_type"],
        warmup_steps=hp["warmup_steps"], weight_decay=hp["weight_decay"], max_grad_norm=hp["max_grad_norm"],
        optim=hp["optim"], logging_steps=hp["logging_steps"], logging_first_step=True, save_strategy="steps",
        save_steps=hp["save_steps"], save_total_limit=2, seed=hp["seed"], report_to="none", bf16=cuda,
        fp16=False, use_cpu=not cuda, disable_tqdm=True, dataloader_num_workers=0,
        model_init_kwargs={"dtype": "bfloat16" if cuda else "float32"}, max_length=hp["max_length"],
        packing=hp["packing"], assistant_only_loss=False, **{checkpointing: hp["gradient_checkpointing"]},
    )


def run(config: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from bench.gpu.peak_memory import TARGET_DIR, PeakMemory

    out_dir = Path(config["output_dir"])
    os.environ[TARGET_DIR] = str(out_dir)
    cuda = torch.cuda.is_available()
    hp = config["hyperparameters"]
    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = [json.loads(line) for line in Path(config["data"]).read_text().splitlines() if line.strip()]
    lora = LoraConfig(r=config["lora"]["r"], lora_alpha=config["lora"]["lora_alpha"], lora_dropout=0.05,
                      target_modules="all-linear", bias="none", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=config["model"], args=sft_config(hp, out_dir / "trainer", cuda),
                         train_dataset=Dataset.from_list(rows).select_columns(["text"]), processing_class=tokenizer,
                         peft_config=lora, callbacks=[PeakMemory()])
    started_train = time.monotonic()
    out = trainer.train()
    logs = trainer.state.log_history
    losses = [[e["step"], e["loss"]] for e in logs if "loss" in e]
    tokens = next((e["num_tokens"] for e in reversed(logs) if "num_tokens" in e), None)
    return {"global_step": trainer.state.global_step, "train_loss": out.training_loss,
            "train_runtime_s": out.metrics.get("train_runtime"), "num_tokens": tokens, "losses": losses,
            "first_loss": losses[0][1] if losses else None, "final_loss": losses[-1][1] if losses else None,
            "setup_s": round(started_train - STARTED, 2), "device": "cuda" if cuda else "cpu", "bf16": cuda}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    config, result_path = json.loads(Path(args[0]).read_text()), Path(args[1])
    result = run(config)
    memory = Path(config["output_dir"]) / "gpu_memory.json"
    result["memory"] = json.loads(memory.read_text()) if memory.exists() else None
    result["process_s"] = round(time.monotonic() - STARTED, 2)
    result_path.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
