"""GRPO reward functions named in a task's ``hyperparameters.reward_funcs``.

Built-ins (pure Python, no model): ``length`` (closeness to a target length), ``format`` (the
completion matches a regular expression as a whole; default: <think>…</think><answer>…</answer>),
``regex`` (the pattern occurs), ``answer_match`` (the dataset's ``answer`` column occurs in the
completion). ``python`` imports ``package.module:function`` — code the task author ships to the
agent, trusted like a ``command`` task. ``model`` scores with a sequence-classification model.
Each callable follows TRL's contract: ``f(prompts, completions, **columns) -> list[float | None]``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from mloc_shared.hyperparams import RewardFunction

from mloc_agent.modules.errors import TaskInputError
from mloc_agent.modules.sources.hub import model_name
from mloc_agent.modules.sources.path_policy import PathPolicy

DEFAULT_FORMAT = r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*"
DEFAULT_LENGTH = 100


def completion_text(completion: Any) -> str:
    """TRL passes plain strings, or for chat data a list of messages (the assistant's reply)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def length_reward(target: int) -> Callable[..., list[float]]:
    def length(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        return [1.0 - min(1.0, abs(len(completion_text(c)) - target) / target) for c in completions]

    return length


def format_reward(pattern: str) -> Callable[..., list[float]]:
    compiled = re.compile(pattern, re.DOTALL)

    def format(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        return [1.0 if compiled.fullmatch(completion_text(c)) else 0.0 for c in completions]

    return format


def regex_reward(pattern: str) -> Callable[..., list[float]]:
    compiled = re.compile(pattern, re.DOTALL)

    def regex(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        return [1.0 if compiled.search(completion_text(c)) else 0.0 for c in completions]

    return regex


def answer_match_reward(column: str) -> Callable[..., list[float | None]]:
    def answer_match(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        answers = columns.get(column)
        if answers is None:
            raise TaskInputError(f"answer_match reward: the dataset has no column {column!r}")
        out: list[float | None] = []
        for completion, answer in zip(completions, answers, strict=True):
            want = " ".join(str(answer).split()).lower()
            got = " ".join(completion_text(completion).split()).lower()
            out.append(None if not want else 1.0 if want in got else 0.0)
        return out

    return answer_match


def import_function(reference: str) -> Callable[..., Any]:
    module_name, _, attr = reference.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise TaskInputError(f"reward function {reference!r} cannot be loaded on this agent: {exc}") from None
    if not callable(func):
        raise TaskInputError(f"reward function {reference!r} is not callable")
    return func


def build_rewards(specs: list[RewardFunction], paths: PathPolicy) -> tuple[list[Any], list[float], list[str]]:
    """TRL ``reward_funcs`` (callables or model paths), their weights, and names for the result."""
    funcs: list[Any] = []
    names: list[str] = []
    for spec in specs:
        if spec.type == "length":
            func: Any = length_reward(spec.target or DEFAULT_LENGTH)
        elif spec.type == "format":
            func = format_reward(spec.pattern or DEFAULT_FORMAT)
        elif spec.type == "regex":
            func = regex_reward(spec.pattern or "")
        elif spec.type == "answer_match":
            func = answer_match_reward(spec.column)
        elif spec.type == "python":
            func = import_function(spec.function or "")
        else:
            # a path or hub id: TRL loads it as a one-label classifier
            func = model_name(spec.identifier or "", paths=paths, field="hyperparameters.reward_funcs")
        funcs.append(func)
        names.append(spec.function or spec.identifier or spec.type)
    return funcs, [spec.weight for spec in specs], names
