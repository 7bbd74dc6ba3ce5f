"""agent_inference end to end: a real coordinator and agent, LangChain's real create_agent loop, real
tool execution, and real HTTP to an OpenAI-compatible server that plays the LLM (tests/ml/fake_llm.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.harness import FINAL, Coordinator
from tests.ml.conftest import artifacts, run_to_end
from tests.ml.fake_llm import MODEL, FakeLLM, FakeSearx

pytestmark = pytest.mark.ml
README_EXAMPLE = {"agent_type": "react", "tools": ["python_repl", "web_search"]}


def agent_spec(llm: FakeLLM, questions: list[str], **hyperparameters: Any) -> dict[str, Any]:
    return {"taskType": "agent_inference", "resources": {"gpus": 0},
            "hyperparameters": {**README_EXAMPLE, "chat_model": {"base_url": llm.base_url}, "questions": questions,
                                **hyperparameters}}


def jsonl(coord: Coordinator, task_id: str, name: str) -> list[dict[str, Any]]:
    resp = coord.http.get(f"/api/v1/tasks/{task_id}/artifacts/{name}", follow_redirects=True)
    assert resp.status_code == 200, resp.text
    return [json.loads(line) for line in resp.text.splitlines()]


def test_agent_calls_python_repl_and_answers_with_its_result(coordinator: Coordinator, start_agent) -> None:
    start_agent("agents")
    question = "What is 20 factorial?\n```python\nimport math\nprint(math.factorial(20))\n```"
    with FakeLLM() as llm:
        done = run_to_end(coordinator, agent_spec(llm, [question, "search: what is MLOC?"]), timeout=120)
    factorial = "2432902008176640000"  # not in the question: only running the code produces it
    result = done["result"]
    assert result["questions"] == 2 and result["failed"] == 0 and result["tool_calls"] == 2
    assert result["chat_model"].endswith(f"model={MODEL}")  # discovered from the endpoint's /models
    assert {"answers.jsonl", "transcript.jsonl"} <= set(artifacts(coordinator, done["id"]))

    answers = jsonl(coordinator, done["id"], "answers.jsonl")
    assert answers[0]["answer"] == f"The result is: {factorial}" and answers[0]["error"] is None
    assert [s["type"] for s in answers[0]["steps"]] == ["tool_call", "tool_result", "final_answer"]
    call, tool_result = answers[0]["steps"][:2]
    assert call["name"] == "python_repl" and "math.factorial(20)" in call["args"]["code"]
    assert tool_result["content"] == factorial and tool_result["details"]["exit_code"] == 0
    # web_search is listed (the README's example) but no provider is configured: it says so
    assert "web_search is not configured on this agent" in answers[1]["answer"]

    transcript = jsonl(coordinator, done["id"], "transcript.jsonl")
    assert [(e["question_id"], e["type"]) for e in transcript] == [
        ("0", "tool_call"), ("0", "tool_result"), ("0", "final_answer"),
        ("1", "tool_call"), ("1", "tool_result"), ("1", "final_answer")]
    # the real agent loop sent the tools' schemas and then the tool's real output back to the model
    assert {t["function"]["name"] for t in llm.requests[0]["tools"]} == {"python_repl", "web_search"}
    tool_messages = [m for m in llm.requests[1]["messages"] if m["role"] == "tool"]
    assert tool_messages and tool_messages[0]["content"] == factorial
    assert done["result"]["progress"]["message"] == "done"


def test_web_search_uses_the_configured_searxng_endpoint(coordinator: Coordinator, start_agent) -> None:
    start_agent("searcher")
    with FakeLLM() as llm, FakeSearx() as searx:
        done = run_to_end(coordinator, agent_spec(llm, ["search: GPU fleet orchestrators"],
                                                  web_search={"url": searx.url, "max_results": 1}), timeout=120)
    answer = jsonl(coordinator, done["id"], "answers.jsonl")[0]
    assert searx.requests == [{"q": "GPU fleet orchestrators", "format": "json"}]
    assert "About GPU fleet orchestrators — https://example.org/mloc" in answer["answer"]
    assert "Second hit" not in answer["answer"]  # max_results: 1
    assert answer["steps"][1]["details"] == {"configured": True, "provider": "searxng", "results": 1}


def test_a_custom_tool_registers_through_the_mloc_tools_entry_point(coordinator: Coordinator, start_agent,
                                                                     tmp_path: Path) -> None:
    """A third-party package (a real dist-info on the agent's path) adds a tool by entry point."""
    site = tmp_path / "site"
    (site / "mloc_test_tools-0.1.dist-info").mkdir(parents=True)
    (site / "mloc_test_tools-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mloc-test-tools\nVersion: 0.1\n")
    (site / "mloc_test_tools-0.1.dist-info" / "entry_points.txt").write_text(
        "[mloc.tools]\nreverse_text = mloc_test_tools:make\n")
    (site / "mloc_test_tools.py").write_text(textwrap.dedent('''
        from langchain_core.tools import tool

        def make(ctx):
            suffix = ctx.config.get("suffix", "")

            @tool
            def reverse_text(text: str) -> str:
                """Reverse a string."""
                return text[::-1] + suffix

            return reverse_text
    '''))
    start_agent("tooled", extra_env={"PYTHONPATH": str(site)})
    with FakeLLM() as llm:
        done = run_to_end(coordinator, agent_spec(llm, ['tool:reverse_text {"text": "stressed"}'],
                                                  tools=[{"name": "reverse_text", "suffix": "!"}]), timeout=120)
    assert jsonl(coordinator, done["id"], "answers.jsonl")[0]["answer"] == "The result is: desserts!"


def test_agent_without_an_endpoint_fails_naming_the_setting(coordinator: Coordinator, start_agent) -> None:
    start_agent("no-llm")
    task = coordinator.submit({"taskType": "agent_inference", "resources": {"gpus": 0},
                               "hyperparameters": {**README_EXAMPLE, "questions": ["hi"]}})
    done = coordinator.wait_state(task["id"], FINAL, timeout=60)
    assert done["state"] == "failed" and "hyperparameters.chat_model.base_url" in done["error"]


def test_the_readme_example_is_accepted_and_typos_are_refused_by_name(coordinator: Coordinator) -> None:
    ok = coordinator.http.post("/api/v1/tasks", json={"taskType": "agent_inference", "hyperparameters": README_EXAMPLE,
                                                      "resources": {"gpus": 0}})
    assert ok.status_code in (200, 201), ok.text
    bad = coordinator.http.post("/api/v1/tasks", json={"taskType": "agent_inference",
                                                       "hyperparameters": {**README_EXAMPLE, "max_iteration": 3}})
    assert bad.status_code == 422 and "max_iteration" in bad.text


def test_loading_the_task_modules_does_not_import_langchain_chroma_or_torch() -> None:
    """The agent's main process imports module files to read their class attributes, nothing heavy."""
    code = ("import sys\nfrom mloc_agent.modules import registry\n"
            "for name in ('rag_inference', 'agent_inference'): registry.load(registry.BUILTIN[name])\n"
            "import mloc_agent.modules.agents.tools, mloc_agent.modules.agents.sandbox\n"
            "import mloc_agent.modules.rag.chat_model\n"
            "heavy = [m for m in ('langchain', 'langchain_core', 'chromadb', 'torch', 'sentence_transformers',"
            " 'transformers', 'langgraph') if m in sys.modules]\nprint(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
