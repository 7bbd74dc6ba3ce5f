"""``taskType: agent_inference``: a tool-using (ReAct) agent built with LangChain 1.x ``create_agent``,
answering each question and recording every tool call.

Accepts the original README's example as written (``agent_type: react``, ``tools: [python_repl,
web_search]``). The model must be an OpenAI-compatible endpoint (``chat_model.base_url``, e.g. vLLM
started with ``--enable-auto-tool-choice``): LangChain's local ChatHuggingFace parses no tool calls.
Writes ``answers.jsonl`` (one line per question: answer, steps) and ``transcript.jsonl`` (one line
per message: tool calls, tool results, final answers). See docs/agent-tasks.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mloc_agent.modules.base import BaseModule, ProgressCallback
from mloc_agent.modules.errors import TaskError, TaskInputError

DEFAULT_SYSTEM = ("You are a careful assistant. Use the tools when they help: python_repl for any calculation "
                  "or code, web_search for facts you do not know. Answer briefly once you know the answer.")


def protected_paths(workdir: Path) -> list[Path]:
    """What model-written code must never read: the agent's data dir (its credential, other tasks)."""
    from mloc_agent.modules.rag.rag_inference import agent_data_dir

    data_dir = agent_data_dir(workdir)
    return [data_dir] if data_dir is not None else [workdir]


def message_event(message: Any) -> list[dict[str, Any]]:
    """A LangChain message -> transcript events (an AI message may carry several tool calls)."""
    kind = getattr(message, "type", "")
    if kind == "ai":
        events = [{"type": "tool_call", "id": c.get("id"), "name": c["name"], "args": c.get("args", {})}
                  for c in getattr(message, "tool_calls", None) or []]
        text = message.text if isinstance(message.text, str) else str(message.content)
        if text or not events:
            events.insert(0, {"type": "final_answer" if not events else "thought", "content": text})
        return events
    if kind == "tool":
        return [{"type": "tool_result", "id": message.tool_call_id, "name": message.name,
                 "status": getattr(message, "status", "success"), "content": message.content,
                 "details": getattr(message, "artifact", None)}]
    return []


class AgentInferenceModule(BaseModule):
    task_type = "agent_inference"
    requires = ("langchain", "langchain_openai", "langgraph")

    async def execute(self, progress_callback: ProgressCallback | None = None) -> dict[str, Any]:
        from mloc_shared.hyperparams import AgentInferenceHyperparameters, parse_hyperparameters

        from mloc_agent.modules.agents.tools import build_tools
        from mloc_agent.modules.rag import chat_model
        from mloc_agent.modules.sources.documents import load_questions

        report = progress_callback or self.ctx.progress
        params = parse_hyperparameters("agent_inference", self.spec.get("hyperparameters"))
        assert isinstance(params, AgentInferenceHyperparameters)
        questions = load_questions(params.questions, params.questions_file, self.ctx.workdir / "inputs", self.ctx)
        if not questions:
            raise TaskInputError("agent_inference needs questions: hyperparameters.questions (a list) or "
                                 "questions_file")
        choice = chat_model.choose(params.chat_model or "none", self.spec)
        if choice.provider != "openai":
            raise TaskInputError("agent_inference needs an OpenAI-compatible chat endpoint: set "
                                 "hyperparameters.chat_model.base_url (e.g. http://gpu-box:8000/v1, vLLM started "
                                 "with --enable-auto-tool-choice --tool-call-parser ...); local transformers chat "
                                 "models cannot call tools")
        llm = chat_model.openai_chat(choice, params.temperature, urls=self.ctx.urls)
        tools = build_tools(params.tools, params, self.ctx.workdir, protected_paths(self.ctx.workdir), self.ctx.urls)
        agent = _build_agent(llm, tools, params)
        print(f"[agent] {choice.describe()}; tools: {', '.join(t.name for t in tools) or 'none'}", flush=True)

        out_dir = self.ctx.output_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        transcript_name = Path(params.output_file).with_name("transcript.jsonl").as_posix()
        failures: list[str] = []
        summary: list[dict[str, Any]] = []
        tool_calls = 0
        started = time.monotonic()
        with open(out_dir / params.output_file, "w", encoding="utf-8") as answers, \
                open(out_dir / transcript_name, "w", encoding="utf-8") as transcript:
            for i, q in enumerate(questions):
                report({"step": i, "total": len(questions), "message": f"question {i + 1}/{len(questions)}"})
                row = self._run_one(agent, q, params, transcript, report, i, len(questions))
                answers.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                answers.flush()
                tool_calls += row["tool_calls"]
                if row["error"]:
                    failures.append(f"question {q['id']}: {row['error']}")
                summary.append({"question": q["question"][:300], "answer": (row["answer"] or "")[:500] or None,
                                "tool_calls": row["tool_calls"], "error": row["error"]})
        report({"step": len(questions), "total": len(questions), "message": "done",
                "metrics": {"tool_calls": float(tool_calls), "seconds": round(time.monotonic() - started, 2)}})
        if failures and len(failures) == len(questions):
            raise TaskError("every question failed; first: " + failures[0])
        return {"questions": len(questions), "failed": len(failures), "tool_calls": tool_calls,
                "answers_file": params.output_file, "transcript_file": transcript_name,
                "chat_model": choice.describe(), "answers": summary[:20]}

    def _run_one(self, agent: Any, q: dict[str, Any], params: Any, transcript: Any, report: ProgressCallback,
                 index: int, total: int) -> dict[str, Any]:
        """Stream the agent's steps, writing each message to the transcript as it happens."""
        steps: list[dict[str, Any]] = []
        answer: str | None = None
        error: str | None = None
        config = {"recursion_limit": 2 * params.max_iterations + 5}
        try:
            for update in agent.stream({"messages": [{"role": "user", "content": q["question"]}]}, config=config,
                                       stream_mode="updates"):
                for node_update in update.values():
                    for message in (node_update or {}).get("messages", []) if isinstance(node_update, dict) else []:
                        for event in message_event(message):
                            steps.append(event)
                            transcript.write(json.dumps({"question_id": q["id"], "step": len(steps), **event},
                                                        ensure_ascii=False, default=str) + "\n")
                            transcript.flush()
                            if event["type"] == "tool_call":
                                report({"step": index, "total": total,
                                        "message": f"question {index + 1}/{total}: calling {event['name']}"})
                            if event["type"] == "final_answer":
                                answer = event["content"]
        except Exception as exc:  # one question's failure (endpoint down, bad tool args) must not hide the others
            error = f"{type(exc).__name__}: {exc}"
            print(f"[agent] question {q['id']} failed: {error}", flush=True)
        if answer is None and error is None:
            error = f"no final answer within max_iterations={params.max_iterations} model calls"
        return {"id": q["id"], "question": q["question"], "answer": answer, "error": error,
                "tool_calls": sum(1 for s in steps if s["type"] == "tool_call"), "steps": steps}


def _build_agent(llm: Any, tools: list[Any], params: Any) -> Any:
    """create_agent with a bound on model calls (``max_iterations``) so a looping model stops."""
    from langchain.agents import create_agent
    from langchain.agents.middleware import ModelCallLimitMiddleware

    return create_agent(llm, tools, system_prompt=params.system_prompt or DEFAULT_SYSTEM,
                        middleware=[ModelCallLimitMiddleware(run_limit=params.max_iterations, exit_behavior="error")])
