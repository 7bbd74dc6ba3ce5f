"""A failed task says why in one line, and only faults that may pass are retried: a real coordinator
and agent, the real hub client and TRL stack, no stand-ins.

The hub is made unreachable by pointing the agent's HF_ENDPOINT at a loopback port nobody listens
on, with an empty cache: the hub client meets the same connection error as on an agent without
network, wherever the test runs.
"""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Agent, Coordinator, free_port
from tests.ml.conftest import FINAL, REPO, train_spec

pytestmark = pytest.mark.ml

RTX4090 = {"name": "NVIDIA GeForce RTX 4090", "memory_gb": 24, "compute_capability": "8.9"}
RETRY_ON_FAILURE = {"max_attempts": 3, "backoff_s": 0, "on_failure": True}


def assert_one_line_error(done: dict[str, Any], coordinator: Coordinator) -> str:
    """The task's error is one line naming the cause; the traceback is in its logs instead."""
    error = done["error"]
    assert done["state"] == "failed" and error, done
    assert "\n" not in error and "Traceback" not in error and 'File "' not in error, error
    assert len(error) < 600, error
    assert "Traceback (most recent call last)" in coordinator.logs(done["id"], "stderr")
    return error


@pytest.fixture
def offline_agent(coordinator: Coordinator, agents: list[Agent], tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Agent:
    """A GPU box (declared) that cannot reach the Hugging Face Hub and has nothing in its cache."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)  # the ML tests' session default: this agent must try the network
    agent = Agent(coordinator, "no-network", gpus=[RTX4090], extra_env={
        "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HOME": str(tmp_path / "hf-home")})
    agents.append(agent)
    return agent.start()


def test_the_readme_hub_sft_on_an_agent_without_network_fails_at_once_with_the_fix(
    coordinator: Coordinator, offline_agent: Agent
) -> None:
    """configs/sft_mistral_7b.yaml as written (Mistral-7B from the hub, retry.max_attempts 3). It used
    to fail after ~52 s of the hub client's retries with a 2 KB traceback as its error."""
    task = coordinator.submit((REPO / "configs" / "sft_mistral_7b.yaml").read_text())
    done = coordinator.wait_state(task["id"], FINAL, timeout=120)
    error = assert_one_line_error(done, coordinator)
    assert "cannot reach the Hugging Face Hub" in error and "mistralai/Mistral-7B-Instruct-v0.1" in error
    assert "type: local" in error and "HF_TOKEN" in error  # the fix, in the same line
    assert done["result"]["error_code"] == "hub_unreachable"
    assert done["attempts"] == 1 and [a["outcome"] for a in done["attempt_history"]] == ["failed"]
    ran_s = done["attempt_history"][0]["ended_at"] - done["attempt_history"][0]["started_at"]
    assert ran_s < 30, f"the attempt took {ran_s:.0f}s: is the hub client retrying again?"
    logs = coordinator.logs(done["id"], "stderr")
    assert "Retrying in" not in logs and "HubUnreachable" in logs


def put_in_hub_cache(model: Path, hf_home: Path, repo_id: str) -> None:
    """The layout huggingface_hub downloads into: refs/main names a snapshot folder holding the files."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_a_hub_model_in_the_agents_cache_still_trains_without_network(
    coordinator: Coordinator, offline_agent: Agent, tiny_lm: Path, tmp_path: Path
) -> None:
    """The check does not stop what worked before: a cached hub model loads, at once, from the cache."""
    put_in_hub_cache(tiny_lm, tmp_path / "hf-home", "acme/tiny-lm")
    spec = train_spec("sft", tiny_lm, {"rows": [{"text": f"the answer is {i}"} for i in range(8)]},
                      {"max_steps": 1, "save_steps": 10})
    spec["model"]["source"] = {"type": "huggingface", "identifier": "acme/tiny-lm"}
    spec["env"] = {}  # no HF_HUB_OFFLINE from the spec: the agent finds out by itself
    done = coordinator.wait_state(coordinator.submit(spec)["id"], FINAL, timeout=180)
    assert done["state"] == "succeeded", f"{done['error']}\n{coordinator.logs(done['id'])[-3000:]}"
    assert "Retrying in" not in coordinator.logs(done["id"], "stderr")


def test_a_bad_dataset_path_or_an_unknown_column_fails_on_the_first_attempt_even_with_retries_on(
    coordinator: Coordinator, start_agent, tiny_lm: Path, tmp_path: Path
) -> None:
    start_agent("trainer")
    rows = [{"question": f"add {i} and {i}", "answer": str(2 * i)} for i in range(8)]
    nowhere = tmp_path / "nonexistent" / "alpaca.jsonl"  # inside the folders the agent lets tasks read
    cases = (
        ({"path": str(nowhere)}, "bad_dataset", f"dataset.path: {nowhere} does not exist"),
        ({"rows": rows, "columns": {"instruction": "prompt", "output": "answer"}}, "bad_dataset",
         "dataset.columns: the data has no column 'prompt'"),
        ({"rows": rows, "format": "preference"}, "bad_dataset", "dataset.format 'preference' is not SFT data"),
    )
    tasks = [(coordinator.submit(train_spec("sft", tiny_lm, dataset, {"max_steps": 2}, retry=RETRY_ON_FAILURE)),
              code, words) for dataset, code, words in cases]
    for task, code, words in tasks:
        done = coordinator.wait_state(task["id"], FINAL, timeout=180)
        error = assert_one_line_error(done, coordinator)
        assert words in error and done["result"]["error_code"] == code, error
        assert done["attempts"] == 1, f"an input error was retried: {done['attempt_history']}"


def test_a_local_model_that_is_not_there_names_the_path_and_is_not_retried(
    coordinator: Coordinator, start_agent, tiny_lm: Path, tmp_path: Path
) -> None:
    start_agent("trainer")
    spec = train_spec("sft", tiny_lm, {"rows": [{"text": "x"}] * 4}, {"max_steps": 1}, retry=RETRY_ON_FAILURE)
    nowhere = tmp_path / "nonexistent" / "models" / "tiny"  # inside the folders the agent lets tasks read
    spec["model"]["source"] = {"type": "local", "identifier": str(nowhere)}
    done = coordinator.wait_state(coordinator.submit(spec)["id"], FINAL, timeout=120)
    error = assert_one_line_error(done, coordinator)
    assert f"{nowhere} does not exist" in error and done["result"]["error_code"] == "model_source"
    assert done["attempts"] == 1


class Unavailable(http.server.BaseHTTPRequestHandler):
    """An object store having a bad minute: every GET answers 503."""

    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def unavailable_url() -> Iterator[str]:
    Unavailable.hits = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/corpus.txt?X-Amz-Signature=secret"
    finally:
        server.shutdown()
        server.server_close()


def test_a_transient_download_fault_is_retried_when_the_spec_allows(
    coordinator: Coordinator, start_agent, tiny_lm: Path, unavailable_url: str
) -> None:
    start_agent("trainer")
    spec = train_spec("sft", tiny_lm, {"uri": unavailable_url}, {"max_steps": 1},
                      retry={"max_attempts": 2, "backoff_s": 0, "on_failure": True})
    done = coordinator.wait_state(coordinator.submit(spec)["id"], FINAL, timeout=240)
    error = assert_one_line_error(done, coordinator)
    assert "answered HTTP 503" in error and "secret" not in error, error  # a presigned signature stays out
    assert "gave up after 2 attempt(s)" in error
    assert done["attempts"] == 2 and Unavailable.hits == 2
