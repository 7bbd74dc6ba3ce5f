"""Fixtures that start real coordinator and agent processes and always clean them up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netns
from tests.harness import Agent, Coordinator
from tests.prerequisites import missing

A100 = {"name": "NVIDIA A100-SXM4-80GB", "memory_gb": 80, "compute_capability": "8.0"}
README_SFT_YAML = """taskType: "sft"
model:
  source:
    type: "huggingface"
    identifier: "mistralai/Mistral-7B-Instruct-v0.1"
  adapter:
    type: "qlora"
    r: 16
    lora_alpha: 32
"""
RTX4090 = {"name": "NVIDIA GeForce RTX 4090", "memory_gb": 23.99, "compute_capability": "8.9"}


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    coord = Coordinator(tmp_path).start()
    try:
        yield coord
    finally:
        coord.stop()


@pytest.fixture
def agents(coordinator: Coordinator) -> Iterator[list[Agent]]:
    """A list to append started agents to; every one is stopped at the end."""
    started: list[Agent] = []
    yield started
    for agent in started:
        if agent.proc is not None and agent.proc.alive():
            agent.kill9()
        elif agent.proc is not None:
            agent.stop()


@pytest.fixture
def start_agent(coordinator: Coordinator, agents: list[Agent]):
    def start(name: str, **kwargs) -> Agent:
        agent = Agent(coordinator, name, **kwargs).start()
        agents.append(agent)
        return agent

    return start


@pytest.fixture
def nat() -> Iterator[netns.NatNet]:
    """A coordinator network, a NAT router and an agent LAN in network namespaces (skips without root)."""
    why = netns.available()
    if why:
        missing(f"network namespaces unavailable: {why}")
    net = netns.NatNet().up()
    try:
        yield net
    finally:
        net.down()


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the marker into the group
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `make test` (pytest-xdist, --dist loadgroup) these run one at a time on one worker:
    the network-namespace tests share fixed TEST-NET addresses, and the fault suite's timings
    (requeue within the TTL, 1,000 tasks through kills) are only meaningful without a neighbour."""
    for item in items:
        if item.get_closest_marker("netns") or item.get_closest_marker("chaos") or "nat" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("serial"))


@pytest.fixture(autouse=True)
def _group_kept(request: pytest.FixtureRequest) -> None:
    """Fail a grouped test when its group did not take: pytest-xdist marks a group by suffixing the node id,
    which pytest 9.2 ignores (pytest-xdist#1386); the netns tests then ran side by side on two workers and now
    and then collided on their addresses. pyproject.toml pins pytest below 9.2 for this."""
    item = request.node
    grouped = item.get_closest_marker("xdist_group") is not None
    if request.config.getoption("loadgroup", False) and grouped and "@" not in item.nodeid:
        pytest.fail("pytest-xdist ignored this test's xdist_group (this pytest drops xdist's group suffix): "
                    "install the pytest that pyproject.toml pins")
