"""Fixtures for the ML module tests: tiny models built once per session (seconds, no download),
and helpers to submit training tasks to a real coordinator and read back their adapters."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Coordinator

REPO = Path(__file__).resolve().parents[2]
FINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="session", autouse=True)
def offline() -> Iterator[None]:
    """Any accidental Hub access fails fast instead of hanging on the network."""
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    yield
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def start_agent(start_agent, tmp_path_factory: pytest.TempPathFactory):
    """Agents set up as an ML box's operator sets up one: tasks read the tests' files, which live in the
    session's temp folder (MLOC_TASK_PATH_ROOTS), and fetch from the tests' servers, which listen on
    loopback (MLOC_ALLOW_PRIVATE_URLS=true). The attack tests in tests/security start their agents
    with the defaults."""
    lab = {"MLOC_TASK_PATH_ROOTS": str(tmp_path_factory.getbasetemp()), "MLOC_ALLOW_PRIVATE_URLS": "true"}

    def start(name: str, *, extra_env: dict[str, str] | None = None, **kwargs: Any):
        return start_agent(name, extra_env={**lab, **(extra_env or {})}, **kwargs)

    return start


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("trl", reason="the ML training stack is not installed (make venv-ml)")
    from mloc_agent.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("models") / "tiny-lm")


@pytest.fixture(scope="session")
def tiny_rm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reward model with its own tokenizer (different vocabulary from the policy's)."""
    pytest.importorskip("trl", reason="the ML training stack is not installed (make venv-ml)")
    from mloc_agent.tiny import build_tiny_reward_model

    return build_tiny_reward_model(tmp_path_factory.mktemp("models") / "tiny-rm")


def train_spec(task_type: str, model: Path, dataset: dict[str, Any], hyperparameters: dict[str, Any], *,
               adapter: str = "lora", **extra: Any) -> dict[str, Any]:
    """A CPU training task on a local tiny model (no GPU asked, Hub access off)."""
    spec: dict[str, Any] = {
        "taskType": task_type,
        "model": {"source": {"type": "local", "identifier": str(model)},
                  "adapter": {"type": adapter, "r": 8, "lora_alpha": 16}},
        "dataset": dataset,
        "hyperparameters": {"logging_steps": 1, "per_device_train_batch_size": 4, "max_length": 64,
                            **hyperparameters},
        "resources": {"gpus": 0},
        "env": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    }
    spec.update(extra)
    return spec


def run_to_end(coord: Coordinator, spec: dict[str, Any], timeout: float = 180) -> dict[str, Any]:
    """Submit, wait for a final state, and fail with the task's error and log tail if it did not succeed."""
    task = coord.submit(spec)
    done = coord.wait_state(task["id"], FINAL, timeout=timeout)
    if done["state"] != "succeeded":
        pytest.fail(f"task {done['state']}: {done.get('error')}\n--- logs ---\n{coord.logs(task['id'])[-4000:]}")
    return done


def artifacts(coord: Coordinator, task_id: str) -> dict[str, dict[str, Any]]:
    listing = coord.http.get(f"/api/v1/tasks/{task_id}/artifacts")
    assert listing.status_code == 200, listing.text
    return {a["name"]: a for a in listing.json()["artifacts"]}


def download_folder(coord: Coordinator, task_id: str, prefix: str, dest: Path) -> Path:
    """Fetch every artifact under ``prefix/`` through the public API (the redirect to the blob included)."""
    names = [n for n in artifacts(coord, task_id) if n.startswith(prefix + "/")]
    assert names, f"no artifact under {prefix}/"
    for name in names:
        resp = coord.http.get(f"/api/v1/tasks/{task_id}/artifacts/{name}", follow_redirects=True)
        assert resp.status_code == 200, resp.text
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(resp.content)
    return dest / prefix


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A plain HTTP server over a folder: (folder, base URL) — stands in for presigned object-store URLs."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
