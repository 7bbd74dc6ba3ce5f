"""A scripted OpenAI-compatible chat server on 127.0.0.1, standing in for the LLM only.

No real LLM is available offline, so this server plays one over real HTTP: the agent's real
``ChatOpenAI`` talks to it, the real LangChain agent loop runs, and real tools execute. Its script:
- a user message with a ```python fence, while no tool has answered yet: call ``python_repl`` with it;
- a user message starting with ``search:``: call ``web_search`` with the rest;
- ``tool:NAME {json args}``: call that tool with those arguments;
- after a tool answered: the final answer ``The result is: <the tool's output>``;
- a RAG prompt (``Context:`` ... ``Question:``): ``According to [1]: <first passage>``.
Every request body is kept in ``requests`` so tests can check what the agent sent.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from typing import Any

from aiohttp import web

from tests.harness import free_port

MODEL = "scripted-llm"


def _reply(message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-{time.monotonic_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": MODEL, "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}


def _tool_call(name: str, args: dict[str, Any], n: int) -> dict[str, Any]:
    call = {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
    return _reply({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls")


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content or "")


def script(body: dict[str, Any], n: int) -> dict[str, Any]:
    messages = body["messages"]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    question = _text(messages[last_user]["content"])
    answered = [m for m in messages[last_user + 1:] if m["role"] == "tool"]
    tools = {t["function"]["name"] for t in body.get("tools") or []}
    if answered:
        return _reply({"role": "assistant", "content": f"The result is: {_text(answered[-1]['content']).strip()}"},
                      "stop")
    code = re.search(r"```python\n(.*?)```", question, re.S)
    if code and "python_repl" in tools:
        return _tool_call("python_repl", {"code": code.group(1)}, n)
    if question.startswith("search:") and "web_search" in tools:
        return _tool_call("web_search", {"query": question[len("search:"):].strip()}, n)
    named = re.match(r"tool:(\w+) (\{.*\})$", question, re.S)
    if named and named.group(1) in tools:
        return _tool_call(named.group(1), json.loads(named.group(2)), n)
    passage = re.search(r"\[1\] \(source: [^)]*\)\n(.*?)(?:\n\n\[2\]|\n\nQuestion:)", question, re.S)
    if passage:
        return _reply({"role": "assistant", "content": f"According to [1]: {passage.group(1).strip()}"}, "stop")
    return _reply({"role": "assistant", "content": f"echo: {question}"}, "stop")


class LocalServer:
    """An aiohttp app on 127.0.0.1 in a background thread; subclasses add routes."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def _start(self) -> None:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def __enter__(self):
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class FakeLLM(LocalServer):
    """Start with ``with FakeLLM() as llm:``; ``llm.base_url`` is the ``/v1`` URL for chat_model."""

    def __init__(self) -> None:
        super().__init__()
        self.base_url = f"{self.url}/v1"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)

    async def _completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        if body.get("stream"):
            return web.json_response({"error": {"message": "this test server does not stream"}}, status=400)
        return web.json_response(script(body, len(self.requests)))

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


class FakeSearx(LocalServer):
    """SearxNG's JSON search API (``/search?q=...&format=json``) with canned results."""

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/search", self._search)

    async def _search(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.query))
        if request.query.get("format") != "json":
            return web.Response(status=403, text="format must be json")
        query = request.query.get("q", "")
        return web.json_response({"query": query, "results": [
            {"title": f"About {query}", "url": "https://example.org/mloc", "content": "MLOC runs LLM work on GPUs."},
            {"title": "Second hit", "url": "https://example.org/2", "content": "Another snippet."},
        ]})
