"""Loss and perplexity of a causal LM on rows, token-weighted: the summed NLL of every scored token
over their count, so a long row weighs as its tokens do (the mean of per-row perplexities would let
short rows dominate); perplexity = exp(loss).

Rows come shaped as the SFT module shapes them (training/data.for_sft), so a model is measured on
text the way it was trained: ``text`` and chat ``messages`` score every token, ``prompt_completion``
(and instruction rows, which become it) only the completion's tokens, given the prompt.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

IGNORE = -100


@dataclass
class Scored:
    """One row's tokens: ids, and labels with the unscored (prompt) positions set to IGNORE."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class RowLoss:
    nll: float  # summed over the row's scored tokens
    tokens: int

    @property
    def loss(self) -> float | None:
        return self.nll / self.tokens if self.tokens else None


def _chat(tokenizer: Any, messages: list[dict[str, Any]], *, prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenize_row(tokenizer: Any, row: dict[str, Any], kind: str, max_length: int) -> Scored:
    """A shaped row (text | chat | prompt_completion) -> its ids and labels, cut to ``max_length``."""
    if kind == "text":
        ids = list(tokenizer(row["text"])["input_ids"])
        labels = list(ids)
    elif kind == "chat":
        ids = list(tokenizer(_chat(tokenizer, row["messages"], prompt=False), add_special_tokens=False)["input_ids"])
        labels = list(ids)
    else:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list):  # conversational: the template around both, the reply scored
            head = _chat(tokenizer, prompt, prompt=True)
            full = _chat(tokenizer, [*prompt, *(completion if isinstance(completion, list) else
                                               [{"role": "assistant", "content": str(completion)}])], prompt=False)
            special = False
        else:
            head, full, special = prompt, prompt + completion, True
        head_ids = list(tokenizer(head, add_special_tokens=special)["input_ids"])
        ids = list(tokenizer(full, add_special_tokens=special)["input_ids"])
        cut = _common_prefix(head_ids, ids)  # a merge across the boundary belongs to the completion
        labels = [IGNORE] * cut + ids[cut:]
    return Scored(ids[:max_length], labels[:max_length])


def _batches(items: list[Scored], size: int) -> Iterator[list[Scored]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def row_losses(model: Any, pad_id: int, rows: list[Scored], batch_size: int, device: Any,
               on_batch: Callable[[int, float, int], None] | None = None) -> list[RowLoss]:
    """Each row's summed NLL and scored-token count, from one forward pass per batch (right-padded).
    ``on_batch(rows_done, running_loss, running_tokens)`` after each batch, for progress."""
    import torch

    out: list[RowLoss] = []
    nll_sum, token_sum = 0.0, 0
    for batch in _batches(rows, batch_size):
        width = max(1, max(len(r.input_ids) for r in batch))
        ids = torch.tensor([r.input_ids + [pad_id] * (width - len(r.input_ids)) for r in batch], device=device)
        labels = torch.tensor([r.labels + [IGNORE] * (width - len(r.labels)) for r in batch], device=device)
        mask = torch.tensor([[1] * len(r.input_ids) + [0] * (width - len(r.input_ids)) for r in batch],
                            device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]  # token t is predicted from the tokens before it
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
        scored = target != IGNORE
        sums = (nll * scored).sum(dim=1).tolist()
        counts = scored.sum(dim=1).tolist()
        for s, c in zip(sums, counts, strict=True):
            out.append(RowLoss(float(s), int(c)))
            nll_sum, token_sum = nll_sum + float(s), token_sum + int(c)
        if on_batch is not None:
            on_batch(len(out), nll_sum / token_sum if token_sum else math.nan, token_sum)
    return out


def summary(losses: list[RowLoss]) -> dict[str, float]:
    """loss (token-weighted mean NLL, nats) and perplexity = exp(loss); empty when no token was scored."""
    tokens = sum(r.tokens for r in losses)
    if not tokens:
        return {}
    loss = sum(r.nll for r in losses) / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}
