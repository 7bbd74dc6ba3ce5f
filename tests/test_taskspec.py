"""Reading task bodies: JSON or YAML whatever the Content-Type, errors naming field and line."""

from __future__ import annotations

import json

import pytest
from mloc_shared.errors import BadRequest, ValidationFailed
from mloc_shared.spec_parsing import parse_task

from tests.conftest import README_SFT_YAML

README_SFT = README_SFT_YAML.encode()


def test_readme_examples_are_accepted_as_written() -> None:
    assert parse_task(README_SFT).model.adapter.type == "qlora"
    ppo = b'taskType: "ppo"\nhyperparameters:\n  reward_model: "OpenAssistant/reward-model-deberta-v3-large-v2"\n' \
          b"  ppo_epochs: 4\n  target_kl: 0.1\n"
    assert parse_task(ppo).hyperparameters["target_kl"] == 0.1
    rag = (b'taskType: "rag_inference"\nhyperparameters:\n'
           b'  embedding_model: "sentence-transformers/all-MiniLM-L6-v2"\n  vector_db: "chromadb"\n  retrieval_k: 5\n')
    assert parse_task(rag).hyperparameters["retrieval_k"] == 5
    agent = (b'taskType: "agent_inference"\nhyperparameters:\n  agent_type: "react"\n'
             b'  tools: ["python_repl", "web_search"]\n')
    assert parse_task(agent).hyperparameters["tools"] == ["python_repl", "web_search"]


@pytest.mark.parametrize("body", [
    README_SFT.replace(b"\n", b""),  # what `curl -d @file.yaml` sends
    b'taskType: "command"command: "echo hi"',
    b"taskType: commandcommand: echo hi",
])
def test_flattened_yaml_is_refused_with_the_fix(body: bytes) -> None:
    with pytest.raises(BadRequest) as exc:
        parse_task(body)
    assert "single line" in exc.value.message and "--data-binary" in exc.value.hint


@pytest.mark.parametrize("body", [
    b'{"taskType": "command", "command": "echo hi"}',
    b'{taskType: command, command: "echo hi"}',
    b"taskType: command\r\ncommand: echo hi\r\n",
])
def test_json_flow_yaml_and_crlf_are_read(body: bytes) -> None:
    assert parse_task(body).command == "echo hi"


@pytest.mark.parametrize(("body", "field", "line"), [
    (b"taskType: command\ncommand: x\nresources:\n  gpus: -1\n", "resources.gpus", 4),
    (b"taskType: command\ncommand: x\nresourcez: {}\n", "resourcez", 3),
    (b"taskType: command\n", "command", 1),
    (b"taskType: sft\ncommand: x\n", "command", 2),
    (b"taskType: Bad Type\n", "taskType", 1),
    (b"taskType: command\ncommand: x\nretry:\n  max_attempts: 0\n", "retry.max_attempts", 4),
    (b"taskType: command\ncommand: x\nenv:\n  1BAD: y\n", "env", 3),
    (b"taskType: sft\nenv:\n  OK: y\n  LD_PRELOAD: /x.so\n", "env.LD_PRELOAD", 4),
    (b"taskType: inference\nsecrets:\n  PYTHONPATH: /somewhere\n", "secrets.PYTHONPATH", 3),
])
def test_validation_errors_name_field_and_line(body: bytes, field: str, line: int) -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse_task(body)
    assert exc.value.field == field and exc.value.line == line


def test_a_command_task_keeps_the_env_it_is_given() -> None:
    """Interpreter and loader variables are refused only where the spec is data (docs/security.md)."""
    env = {"PYTHONPATH": "/src", "LD_LIBRARY_PATH": "/lib", "BASH_ENV": "/rc", "PATH": "/bin"}
    assert parse_task(json.dumps({"taskType": "command", "command": "x", "env": env}).encode()).env == env


@pytest.mark.parametrize(("body", "needle"), [
    (b"", "empty"),
    (b"\xff\xfe", "UTF-8"),
    (b"a: &x [1]\nb: *x\n", "aliases"),
    (b"[" * 100 + b"]" * 100, "nests deeper"),
    (b"taskType: command\ncommand: [unclosed\n", "line 3"),
    (b"- just\n- a list\n", "mapping"),
])
def test_unreadable_bodies_are_refused_clearly(body: bytes, needle: str) -> None:
    with pytest.raises((BadRequest, ValidationFailed)) as exc:
        parse_task(body)
    assert needle in exc.value.message
