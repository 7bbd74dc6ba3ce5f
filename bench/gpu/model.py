"""Builds the kit's model and data on the machine (nothing can be downloaded there).

A Llama config at the profile's size with random weights, saved with a tokenizer trained locally
by MLOC's tiny-model builder (the one ``mloc demo`` uses), and ``rows`` text rows each longer
than ``max_length`` tokens, so every example is cut to exactly ``max_length`` and both training
paths count the same tokens. Run as its own process (``python -m bench.gpu.model``) so that the
kit's process never holds a CUDA context that would blur the memory figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from bench.gpu.profiles import DRY, GPU, Profile

_WORDS = ("the", "model", "answer", "question", "data", "train", "learn", "token", "step", "loss", "reward", "good",
          "bad", "red", "blue", "green", "one", "two", "three", "four", "five", "cat", "dog", "bird", "fish", "tree",
          "river", "city", "code", "python", "number", "what", "how", "why", "when", "where", "hello", "world")


def text_row(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)) + "."


def tiny_model() -> Callable[[list[str]], int]:
    """MLOC's tiny-model builder, found as ``mloc demo`` finds it (the ``mloc.demo`` entry point):
    the kit names no module path inside mloc-agent."""
    found = entry_points(group="mloc.demo", name="tiny_model")
    if not found:
        raise RuntimeError("no 'mloc.demo' entry point: is mloc-agent installed?")
    return next(iter(found)).load()


def build(profile: Profile, root: Path) -> dict[str, object]:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer_dir, model_dir = root / "tokenizer", root / "model"
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the folder it built
        tiny_model()([str(tokenizer_dir)])
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(
        vocab_size=max(profile.vocab_size, len(tokenizer)), hidden_size=profile.hidden_size,
        intermediate_size=profile.intermediate_size, num_hidden_layers=profile.layers,
        num_attention_heads=profile.heads, num_key_value_heads=profile.kv_heads, head_dim=64,
        max_position_embeddings=max(2048, 2 * profile.max_length), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):  # initialising 0.5B weights on the GPU takes a second
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16 if cuda else torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    params = sum(p.numel() for p in model.parameters())
    del model

    rng = random.Random(0)
    words = profile.max_length  # a word is at least one token
    rows = [text_row(rng, words) for _ in range(profile.rows)]
    shortest = min(len(tokenizer(r)["input_ids"]) for r in rows[:8])
    data = root / "sft.jsonl"
    data.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    prompts = [" ".join(rng.choice(_WORDS) for _ in range(12)) for _ in range(profile.prompts)]
    info = {"model_dir": str(model_dir), "data": str(data), "prompts": prompts, "parameters": params,
            "parameters_b": params / 1e9, "vocab_size": config.vocab_size,
            "tokenizer_vocab": len(tokenizer), "rows": len(rows), "min_tokens_per_row": shortest,
            "dtype": "bfloat16" if cuda else "float32"}
    (root / "model.json").write_text(json.dumps(info, indent=1))
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu.model", description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--profile", choices=("gpu", "dry"), default="gpu")
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    print(json.dumps(build(GPU if args.profile == "gpu" else DRY, args.root)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
