"""The models PPO runs: the policy with a value head, the frozen reference, and the reward model.

- Policy: a causal LM (LoRA adapter on a frozen base, or all weights) with a scalar value head on
  its last hidden state, as TRL <= 0.11's ``AutoModelForCausalLMWithValueHead`` (shared trunk).
- Reference: with LoRA it is the same base with the adapter switched off (no second copy in
  memory); a full fine-tune keeps a separate frozen copy.
- Reward model: any sequence-classification model with its own tokenizer. Responses are decoded
  to text and re-tokenized by the reward model's tokenizer, so a DeBERTa reward model can score a
  Mistral policy (the original README's PPO example).

Imported only in the task's child process.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mloc_agent.modules.ppo.core import logprobs_from_logits, response_mask


class ValueHead(nn.Module):
    """hidden state -> expected return; kept in float32 whatever the trunk's dtype."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.float()).squeeze(-1)


@dataclass
class Rollout:
    """One batch of PPO experience, padded: queries on the left, responses on the right."""

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    prompts: list[Any]
    responses: list[str]

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.cat([self.query_ids, self.response_ids], dim=1)
        mask = torch.cat([self.query_mask, self.response_mask.to(self.query_mask.dtype)], dim=1)
        return ids, mask


class PolicyWithValue:
    """The trained policy, its value head and the way to its frozen reference."""

    def __init__(self, model: Any, tokenizer: Any, ref_model: Any | None, device: torch.device) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.ref_model = ref_model
        self.device = device
        hidden = model.config.get_text_config().hidden_size if hasattr(model.config, "get_text_config") \
            else model.config.hidden_size
        self.v_head = ValueHead(hidden).to(device)
        self.is_peft = hasattr(model, "disable_adapter")
        ids = model.generation_config.eos_token_id if model.generation_config is not None else None
        ids = ids if ids is not None else tokenizer.eos_token_id
        self.eos_ids: set[int] = set(ids) if isinstance(ids, list) else {int(ids)}
        self.eos_ids.add(int(tokenizer.eos_token_id))

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.v_head.parameters())

    # -- acting ------------------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[Any], max_prompt_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Chat prompts go through the chat template; plain strings are used as written."""
        texts = [prompt_text(p, self.tokenizer) for p in prompts]
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"  # keep the end of a long prompt: it is what the reply follows
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_prompt_tokens,
                             add_special_tokens=not _templated(prompts, self.tokenizer))
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    @torch.no_grad()
    def generate(self, prompts: list[Any], *, max_prompt_tokens: int, gen_kwargs: dict[str, Any]) -> Rollout:
        query_ids, query_mask = self.encode_prompts(prompts, max_prompt_tokens)
        out = self.model.generate(input_ids=query_ids, attention_mask=query_mask, do_sample=True,
                                  pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.eos_ids),
                                  **gen_kwargs)
        response_ids = out[:, query_ids.shape[1]:]
        if response_ids.shape[1] == 0:  # nothing generated at all: give every row one EOS to score
            response_ids = torch.full((len(prompts), 1), min(self.eos_ids), device=self.device)
        mask = response_mask(response_ids, self.eos_ids)
        response_ids = torch.where(mask > 0, response_ids, torch.full_like(response_ids, self.tokenizer.pad_token_id))
        texts = [self.tokenizer.decode(row[m > 0], skip_special_tokens=True)
                 for row, m in zip(response_ids, mask, strict=True)]
        return Rollout(query_ids, query_mask, response_ids, mask, list(prompts), texts)

    # -- scoring the policy's own tokens -------------------------------------------------------------

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, response_len: int, *, with_values: bool = True,
                reference: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs of the response tokens (and the value of each state that emits one)."""
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        keep = response_len + 1  # logits at the last query token predict the first response token
        if reference:
            model, ctx = self._reference()
        else:
            model, ctx = self.model, contextlib.nullcontext()
        with ctx:
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=with_values,
                        logits_to_keep=keep, use_cache=False)
        logits = out.logits[:, -keep:-1]
        logprobs = logprobs_from_logits(logits, ids[:, -response_len:])
        values = None
        if with_values:
            hidden = out.hidden_states[-1][:, -keep:-1]
            values = self.v_head(hidden)
        return logprobs, values

    def _reference(self) -> tuple[Any, Any]:
        if self.ref_model is not None:
            return self.ref_model, contextlib.nullcontext()
        if self.is_peft:
            return self.model, self.model.disable_adapter()
        raise RuntimeError("no reference model: a full fine-tune needs a frozen copy")

    # -- saving --------------------------------------------------------------------------------------

    def save(self, target: Path, value_head: Path) -> None:
        """Adapter (or full model) plus tokenizer into ``target``; the value head to its own file, so
        the adapter folder loads anywhere a LoRA adapter does (peft, vLLM)."""
        from safetensors.torch import save_file

        target.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(target))
        self.tokenizer.save_pretrained(str(target))
        save_file({k: v.contiguous() for k, v in self.v_head.state_dict().items()}, str(value_head))

    def load_value_head(self, path: Path) -> None:
        from safetensors.torch import load_file

        self.v_head.load_state_dict(load_file(str(path), device=str(self.device)))


def _templated(prompts: list[Any], tokenizer: Any) -> bool:
    return bool(prompts) and isinstance(prompts[0], list) and bool(tokenizer.chat_template)


def prompt_text(prompt: Any, tokenizer: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if not tokenizer.chat_template:
        return "\n".join(str(m.get("content", "")) for m in prompt)
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def last_user_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt if m.get("role") == "user"]
    return str((users or prompt)[-1].get("content", ""))


class RewardScorer:
    """A sequence-classification reward model on decoded text, with its own tokenizer.

    ``reward_input``: ``pair`` encodes (question, answer) as a text pair (OpenAssistant's DeBERTa
    reward models), ``chat`` applies the reward tokenizer's chat template to the user turn and the
    reply, ``text`` concatenates them; ``auto`` picks chat when that tokenizer has a template, else pair.
    """

    def __init__(self, name: str, *, device: torch.device, dtype: Any, reward_input: str, max_length: int) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(name)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(name, dtype=dtype).to(device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.requires_grad_(False)
        self.device = device
        if reward_input == "auto":
            reward_input = "chat" if self.tokenizer.chat_template else "pair"
        self.reward_input = reward_input
        self.max_length = max_length

    @torch.no_grad()
    def score(self, prompts: list[Any], responses: list[str]) -> torch.Tensor:
        tok = self.tokenizer
        common = {"return_tensors": "pt", "padding": True, "truncation": True, "max_length": self.max_length}
        if self.reward_input == "pair":
            enc = tok([last_user_text(p) for p in prompts], responses, **common)
        elif self.reward_input == "chat":
            texts = []
            for prompt, response in zip(prompts, responses, strict=True):
                turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
                texts.append(tok.apply_chat_template([*turns, {"role": "assistant", "content": response}],
                                                     tokenize=False))
            enc = tok(texts, add_special_tokens=False, **common)
        else:
            enc = tok([last_user_text(p) + r for p, r in zip(prompts, responses, strict=True)], **common)
        logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits
        return logits[:, 0].float()
