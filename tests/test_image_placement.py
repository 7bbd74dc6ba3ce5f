"""image: tasks go only to agents with a container runtime, first to a waiting one that holds the image,
and never wait for it when another fitting agent is idle (in-process: the fleet's wake and handoff)."""

from __future__ import annotations

from mloc_server.services.fleet import AgentState, Fleet, prefers
from mloc_server.services.scheduler import Requirement, pick_gpus, static_mismatch, unplaceable_reason
from mloc_shared.protocol import Inventory
from mloc_shared.taskspec import TaskSpec

IMAGE = "registry.example.com/team/trainer:1.4"


def agent(name: str, runtime: str | None = "podman", images: tuple[str, ...] = ()) -> AgentState:
    inv = Inventory(hostname=name, container_runtime=runtime, images=list(images))
    return AgentState(id=name, name=name, credential_hash=name, labels={}, inventory=inv,
                      task_types=frozenset({"command"}), max_tasks=1)


def image_req(image: str = IMAGE) -> Requirement:
    return Requirement.from_spec(TaskSpec.model_validate({"taskType": "command", "command": "true", "image": image}))


def wake_order(fleet: Fleet, req: Requirement) -> list[str]:
    return [a.name for a in fleet.waiting.pop_fitting(lambda v: pick_gpus(req, v) is not None, prefers(req))]


def test_only_agents_with_a_runtime_can_take_an_image_task_and_the_reason_says_so() -> None:
    req = image_req()
    assert static_mismatch(req, agent("plain", runtime=None).view()) == (
        "has no container runtime for image: tasks (MLOC_CONTAINER_RUNTIME)")
    assert static_mismatch(req, agent("podman").view()) is None
    why = unplaceable_reason(req, [agent("a", runtime=None).view(), agent("b", runtime=None).view()])
    assert why is not None and "no container runtime" in why and "image registry.example.com" in why
    assert static_mismatch(Requirement("command"), agent("plain", runtime=None).view()) is None


def test_a_waiting_agent_that_holds_the_image_is_woken_first_and_the_others_still_follow() -> None:
    fleet = Fleet()
    cold, warm, plain = agent("cold"), agent("warm", images=(IMAGE,)), agent("plain", runtime=None)
    for a in (cold, plain, warm):  # the cold one has waited longest
        fleet.add_agent(a)
        fleet.waiting.add(a)
    assert wake_order(fleet, image_req()) == ["warm", "cold"]  # never the agent without a runtime
    for a in (cold, warm):
        fleet.waiting.add(a)
    assert wake_order(fleet, Requirement("command")) == ["plain", "cold", "warm"]  # no image: longest waiting first


def test_a_busy_holder_is_no_reason_to_wait() -> None:
    fleet = Fleet()
    cold, warm = agent("cold"), agent("warm", images=(IMAGE,))
    for a in (cold, warm):
        fleet.add_agent(a)
    fleet.waiting.add(cold)  # the holder is busy: its poll is not waiting
    req = image_req()
    assert wake_order(fleet, req) == ["cold"]


def test_a_short_image_name_matches_its_latest_tag() -> None:
    holder = agent("h", images=("docker.io/library/python:latest",))
    assert prefers(image_req("docker.io/library/python"))(holder)
    assert not prefers(image_req("docker.io/library/python:3.12"))(holder)
    assert prefers(Requirement("command")) is None
