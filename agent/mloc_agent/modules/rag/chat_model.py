"""The chat model behind rag_inference and agent_inference, from ``hyperparameters.chat_model``.

Three kinds: an OpenAI-compatible endpoint (vLLM's server, TGI, OpenAI itself) through LangChain's
``ChatOpenAI``; a local transformers model (RAG only: LangChain's ChatHuggingFace parses no tool
calls, so it cannot drive an agent); or none (RAG answers with its retrieved passages only).
Heavy imports happen inside the functions: the agent's main process imports this file's callers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from mloc_shared.hyperparams import ChatModelSettings

from mloc_agent.modules.errors import TaskInputError
from mloc_agent.modules.sources.url_policy import UrlPolicy

Provider = Literal["openai", "transformers", "none"]


class ChatModelError(TaskInputError):
    """The chat model setting cannot be used: the message says which field to change."""


@dataclass
class ChatModelChoice:
    provider: Provider
    settings: ChatModelSettings

    def describe(self) -> str:
        if self.provider == "openai":
            return f"openai-compatible {self.settings.base_url or '(default base URL)'} model={self.settings.model}"
        if self.provider == "transformers":
            return f"transformers {self.settings.model}"
        return "none (retrieval only)"


def choose(value: ChatModelSettings | str | None, spec: dict[str, Any]) -> ChatModelChoice:
    """Read the setting. Strings: 'none', 'transformers', an http(s) base URL, or 'openai:MODEL'."""
    task_model = ((spec.get("model") or {}).get("source") or {}).get("identifier")
    if value is None:
        value = "transformers" if task_model else "none"
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "none":
            settings = ChatModelSettings(provider="none")
        elif text.lower() == "transformers":
            settings = ChatModelSettings(provider="transformers")
        elif text.startswith(("http://", "https://")):
            settings = ChatModelSettings(provider="openai", base_url=text)
        elif text.startswith("openai:"):
            settings = ChatModelSettings(provider="openai", model=text.partition(":")[2] or None)
        else:
            raise ChatModelError(f"chat_model {value!r}: use 'none', 'transformers', an http(s) base URL, "
                                 "'openai:MODEL', or a mapping {base_url, model, ...}")
    else:
        settings = value
    provider: Provider = settings.provider or ("openai" if settings.base_url else "transformers")
    if provider == "transformers" and not settings.model:
        if not task_model:
            raise ChatModelError("chat_model: a transformers chat model needs chat_model.model (a path or hub id) "
                                 "or the task's model.source")
        settings = settings.model_copy(update={"model": task_model})
    return ChatModelChoice(provider, settings)


def first_served_model(base_url: str, api_key: str, timeout_s: float) -> str:
    """The endpoint's first model (vLLM serves one), so users need not repeat its name."""
    import httpx

    try:
        resp = httpx.get(base_url.rstrip("/") + "/models", headers={"Authorization": f"Bearer {api_key}"},
                         timeout=timeout_s)
        resp.raise_for_status()
        models = resp.json().get("data") or []
    except (httpx.HTTPError, ValueError) as exc:
        raise ChatModelError(f"chat_model.base_url {base_url}: cannot list its models ({exc}); "
                             "set chat_model.model") from exc
    if not models:
        raise ChatModelError(f"chat_model.base_url {base_url} serves no model")
    return str(models[0]["id"])


def openai_chat(choice: ChatModelChoice, temperature: float, max_tokens: int | None = None, *,
                urls: UrlPolicy) -> Any:
    """A LangChain ChatOpenAI on the endpoint (chat-completions API, no streaming). A base URL the task
    names (or its OPENAI_BASE_URL) passes the agent's URL policy first; OpenAI's own is not asked."""
    from langchain_openai import ChatOpenAI

    s = choice.settings
    if s.base_url or os.environ.get("OPENAI_BASE_URL"):
        urls.check(s.base_url or os.environ["OPENAI_BASE_URL"], "chat_model.base_url")
    api_key = os.environ.get(s.api_key_env) or "EMPTY"
    model = s.model
    if model is None and s.base_url:
        model = first_served_model(s.base_url, api_key, min(s.timeout_s, 30.0))
    if model is None:
        raise ChatModelError("chat_model.model is required without a base_url")
    choice.settings = s.model_copy(update={"model": model})
    return ChatOpenAI(model=model, base_url=s.base_url, api_key=api_key, temperature=temperature,
                      max_tokens=max_tokens, timeout=s.timeout_s, max_retries=s.max_retries,
                      use_responses_api=False, disable_streaming=True)


class LocalGenerator:
    """A transformers causal LM answering chat messages with its chat template (greedy at temperature 0)."""

    def __init__(self, identifier: str, device: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(identifier)
        self.model = AutoModelForCausalLM.from_pretrained(identifier).to(device).eval()
        self.device = device

    def __call__(self, messages: list[dict[str, str]], max_new_tokens: int, temperature: float) -> str:
        import torch

        tok = self.tokenizer
        if tok.chat_template:
            prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            prompt = "\n\n".join(m["content"] for m in messages) + "\n\nAnswer:"
        inputs = tok(prompt, return_tensors="pt", add_special_tokens=not tok.chat_template).to(self.device)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and inputs["input_ids"].shape[1] + max_new_tokens > limit:  # keep the end: the question
            keep = max(1, limit - max_new_tokens)
            inputs = {k: v[:, -keep:] for k, v in inputs.items()}
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id
                                      or tok.eos_token_id, **sampling)
        return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
