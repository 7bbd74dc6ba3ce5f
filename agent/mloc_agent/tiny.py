"""Tiny Llama-style models built locally in seconds, for tests, CPU examples and ``make demo``.

Nothing is downloaded: a byte-level BPE tokenizer is trained on a small built-in corpus and a
randomly initialised Llama is saved next to it. The chat template carries ``{% generation %}``
markers so TRL can compute an assistant-only loss on chat data. ``head_dim`` is 64 so the same
folder also loads in vLLM (it refuses smaller heads).

CLI: ``python -m mloc_agent.tiny PATH [--reward PATH2]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ m['content'] + '<|im_end|>' }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_VOCAB = (
    "the a an model answer question data train learn token step loss reward good bad yes no red blue green "
    "one two three four five six seven eight nine ten cat dog bird fish tree river city code python number "
    "what is how why when where who which add sum list print hello world please thank you system user assistant"
)
_WORDS = _VOCAB.split(" ")
MARKER = "tiny-mloc"  # written into config.json so tests can tell our tiny models apart


def corpus(lines: int = 600) -> list[str]:
    """A deterministic toy corpus: words, digits and chat markup, enough for a 512-token BPE."""
    out = []
    for i in range(lines):
        words = [_WORDS[(i * 7 + j * 13) % len(_WORDS)] for j in range(8 + i % 5)]
        out.append(" ".join(words) + f" {i} {i * 3 % 97}.")
        out.append(f"<|im_start|>user\nquestion {i}<|im_end|>\n<|im_start|>assistant\nanswer {i * 2}<|im_end|>")
    return out


def build_tokenizer(path: Path, vocab_size: int = 512):
    """Train a byte-level BPE on the toy corpus and save it as a fast tokenizer with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"], chat_template=CHAT_TEMPLATE, model_max_length=512,
    )
    hf_tok.save_pretrained(path)
    return hf_tok


def _llama_config(tokenizer, hidden_size: int, layers: int, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=max(1, hidden_size // 64),
        num_key_value_heads=max(1, hidden_size // 64),
        head_dim=64, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
        **extra,
    )


def _is_built(path: Path) -> bool:
    config = path / "config.json"
    if not config.exists():
        return False
    try:
        return json.loads(config.read_text()).get("mloc_tiny") == MARKER
    except ValueError:
        return False


def build_tiny_lm(path: str | Path, *, hidden_size: int = 128, layers: int = 2, seed: int = 0,
                  force: bool = False) -> Path:
    """A ~0.5M-parameter causal LM plus tokenizer in ``path`` (reused if already built there)."""
    import torch
    from transformers import LlamaForCausalLM

    path = Path(path)
    if _is_built(path) and not force:
        return path
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(path)
    model = LlamaForCausalLM(_llama_config(tokenizer, hidden_size, layers, mloc_tiny=MARKER))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    return path


def build_tiny_reward_model(path: str | Path, *, tokenizer_from: str | Path | None = None, hidden_size: int = 64 * 2,
                            layers: int = 1, vocab_size: int = 384, seed: int = 1, force: bool = False) -> Path:
    """A sequence-classification model (one score) for reward-model training, GRPO and PPO tests.

    ``tokenizer_from`` copies the policy's tokenizer; without it the reward model gets its own,
    different vocabulary — the situation of the README's PPO example (DeBERTa RM, Mistral policy).
    """
    import torch
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    path = Path(path)
    if _is_built(path) and not force:
        return path
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if tokenizer_from is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_from))
        tokenizer.save_pretrained(path)
    else:
        tokenizer = build_tokenizer(path, vocab_size=vocab_size)
    config = _llama_config(tokenizer, hidden_size, layers, mloc_tiny=MARKER, num_labels=1)
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mloc_agent.tiny", description=__doc__.split("\n")[0])
    parser.add_argument("path", help="folder for the tiny causal LM")
    parser.add_argument("--reward", help="also build a tiny reward model in this folder")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder holds a tiny model")
    args = parser.parse_args(argv)
    print(build_tiny_lm(args.path, force=args.force))
    if args.reward:
        print(build_tiny_reward_model(args.reward, force=args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
