"""The ``eval:`` block of an ``eval`` task: what to measure, checked by the coordinator at submit.

Pure pydantic, like hyperparams.py: a typo or a bad value is a 422 naming the field
(``eval.generation.max_new_tokens``), and the agent's eval module parses the same models for defaults.
Three measures, any together (docs/eval.md):

    perplexity   token-weighted mean NLL of the dataset's rows (loss), and exp of it (perplexity)
    generation   greedy generations from ``prompt_field`` scored against ``reference_field``
    lm_eval      lm-evaluation-harness tasks by name, where the agent has that package and the data
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mloc_shared.hyperparams import Hyperparameters

GenerationMetric = Literal["exact_match", "rouge", "bleu"]
GENERATION_METRICS: tuple[GenerationMetric, ...] = ("exact_match", "rouge", "bleu")


class GenerationEval(Hyperparameters):
    """Generate from each row's prompt and score the text against the row's reference."""

    prompt_field: str = Field("prompt", min_length=1, max_length=200)
    reference_field: str = Field("completion", min_length=1, max_length=200)
    max_new_tokens: int = Field(64, ge=1, le=32768)
    metrics: list[GenerationMetric] = Field(default_factory=lambda: list(GENERATION_METRICS), min_length=1)
    chat: bool | None = Field(None, description="apply the chat template; None: when the tokenizer has one")
    system_prompt: str | None = None


class LmEvalSettings(Hyperparameters):
    """lm-evaluation-harness tasks (``lm_eval --tasks``) run on the task's model."""

    tasks: list[str] = Field(min_length=1, max_length=64)
    limit: int | None = Field(None, ge=1, description="examples per lm_eval task (None: all)")
    num_fewshot: int | None = Field(None, ge=0, le=100)

    @field_validator("tasks")
    @classmethod
    def _names(cls, tasks: list[str]) -> list[str]:
        for name in tasks:
            if not name.strip() or len(name) > 200:
                raise ValueError("each lm_eval task is a non-empty name such as 'hellaswag' or 'arc_easy'")
        return tasks


class EvalSettings(Hyperparameters):
    """An eval task's measures. Without ``eval:`` an eval task measures the dataset's perplexity."""

    perplexity: bool | None = Field(None, description="None: when the rows hold text to score "
                                    "(text, prompt/completion, chat messages or instruction/output)")
    generation: GenerationEval | None = None
    lm_eval: LmEvalSettings | None = None
    max_rows: int | None = Field(None, ge=1, le=10_000_000, description="rows of the dataset to use (None: all)")
    batch_size: int = Field(8, ge=1, le=4096)
    max_length: int = Field(1024, ge=8, le=1_048_576, description="tokens per row; longer rows are cut")
