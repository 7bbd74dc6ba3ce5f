"""The sizes the kit runs at: ``gpu`` (a ~0.5B Llama, minutes on an H200) and ``dry`` (a few layers
on CPU, tens of seconds: the dry run ``make test`` runs so the kit never rots)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Profile:
    name: str
    # the model: Llama-style, random weights; head_dim is 64 (vLLM refuses smaller heads)
    hidden_size: int
    intermediate_size: int
    layers: int
    kv_heads: int
    vocab_size: int  # at least the local tokenizer's; the rows beyond it are never seen
    # SFT, the same in MLOC and in the bare TRL script
    steps: int
    batch: int
    max_length: int
    logging_steps: int
    lora_r: int
    lora_alpha: int
    # the other phases
    qlora_steps: int
    full_steps: int  # a full fine-tune, for the memory rule's other branch
    prompts: int
    max_new_tokens: int
    inference_batch: int
    # CPU threads per task (both paths alike): one in the dry run, where a shared 2-core box
    # oversubscribed by OpenMP's spinning threads would make every step crawl
    cpu_threads: int | None = None

    @property
    def heads(self) -> int:
        return max(1, self.hidden_size // 64)

    @property
    def rows(self) -> int:
        """One epoch of exactly ``steps`` batches."""
        return self.steps * self.batch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


GPU = Profile(name="gpu", hidden_size=1024, intermediate_size=4096, layers=28, kv_heads=8, vocab_size=32000,
              steps=150, batch=8, max_length=1024, logging_steps=10, lora_r=16, lora_alpha=32,
              qlora_steps=60, full_steps=30, prompts=64, max_new_tokens=128, inference_batch=32)
DRY = Profile(name="dry", hidden_size=64, intermediate_size=128, layers=2, kv_heads=1, vocab_size=512,
              steps=6, batch=2, max_length=32, logging_steps=2, lora_r=4, lora_alpha=8,
              qlora_steps=0, full_steps=0, prompts=4, max_new_tokens=8, inference_batch=4, cpu_threads=1)
