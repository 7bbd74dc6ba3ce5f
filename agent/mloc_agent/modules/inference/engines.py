"""The two decoders behind the inference module.

Both engines take token ids (``encode`` applies the chat template once, here), so a prompt reaches
vLLM and transformers as the same tokens. Imported only in the task's child process; vLLM is
imported only by VLLMEngine, so the transformers engine runs without it and vice versa.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from typing import Any

from mloc_shared.hyperparams import InferenceHyperparameters

from mloc_agent.modules.base import TaskContext
from mloc_agent.modules.errors import TaskInputError
from mloc_agent.modules.sources.models import ResolvedModel

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


# -- prompts to tokens ------------------------------------------------------------------------------------


@dataclass
class Generation:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def encode(tokenizer: Any, prompts: list[Any], hp: InferenceHyperparameters) -> tuple[list[list[int]], bool]:
    """Token ids per prompt, and whether the chat template was applied (``chat: null``: when there is one)."""
    use_chat = hp.chat if hp.chat is not None else bool(tokenizer.chat_template)
    if use_chat and not tokenizer.chat_template:
        raise TaskInputError("hyperparameters.chat: this model's tokenizer has no chat template")
    out = []
    for prompt in prompts:
        if use_chat:
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            if hp.system_prompt and messages[0].get("role") != "system":
                messages = [{"role": "system", "content": hp.system_prompt}, *messages]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
        else:
            text = prompt if isinstance(prompt, str) else "\n".join(str(m.get("content", "")) for m in prompt)
            if hp.system_prompt:
                text = f"{hp.system_prompt}\n\n{text}"
            out.append(list(tokenizer(text)["input_ids"]))
    return out, use_chat


def _sampling(hp: InferenceHyperparameters) -> bool:
    return hp.do_sample if hp.do_sample is not None else hp.temperature > 0


def _apply_stops(text: str, stops: list[str] | None) -> tuple[str, bool]:
    cuts = [text.index(s) for s in stops or [] if s and s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


# -- engines ----------------------------------------------------------------------------------------------


class TransformersEngine:
    """``generate`` in batches of ``batch_size``; the adapter is merged in once for speed."""

    def __init__(self, model: ResolvedModel, hp: InferenceHyperparameters, ctx: TaskContext) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.hp = hp
        self.tokenizer = AutoTokenizer.from_pretrained(model.tokenizer)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if cuda else "cpu")
        self.dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
        # several leased GPUs: the layers are spread over them (accelerate's device_map="auto"), so a model too
        # big for one card runs; inputs go to the first layer's device
        self.sharded = cuda and torch.cuda.device_count() > 1 and len(ctx.gpus) > 1
        extra: dict[str, Any] = {"device_map": "auto"} if self.sharded else {}
        net = AutoModelForCausalLM.from_pretrained(model.base, dtype=self.dtype, **extra)
        if model.adapter is not None:
            from peft import PeftModel

            net = PeftModel.from_pretrained(net, str(model.adapter)).merge_and_unload()
        self.model = (net if self.sharded else net.to(self.device)).eval()
        if self.sharded:
            self.device = next(self.model.parameters()).device
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = {*(eos if isinstance(eos, list) else [eos] if eos is not None else []),
                        self.tokenizer.eos_token_id}
        self.chunk_size = hp.batch_size
        self.templated = False
        if hp.seed is not None:
            torch.manual_seed(hp.seed)

    def encode(self, prompts: list[Any]) -> list[list[int]]:
        ids, self.templated = encode(self.tokenizer, prompts, self.hp)
        return ids

    def generate(self, batch: list[list[int]]) -> list[Generation]:
        import torch

        hp, pad = self.hp, self.tokenizer.pad_token_id
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=self.device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=self.device)
        kwargs: dict[str, Any] = {"max_new_tokens": hp.max_new_tokens, "do_sample": _sampling(hp), "pad_token_id": pad,
                                  "eos_token_id": sorted(i for i in self.eos_ids if i is not None)}
        if kwargs["do_sample"]:
            kwargs.update(temperature=hp.temperature or 1.0, top_p=hp.top_p, top_k=hp.top_k or 0)
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        results = []
        for ids, row in zip(batch, out[:, width:].tolist(), strict=True):
            end = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            tokens = row if end is None else row[:end]
            text, stopped = _apply_stops(self.tokenizer.decode(tokens, skip_special_tokens=True), hp.stop)
            finish = "stop" if end is not None or stopped else "length"
            results.append(Generation(text, finish, len(ids), len(tokens) + (end is not None)))
        return results

    def facts(self) -> dict[str, Any]:
        facts = {"device": self.device.type, "dtype": str(self.dtype).removeprefix("torch.")}
        if self.sharded:
            facts["device_map"] = "auto"
            facts["gpus_used"] = len({str(d) for d in getattr(self.model, "hf_device_map", {}).values()})
        return facts


class VLLMEngine:
    """vLLM's offline engine over the whole prompt list (continuous batching), LoRA per request."""

    def __init__(self, model: ResolvedModel, hp: InferenceHyperparameters, ctx: TaskContext) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise TaskInputError("engine: vllm needs vLLM in this task's Python; map 'inference' to a vLLM runtime "
                                 "on this agent (MLOC_RUNTIMES, e.g. agent/runtimes/vllm-cpu.sh) or use engine: "
                                 "transformers")
        import torch

        self.cuda = torch.cuda.is_available()
        if not self.cuda:  # vllm-cpu: a small KV cache (GiB) unless the operator chose one
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from transformers import AutoTokenizer
        from vllm import LLM

        self.hp = hp
        self.tokenizer = AutoTokenizer.from_pretrained(model.tokenizer)
        # vLLM reads a model config beside its tokenizer, which an adapter folder lacks: it detokenizes
        # with the base's; prompts are tokenized above with the adapter's, the same vocabulary
        kwargs: dict[str, Any] = {"model": model.base, "tokenizer": model.base}
        if hp.seed is not None:
            kwargs["seed"] = hp.seed
        for key in ("max_model_len", "gpu_memory_utilization", "tensor_parallel_size"):
            if getattr(hp, key) is not None:
                kwargs[key] = getattr(hp, key)
        if hp.tensor_parallel_size is None and len(ctx.gpus) > 1 and self.cuda:  # one shard per leased GPU
            kwargs["tensor_parallel_size"] = len(ctx.gpus)
        self.tensor_parallel_size = kwargs.get("tensor_parallel_size", 1)
        self.lora = None
        if model.adapter is not None:
            from vllm.lora.request import LoRARequest

            rank = int(json.loads((model.adapter / "adapter_config.json").read_text()).get("r", 16))
            kwargs.update(enable_lora=True, max_loras=1,
                          max_lora_rank=next((r for r in VLLM_LORA_RANKS if r >= rank), VLLM_LORA_RANKS[-1]))
            self.lora = LoRARequest("adapter", 1, str(model.adapter))
        self.llm = LLM(**kwargs)
        self.chunk_size = max(hp.batch_size, 256)  # progress every chunk; vLLM batches within it
        self.templated = False

    def encode(self, prompts: list[Any]) -> list[list[int]]:
        ids, self.templated = encode(self.tokenizer, prompts, self.hp)
        return ids

    def generate(self, batch: list[list[int]]) -> list[Generation]:
        from vllm import SamplingParams

        hp = self.hp
        sampling = SamplingParams(n=1, temperature=hp.temperature if _sampling(hp) else 0.0, top_p=hp.top_p,
                                  top_k=hp.top_k or 0, max_tokens=hp.max_new_tokens, stop=hp.stop, seed=hp.seed)
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in batch], sampling, use_tqdm=False,
                                 lora_request=self.lora)
        return [Generation(o.outputs[0].text, o.outputs[0].finish_reason or "length", len(ids),
                           len(o.outputs[0].token_ids)) for ids, o in zip(batch, outs, strict=True)]

    def facts(self) -> dict[str, Any]:
        import vllm

        return {"device": "cuda" if self.cuda else "cpu", "vllm_version": vllm.__version__,
                "tensor_parallel_size": self.tensor_parallel_size}


ENGINES: dict[str, Any] = {"transformers": TransformersEngine, "vllm": VLLMEngine}
