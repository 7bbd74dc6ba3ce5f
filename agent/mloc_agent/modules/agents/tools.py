"""Tools for agent_inference: the built-ins (``python_repl``, ``web_search``) and third-party ones
from the ``mloc.tools`` entry point group.

A tool entry is a name (``python_repl``) or a mapping with a ``name`` plus that tool's settings.
An entry point names a factory ``f(ctx: ToolContext) -> BaseTool | list[BaseTool]``; built-ins
cannot be replaced by one. LangChain is imported inside the factories: this file is imported by
agent_inference.py, which the agent's main process imports.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from mloc_shared.hyperparams import AgentInferenceHyperparameters, WebSearchSettings

from mloc_agent.modules.errors import TaskInputError
from mloc_agent.modules.sources.url_policy import UrlPolicy

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "mloc.tools"
BUILTIN_TOOLS: dict[str, str] = {
    "python_repl": "mloc_agent.modules.agents.tools:python_repl_tool",
    "web_search": "mloc_agent.modules.agents.tools:web_search_tool",
}
TAVILY_URL = "https://api.tavily.com/search"


class ToolError(TaskInputError):
    """A tool named in ``tools`` that cannot be built: the message names it."""


@dataclass
class ToolContext:
    """What a tool factory gets: its own settings, the task's hyperparameters, and paths to protect."""

    name: str
    config: dict[str, Any]
    params: AgentInferenceHyperparameters
    workdir: Path
    protected_paths: list[Path] = field(default_factory=list)
    urls: UrlPolicy = field(default_factory=UrlPolicy)  # what the URLs a task names may reach


def references() -> dict[str, str]:
    refs = dict(BUILTIN_TOOLS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        refs.setdefault(ep.name, ep.value)
    return refs


def build_tools(entries: list[str | dict[str, Any]], params: AgentInferenceHyperparameters, workdir: Path,
                protected_paths: list[Path], urls: UrlPolicy) -> list[Any]:
    refs = references()
    tools: list[Any] = []
    for entry in entries:
        config = {"name": entry} if isinstance(entry, str) else dict(entry)
        name = str(config.pop("name", ""))
        if name not in refs:
            raise ToolError(f"hyperparameters.tools: unknown tool {name!r}; known: {', '.join(sorted(refs))} "
                            f"(more register through the {ENTRY_POINT_GROUP!r} entry point group)")
        module_name, _, attr = refs[name].partition(":")
        factory: Callable[[ToolContext], Any] = getattr(importlib.import_module(module_name), attr)
        made = factory(ToolContext(name, config, params, workdir, protected_paths, urls))
        tools.extend(made if isinstance(made, list) else [made])
    return tools


# -- python_repl --------------------------------------------------------------------------------


def python_repl_tool(ctx: ToolContext) -> Any:
    """Runs model-written code in the sandbox (sandbox.py), never in this process."""
    from langchain_core.tools import StructuredTool
    from pydantic import BaseModel, Field

    from mloc_agent.modules.agents.sandbox import SandboxPolicy, layers_missing, run_python

    unknown = set(ctx.config) - {"timeout_s", "memory_mb"}
    if unknown:
        raise ToolError(f"tools: python_repl has no setting {', '.join(sorted(unknown))} (timeout_s, memory_mb)")
    policy = SandboxPolicy(timeout_s=float(ctx.config.get("timeout_s", ctx.params.python_timeout_s)),
                           memory_mb=int(ctx.config.get("memory_mb", ctx.params.python_memory_mb)),
                           protected_paths=list(ctx.protected_paths))
    warned: list[str] = []

    class PythonInput(BaseModel):
        code: str = Field(description="Python 3 source code to run")

    def run(code: str) -> tuple[str, dict[str, Any]]:
        result = run_python(code, policy)
        missing = layers_missing(result)
        if missing and not warned:
            warned.append("yes")
            log.warning("python_repl sandbox: layers unavailable on this host: %s", result.layers)
            print(f"[agent] python_repl sandbox: unavailable layers {missing}: {result.layers}", flush=True)
        return result.text(), {"exit_code": result.exit_code, "timed_out": result.timed_out,
                               "duration_s": result.duration_s, "sandbox": result.layers}

    description = (
        f"Run Python 3 code in a fresh sandboxed process and return what it prints. Limits: "
        f"{policy.timeout_s:g} s, {policy.memory_mb} MB memory, no network, no files outside its own "
        "temporary folder, no subprocesses. Nothing persists between calls. print() the values you need; "
        "the value of a final bare expression is printed too.")
    return StructuredTool.from_function(func=run, name="python_repl", description=description,
                                        args_schema=PythonInput, response_format="content_and_artifact")


# -- web_search -----------------------------------------------------------------------------------


def search_settings(ctx: ToolContext) -> WebSearchSettings:
    """The tool's own mapping wins over ``hyperparameters.web_search``; then SEARXNG_URL / TAVILY_API_KEY."""
    merged = {**(ctx.params.web_search.model_dump(exclude_unset=True) if ctx.params.web_search else {}),
              **ctx.config}
    settings = WebSearchSettings.model_validate(merged)
    if settings.url is None and "provider" not in merged:
        if os.environ.get("SEARXNG_URL"):
            settings = settings.model_copy(update={"provider": "searxng", "url": os.environ["SEARXNG_URL"]})
        elif os.environ.get("TAVILY_API_KEY"):
            settings = settings.model_copy(update={"provider": "tavily", "api_key_env": "TAVILY_API_KEY"})
    if settings.provider == "tavily" and settings.api_key_env is None:
        settings = settings.model_copy(update={"api_key_env": "TAVILY_API_KEY"})
    return settings


def not_configured_reason(settings: WebSearchSettings) -> str | None:
    if settings.provider == "searxng" and not settings.url:
        return ("web_search is not configured on this agent, so no search was run. Answer without it. "
                "(To enable: hyperparameters.web_search.url of a SearxNG instance, or SEARXNG_URL / "
                "TAVILY_API_KEY in the agent's environment.)")
    if settings.provider == "tavily" and not os.environ.get(settings.api_key_env or ""):
        return (f"web_search (tavily) has no API key: {settings.api_key_env} is not set on this agent, "
                "so no search was run. Answer without it.")
    return None


def search(settings: WebSearchSettings, query: str) -> list[dict[str, str]]:
    """Results as ``{title, url, content}``, from the provider's JSON API."""
    import httpx

    if settings.provider == "searxng":
        resp = httpx.get(settings.url.rstrip("/") + "/search", params={"q": query, "format": "json"},  # type: ignore[union-attr]
                         timeout=settings.timeout_s, follow_redirects=True)
    else:
        key = os.environ.get(settings.api_key_env or "", "")
        resp = httpx.post(settings.url or TAVILY_URL, json={"query": query, "max_results": settings.max_results},
                          headers={"Authorization": f"Bearer {key}"}, timeout=settings.timeout_s)
    resp.raise_for_status()
    rows = resp.json().get("results") or []
    return [{"title": str(r.get("title", "")), "url": str(r.get("url", "")),
             "content": str(r.get("content") or r.get("snippet") or "")} for r in rows[: settings.max_results]]


def web_search_tool(ctx: ToolContext) -> Any:
    from langchain_core.tools import StructuredTool
    from pydantic import BaseModel, Field

    settings = search_settings(ctx)
    reason = not_configured_reason(settings)
    if settings.url and not reason:  # a task's (or the agent's) search endpoint; Tavily's own is not asked
        ctx.urls.check(settings.url, "hyperparameters.web_search.url")
    if reason:
        log.warning("web_search: %s", reason)
        print(f"[agent] {reason}", flush=True)

    class SearchInput(BaseModel):
        query: str = Field(description="what to search the web for")

    def run(query: str) -> tuple[str, dict[str, Any]]:
        if reason:
            return reason, {"configured": False}
        try:
            results = search(settings, query)
        except Exception as exc:  # the model should see the failure and carry on
            return f"web_search failed: {type(exc).__name__}: {exc}", {"configured": True, "error": str(exc)}
        if not results:
            return "web_search found nothing.", {"configured": True, "results": 0}
        lines = [f"{i}. {r['title']} — {r['url']}\n   {r['content'][:500]}" for i, r in enumerate(results, 1)]
        return "\n".join(lines), {"configured": True, "provider": settings.provider, "results": len(results)}

    return StructuredTool.from_function(
        func=run, name="web_search", args_schema=SearchInput, response_format="content_and_artifact",
        description="Search the web; returns numbered results with title, URL and a snippet.")
