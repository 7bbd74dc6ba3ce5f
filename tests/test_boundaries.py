"""Package boundaries: the protocol loads no HTTP stack, the coordinator no ML library, and the
agent's main process never torch."""

from __future__ import annotations

import subprocess
import sys

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
