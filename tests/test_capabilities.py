"""A strategy that needs something of the agent (DeepSpeed installed, CUDA GPUs for FSDP) goes only to
agents whose inventory reports it; when none does, the task stays queued and says why (issue 12)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from mloc_agent import inventory
from mloc_agent.settings import AgentSettings
from mloc_server.services.fleet import AgentState
from mloc_server.services.scheduler import Requirement, match_key, pick_gpus, static_mismatch, unplaceable_reason
from mloc_shared.protocol import Gpu, Inventory, RegisterRequest
from mloc_shared.taskspec import TaskSpec

from tests.conftest import A100
from tests.harness import Coordinator

SFT = {"taskType": "sft", "model": {"source": {"identifier": "mistralai/Mistral-7B-v0.1"}},
       "resources": {"gpus": 1, "gpu_memory_gb": 20}}
DEEPSPEED_INSTALLED = importlib.util.find_spec("deepspeed") is not None


def sft(**extra: Any) -> Requirement:
    return Requirement.from_spec(TaskSpec.model_validate({**SFT, **extra}))


def agent(name: str, capabilities: tuple[str, ...] = (), gpu_source: str = "declared") -> AgentState:
    gpus = [Gpu(index=0, uuid=f"GPU-{name}", name="NVIDIA A100-SXM4-80GB", memory_total_mb=80 * 1024,
                compute_capability="8.0")]
    inv = Inventory(hostname=name, gpus=gpus, gpu_source=gpu_source, capabilities=list(capabilities))
    return AgentState(id=name, name=name, credential_hash=name, labels={}, inventory=inv,
                      task_types=frozenset({"command", "sft"}), max_tasks=1)


def test_the_strategy_names_what_the_agent_needs() -> None:
    assert sft(distributed={"strategy": "deepspeed"}).capabilities == ("deepspeed",)
    assert sft(distributed={"deepspeed": {"zero_stage": 3}}).capabilities == ("deepspeed",)  # resolved from the block
    assert sft(distributed={"strategy": "fsdp"}).capabilities == ("cuda-gpus",)
    assert sft(distributed={"fsdp": {"cpu_offload": True}}).capabilities == ("cuda-gpus",)
    assert sft(distributed={"strategy": "ddp"}).capabilities == ()
    assert sft().capabilities == ()
    # an image: task runs the image's Python: whether DeepSpeed is in it is not the agent's to report
    assert sft(distributed={"strategy": "deepspeed"}, image="registry.example.com/t/ds:1").capabilities == ()
    assert sft(distributed={"strategy": "fsdp"}, image="registry.example.com/t/ds:1").capabilities == ("cuda-gpus",)


def test_an_agent_without_the_capability_could_never_run_it_and_says_what_is_missing() -> None:
    ds, fsdp = sft(distributed={"strategy": "deepspeed"}), sft(distributed={"strategy": "fsdp"})
    plain = agent("plain").view()
    assert static_mismatch(ds, plain) == "lacks DeepSpeed (pip install deepspeed on the agent)"
    assert static_mismatch(fsdp, plain) == "has no CUDA GPUs (distributed.strategy fsdp needs them)"
    assert pick_gpus(ds, plain) is None and pick_gpus(sft(), plain) == (0,)
    assert static_mismatch(ds, agent("ds", ("deepspeed",)).view()) is None
    assert pick_gpus(fsdp, agent("gpu", ("cuda-gpus",)).view()) == (0,)


def test_an_nvml_agent_from_before_capabilities_still_takes_fsdp_but_not_deepspeed() -> None:
    old = agent("old", gpu_source="nvml").view()  # reports no capabilities at all
    assert static_mismatch(sft(distributed={"strategy": "fsdp"}), old) is None
    assert static_mismatch(sft(distributed={"strategy": "deepspeed"}), old) is not None


def test_the_pending_reason_names_the_missing_capability_and_the_need() -> None:
    why = unplaceable_reason(sft(distributed={"strategy": "deepspeed"}), [agent("a").view(), agent("b").view()])
    assert why is not None and why.startswith("no registered agent can run it"), why
    assert "with DeepSpeed" in why and "a, b: lacks DeepSpeed (pip install deepspeed on the agent)" in why, why
    assert unplaceable_reason(sft(distributed={"strategy": "deepspeed"}),
                              [agent("a").view(), agent("ds", ("deepspeed",)).view()]) is None
    why = unplaceable_reason(sft(distributed={"strategy": "fsdp"}), [agent("cpu").view()])
    assert why is not None and "cpu: has no CUDA GPUs" in why and "with CUDA GPUs" in why, why


def test_agents_that_differ_only_in_capabilities_have_different_match_keys() -> None:
    assert match_key(agent("a").view()) == match_key(agent("b").view())
    assert match_key(agent("a").view()) != match_key(agent("b", ("deepspeed",)).view())
    assert match_key(agent("a", ("deepspeed",)).view()) == match_key(agent("b", ("deepspeed",)).view())


def test_the_requirement_keeps_its_capabilities_through_json() -> None:
    req = sft(distributed={"strategy": "deepspeed"})
    assert Requirement.from_json(req.to_json()) == req
    assert "capabilities" not in sft().to_json()  # stored requirements without any stay as they were
    assert Requirement.from_json(sft().to_json()).capabilities == ()


def test_capabilities_are_optional_on_the_wire() -> None:
    old = {"protocol_version": 1, "agent_version": "0", "name": "old", "inventory": {"hostname": "h"},
           "task_types": ["sft"]}
    assert RegisterRequest.model_validate(old).inventory.capabilities == []


def test_the_agent_reports_deepspeed_only_where_it_is_installed_and_cuda_only_from_nvml(tmp_path: Path) -> None:
    settings = AgentSettings(coordinator_url="http://127.0.0.1:1", data_dir=tmp_path,
                             declared_gpus=[{"name": "NVIDIA A100-SXM4-80GB", "memory_gb": 80}])
    inv = inventory.collect(settings)
    assert inv.gpu_source == "declared" and "cuda-gpus" not in inv.capabilities
    assert ("deepspeed" in inv.capabilities) == DEEPSPEED_INSTALLED
    assert inventory.capabilities(settings, "nvml")[-1] == "cuda-gpus"
    # a training runtime's interpreter is asked (in a child process: the agent never imports it)
    fake = tmp_path / "site"
    (fake / "deepspeed").mkdir(parents=True)
    (fake / "deepspeed" / "__init__.py").write_text("raise SystemExit('imported')\n")
    runtime = tmp_path / "python-with-deepspeed"
    runtime.write_text(f"#!/bin/sh\nPYTHONPATH={fake} exec {sys.executable} \"$@\"\n")
    runtime.chmod(0o755)
    assert inventory.has_deepspeed({"sft": str(runtime)})
    assert inventory.has_deepspeed({"inference": str(runtime)}) == DEEPSPEED_INSTALLED  # not a torchrun type
    assert inventory.has_deepspeed({"sft": str(tmp_path / "missing")}) == DEEPSPEED_INSTALLED


@pytest.mark.skipif(DEEPSPEED_INSTALLED, reason="DeepSpeed is installed here: the agent would report it")
def test_a_deepspeed_task_waits_with_its_reason_while_a_plain_task_runs(coordinator: Coordinator, start_agent) -> None:
    start_agent("no-deepspeed", gpus=[A100])
    task = coordinator.submit({**SFT, "distributed": {"strategy": "deepspeed"}})
    assert any("lacks DeepSpeed" in w for w in task.get("warnings", [])), task
    plain = coordinator.submit({"taskType": "command", "command": "echo plain"})
    assert coordinator.wait_state(plain["id"], "succeeded", timeout=30)["state"] == "succeeded"
    record = coordinator.task(task["id"])
    assert record["state"] == "queued" and "lacks DeepSpeed" in (record.get("pending_reason") or ""), record


def test_an_fsdp_task_waits_for_an_agent_with_cuda_gpus(coordinator: Coordinator, start_agent) -> None:
    start_agent("declared", gpus=[A100])  # declared GPUs: no NVML, so no CUDA GPUs reported
    task = coordinator.submit({**SFT, "distributed": {"strategy": "fsdp"}})
    assert any("has no CUDA GPUs" in w for w in task.get("warnings", [])), task
    plain = coordinator.submit({"taskType": "command", "command": "echo plain"})
    assert coordinator.wait_state(plain["id"], "succeeded", timeout=30)["state"] == "succeeded"
    record = coordinator.task(task["id"])
    assert record["state"] == "queued" and "has no CUDA GPUs" in (record.get("pending_reason") or ""), record


def test_an_agent_that_takes_an_fsdp_task_anyway_refuses_it_without_cuda() -> None:
    """An older coordinator matches on no capability: the agent's own check still names the field."""
    from mloc_agent.modules.errors import TaskInputError
    from mloc_agent.modules.training.strategies import strategy_args
    from mloc_shared.hyperparams import TrainingHyperparameters

    with pytest.raises(TaskInputError, match=r"^distributed\.strategy fsdp needs CUDA GPUs"):
        strategy_args({"distributed": {"strategy": "fsdp"}}, TrainingHyperparameters(), cuda=False)
