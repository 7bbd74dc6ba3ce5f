"""The python_repl sandbox: model-written code cannot reach the network or the agent's credential,
and is stopped by its time and memory limits.

End to end, the agent task's scripted LLM asks python_repl to steal the real agent's credential
file and to connect to a TCP server this test runs on 127.0.0.1. Then each kernel layer is tested
alone (the others switched off), with a control run that shows the same code succeeds with no
layer at all, so a layer that silently stops working fails its test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import threading
from pathlib import Path

import pytest
from mloc_agent.modules.agents.sandbox import SandboxPolicy, run_python
from mloc_agent.modules.agents.sandbox_boot import landlock_abi

from tests.harness import Coordinator, wait_for
from tests.ml.conftest import run_to_end
from tests.ml.fake_llm import FakeLLM

pytestmark = pytest.mark.ml
SECRET = "agent-secret-token-do-not-leak"


class TcpServer:
    """Counts connections on 127.0.0.1: a sandbox that reached it shows up as a count above zero."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.received = b""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    self.received += conn.recv(1024)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tcp_server():
    server = TcpServer()
    yield server
    server.close()


def steal_code(credential: Path, port: int) -> str:
    return f"""
try:
    print("CRED-READ", open({str(credential)!r}).read())
except Exception as exc:
    print("CRED-BLOCKED", type(exc).__name__)
import socket
try:
    s = socket.create_connection(("127.0.0.1", {port}), timeout=3)
    s.sendall(b"leak")
    print("NET-OPEN")
except Exception as exc:
    print("NET-BLOCKED", type(exc).__name__)
"""


def fenced(code: str) -> str:
    return f"Run this:\n```python\n{code.strip()}\n```"


def test_python_repl_in_an_agent_task_cannot_read_the_credential_or_reach_the_network(
        coordinator: Coordinator, start_agent, tcp_server: TcpServer) -> None:
    agent = start_agent("sandboxed")
    credential = agent.data_dir / "agent.json"
    assert credential.read_text().strip(), "the agent's credential file should exist and hold its token"
    token = json.loads(credential.read_text())
    questions = [
        fenced(steal_code(credential, tcp_server.port)),
        fenced("while True:\n    pass"),
        fenced("block = bytearray(1024 * 1024 * 1024)\nprint('ALLOCATED', len(block))"),
        fenced("print(sum(range(10)))"),  # the sandbox still works after the failures above
    ]
    with FakeLLM() as llm:
        done = run_to_end(coordinator, {
            "taskType": "agent_inference", "resources": {"gpus": 0},
            "hyperparameters": {"agent_type": "react", "tools": ["python_repl"], "questions": questions,
                                "chat_model": {"base_url": llm.base_url},
                                "python_timeout_s": 3, "python_memory_mb": 256}}, timeout=120)
    rows = [json.loads(line) for line in coordinator.http.get(
        f"/api/v1/tasks/{done['id']}/artifacts/answers.jsonl", follow_redirects=True).text.splitlines()]
    steal, spin, hog, fine = (r["answer"] for r in rows)
    assert "CRED-BLOCKED PermissionError" in steal and "CRED-READ" not in steal
    assert "NET-BLOCKED" in steal and "NET-OPEN" not in steal
    assert tcp_server.accepted == 0 and tcp_server.received == b""
    assert "time limit reached" in spin
    assert "MemoryError" in hog and "ALLOCATED" not in hog
    assert fine == "The result is: 45"
    transcript = coordinator.http.get(f"/api/v1/tasks/{done['id']}/artifacts/transcript.jsonl",
                                      follow_redirects=True).text
    for value in (v for v in token.values() if isinstance(v, str) and len(v) >= 16):
        assert value not in transcript  # no secret of the agent's leaked into the task's output
    results = [json.loads(line) for line in transcript.splitlines() if '"tool_result"' in line]
    assert results[1]["details"]["timed_out"] is True and results[1]["details"]["duration_s"] < 6
    layers = results[0]["details"]["sandbox"]
    assert set(layers) == {"namespaces", "landlock", "rlimits", "audit_hook"}
    assert not [v for v in layers.values() if v.startswith("unavailable")], layers  # all four held on this host


# -- each layer alone ------------------------------------------------------------------------------


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    data_dir = tmp_path / "agent-data"
    data_dir.mkdir()
    path = data_dir / "agent.json"
    path.write_text(json.dumps({"token": SECRET}))
    path.chmod(0o600)
    return path


def only(layer: str | None, protected: Path, **limits: float) -> SandboxPolicy:
    off = {"namespaces": False, "landlock": False, "audit_hook": False}
    if layer:
        off[layer] = True
    return SandboxPolicy(protected_paths=[protected], timeout_s=limits.get("timeout_s", 10), **off)


def namespaces_work() -> bool:
    result = run_python("print('ok')", SandboxPolicy(landlock=False, audit_hook=False))
    return not result.layers.get("namespaces", "unavailable").startswith("unavailable")


LAYERS = [
    pytest.param("audit_hook", id="audit-hook"),
    pytest.param("landlock", id="landlock", marks=pytest.mark.skipif(landlock_abi() < 4, reason="needs Landlock 4+")),
]


def test_with_no_layer_the_same_code_does_steal(secret_file: Path, tcp_server: TcpServer) -> None:
    """The control: proves the layered tests below would notice a layer that stopped working."""
    result = run_python(steal_code(secret_file, tcp_server.port), only(None, secret_file.parent))
    assert f"CRED-READ {json.dumps({'token': SECRET})}" in result.stdout
    assert "NET-OPEN" in result.stdout
    assert tcp_server.accepted == 1


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_alone_blocks_the_credential_and_the_network(layer: str, secret_file: Path,
                                                                tcp_server: TcpServer) -> None:
    result = run_python(steal_code(secret_file, tcp_server.port), only(layer, secret_file.parent))
    assert not result.layers[layer].startswith("unavailable"), result.layers
    assert "CRED-BLOCKED PermissionError" in result.stdout and SECRET not in result.stdout + result.stderr
    assert "NET-BLOCKED" in result.stdout, result.stdout + result.stderr
    assert tcp_server.accepted == 0


def test_the_network_namespace_alone_blocks_the_network(secret_file: Path, tcp_server: TcpServer) -> None:
    if not namespaces_work():
        pytest.skip("this host allows no new network namespace")
    result = run_python(steal_code(secret_file, tcp_server.port), only("namespaces", secret_file.parent))
    assert "NET-BLOCKED OSError" in result.stdout  # no route: the namespace's loopback is down and empty
    assert tcp_server.accepted == 0


def test_the_snippet_runs_in_a_fresh_temp_dir_with_a_scrubbed_environment(monkeypatch, secret_file: Path) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("MLOC_JOIN_TOKEN", SECRET)
    code = """
import os
open('note.txt', 'w').write('kept for this call only')
print(os.getcwd())
print(sorted(os.environ))
try:
    open('/tmp/outside-the-sandbox.txt', 'w')
except PermissionError:
    print('WRITE-OUTSIDE-BLOCKED')
"""
    result = run_python(code, SandboxPolicy(protected_paths=[secret_file.parent]))
    cwd = result.stdout.splitlines()[0]
    assert cwd.startswith(("/tmp/mloc-sbx-", str(Path(__import__("tempfile").gettempdir()) / "mloc-sbx-")))
    assert not Path(cwd).exists()  # removed after the call
    assert "OPENAI_API_KEY" not in result.stdout and "MLOC_JOIN_TOKEN" not in result.stdout
    assert "WRITE-OUTSIDE-BLOCKED" in result.stdout
    assert not Path("/tmp/outside-the-sandbox.txt").exists()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def test_time_limit_kills_the_snippet_and_its_children(secret_file: Path) -> None:
    policy = dataclasses.replace(only(None, secret_file.parent), timeout_s=1.5)  # fork allowed: no audit hook
    code = ("import os, time\npid = os.fork()\nif pid == 0:\n    time.sleep(60)\n"
            "print(pid, flush=True)\nwhile True:\n    pass")
    result = run_python(code, policy)
    assert result.timed_out and 1.4 < result.duration_s < 4
    assert "time limit reached" in result.text()
    child = int(result.stdout.split()[0])
    wait_for(lambda: not _alive(child), 5, f"the snippet's child {child} to be killed")


def test_memory_limit_stops_an_oversized_allocation(secret_file: Path) -> None:
    policy = dataclasses.replace(only(None, secret_file.parent), memory_mb=256)
    big = run_python("b = bytearray(512 * 1024 * 1024)\nprint('ALLOCATED')", policy)
    assert "MemoryError" in big.stderr and "ALLOCATED" not in big.stdout
    small = run_python("b = bytearray(32 * 1024 * 1024)\nprint('ALLOCATED', len(b))", policy)
    assert small.ok and "ALLOCATED 33554432" in small.stdout


def test_a_final_expression_is_printed_like_a_repl_cell() -> None:
    result = run_python("x = 6\nx * 7", SandboxPolicy())
    assert result.ok and result.stdout.strip() == "42"


ESCAPE = """
import os, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()  # out of the process group the time limit kills
    os.write(w, os.readlink('/proc/self').encode())
    os.close(w)
    time.sleep(60)
    os._exit(0)
os.close(w)
print(os.read(r, 32).decode(), flush=True)
"""


def test_processes_the_snippet_starts_die_with_it_even_outside_its_process_group(secret_file: Path) -> None:
    if not namespaces_work():
        pytest.skip("this host allows no new PID namespace")
    control = run_python(ESCAPE, only(None, secret_file.parent))  # no PID namespace: the child lingers
    lingering = int(control.stdout.split()[0])
    try:
        assert _alive(lingering)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(lingering, signal.SIGKILL)
    result = run_python(ESCAPE, only("namespaces", secret_file.parent))
    child = int(result.stdout.split()[0])
    wait_for(lambda: not _alive(child), 5, f"the snippet's setsid child {child} to die with the namespace")
