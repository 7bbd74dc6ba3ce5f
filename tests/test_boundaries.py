"""Package boundaries: the protocol loads no HTTP stack, the coordinator no ML library, the
agent's main process never torch, and the shared CLI neither side (each registers itself)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import mloc_shared
import pytest

ML = ("torch", "transformers", "trl", "peft", "langchain", "chromadb", "vllm", "sentence_transformers")


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in out.split()}


def test_protocol_imports_no_http_stack() -> None:
    mods = loaded_after("import mloc_shared.protocol, mloc_shared.taskspec, mloc_shared.spec_parsing")
    assert not mods & {"aiohttp", "httpx", *ML}


def test_coordinator_imports_no_ml_library() -> None:
    mods = loaded_after("from mloc_server.app import create_app\nfrom mloc_server.serve import serve")
    assert "aiohttp" in mods
    assert not mods & set(ML)


def test_agent_main_process_never_imports_torch() -> None:
    code = (
        "from mloc_agent.main import Agent\n"
        "from mloc_agent.modules import registry\n"
        "registry.available([], {})\n"  # loads every module class to read its requirements
    )
    assert not loaded_after(code) & set(ML)


def test_cli_imports_neither_side() -> None:
    mods = loaded_after("import mloc_shared.cli.main, mloc_shared.cli.demo")
    assert "typer" in mods
    assert not mods & {"mloc_server", "mloc_agent"}


def test_shared_names_neither_side_in_its_code() -> None:
    """Even a lazy import or a ``python -m mloc_agent...`` string would tie mloc-shared to a side."""
    side = re.compile(r"^mloc_(server|agent)(\.\w+)*$")
    found = []
    for path in Path(mloc_shared.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                modules = [node.value]
            else:
                continue
            found += [f"{path.name}:{node.lineno} {m}" for m in modules if side.match(m)]
    assert not found


def test_start_finds_each_side_and_its_flags_through_entry_points() -> None:
    def start_help(node_type: str) -> str:
        return subprocess.run([sys.executable, "-m", "mloc_shared.cli.main", "start", "--node-type", node_type,
                               "--help"], capture_output=True, text=True, check=True, env={**os.environ,
                               "COLUMNS": "200"}).stdout

    coordinator = start_help("orchestrator")
    assert "--host" in coordinator and "--port" in coordinator and "--coordinator-url" not in coordinator
    agent = start_help("worker")
    assert "--coordinator-url" in agent and "--labels" in agent and "--port" not in agent


def test_a_side_not_installed_names_the_package_to_install() -> None:
    from mloc_shared.cli import nodes

    with pytest.raises(nodes.NodeTypeUnavailable, match=r"install the mloc-server package \(pip install ./server\)"):
        nodes.command("orchestrator", group="mloc.no_such_group")
    with pytest.raises(nodes.NodeTypeUnavailable, match="install the mloc-agent package"):
        nodes.command(nodes.canonical("AGENT"), group="mloc.no_such_group")
