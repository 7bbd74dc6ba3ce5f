"""Cache-aware placement: a task on a hub model goes first to a waiting agent that holds it, never waits for
one, and its attempt records whether its agent held the model. The fleet's wake order in memory, then the
coordinator's real services (app.open_state on a real SQLite file) on a ManualClock, with no HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mloc_server.app import open_state
from mloc_server.clock import ManualClock
from mloc_server.services.auth import Principal
from mloc_server.services.fleet import AgentState, Fleet, prefers
from mloc_server.services.scheduler import Requirement, hub_model, pick_gpus
from mloc_server.settings import CoordinatorSettings
from mloc_server.state import AppState
from mloc_shared.protocol import HeldModel, Inventory, LeaseRef, PollRequest, PollResponse, RegisterRequest
from mloc_shared.taskspec import TaskSpec

pytestmark = pytest.mark.timeout(10)

MODEL = "org/tiny-model"
IMAGE = "registry.example.com/team/trainer:1.4"
ADMIN = Principal(user="admin", role="admin")
HOLD = 300.0  # a hold this long never ends by itself within a test


def spec(model: str | None = MODEL, *, source_type: str = "huggingface", **extra: Any) -> TaskSpec:
    body: dict[str, Any] = {"taskType": "command", "command": "true", **extra}
    if model is not None:
        body["model"] = {"source": {"type": source_type, "identifier": model}}
    return TaskSpec.model_validate(body)


def held(*ids: str, kind: str = "model", where: str = "hf-cache") -> list[HeldModel]:
    return [HeldModel(id=i, kind=kind, bytes=1000, where=where) for i in ids]


def agent(name: str, models: list[HeldModel] | None = None, images: tuple[str, ...] = ()) -> AgentState:
    inv = Inventory(hostname=name, models=models or [], container_runtime="podman", images=list(images))
    return AgentState(id=name, name=name, credential_hash=name, labels={}, inventory=inv,
                      task_types=frozenset({"command"}), max_tasks=1)


def wake_order(fleet: Fleet, req: Requirement, *waiting: AgentState) -> list[str]:
    for a in waiting:
        fleet.add_agent(a)
        fleet.waiting.add(a)
    return [a.name for a in fleet.waiting.pop_fitting(lambda v: pick_gpus(req, v) is not None, prefers(req))]


# -- which model a task names, and who holds it ------------------------------------------------

@pytest.mark.parametrize(("task", "expected"), [
    (spec(MODEL), MODEL),
    (spec("gpt2"), "gpt2"),  # a hub id without an organisation
    (spec("/models/llama"), None),  # a path, not a hub id
    (spec("./llama"), None),
    (spec("models/llama", source_type="local"), None),
    (spec("t-123", source_type="task"), None),  # another task's output
    (spec("s3://bucket/model.tar", source_type="s3"), None),
    (spec(None), None),
])
def test_the_hub_model_is_a_huggingface_source_that_is_not_a_path(task: TaskSpec, expected: str | None) -> None:
    assert hub_model(task) == expected
    assert Requirement.from_spec(task).model == expected


def test_the_model_is_kept_with_the_requirement_but_is_no_part_of_its_shape() -> None:
    req = Requirement.from_spec(spec())
    assert Requirement.from_json(req.to_json()).model == MODEL  # a restarted coordinator still prefers
    assert req == Requirement.from_spec(spec("org/other"))  # one queue bucket for both: not a requirement
    assert Requirement.from_json('{"task_type": "command"}').model is None  # stored before models were


def test_a_waiting_agent_that_holds_the_model_is_woken_first_and_the_others_still_follow() -> None:
    cold, warm, other = agent("cold"), agent("warm", held(MODEL)), agent("other", held("org/else"))
    assert wake_order(Fleet(), Requirement.from_spec(spec()), cold, other, warm) == ["warm", "cold", "other"]
    # no hub model: longest waiting first, whatever they hold
    assert wake_order(Fleet(), Requirement.from_spec(spec(None)), cold, other, warm) == ["cold", "other", "warm"]


def test_a_busy_holder_is_no_reason_to_wait() -> None:
    fleet = Fleet()
    cold, warm = agent("cold"), agent("warm", held(MODEL))
    fleet.add_agent(warm)  # registered, but its poll is not waiting: it runs a task
    assert wake_order(fleet, Requirement.from_spec(spec()), cold) == ["cold"]


def test_an_agent_holding_the_image_and_the_model_goes_before_one_holding_either() -> None:
    req = Requirement.from_spec(spec(image=IMAGE))
    order = wake_order(Fleet(), req, agent("none"), agent("image", images=(IMAGE,)), agent("model", held(MODEL)),
                       agent("both", held(MODEL), images=(IMAGE,)))
    assert order == ["both", "image", "model", "none"]


def test_a_dataset_or_a_store_folder_of_that_name_is_not_the_model() -> None:
    dataset = agent("dataset", held(MODEL, kind="dataset"))
    store = agent("store", held(MODEL, where="store"))
    mirror = agent("mirror", held(MODEL, where="mirror"))
    assert [a.holds_model(MODEL) for a in (dataset, store, mirror)] == [False, False, True]
    assert mirror.holds_model(None) is None
    assert wake_order(Fleet(), Requirement.from_spec(spec()), dataset, store, mirror) == ["mirror", "dataset", "store"]


# -- the coordinator's services, on an injected clock ----------------------------------------

@contextlib.asynccontextmanager
async def coordinator_on(settings: CoordinatorSettings, clock: ManualClock) -> AsyncIterator[AppState]:
    async with contextlib.AsyncExitStack() as resources:
        yield await open_state(settings, clock, resources)


@pytest.fixture
def settings(tmp_path: Path) -> CoordinatorSettings:
    return CoordinatorSettings(data_dir=tmp_path, lease_ttl_s=30, heartbeat_s=10, poll_hold_s=HOLD)


@pytest.fixture
async def st(settings: CoordinatorSettings) -> AsyncIterator[AppState]:
    async with coordinator_on(settings, ManualClock()) as state:
        yield state


async def register(st: AppState, name: str, models: list[HeldModel] | None = None) -> AgentState:
    inventory = Inventory(hostname=name, models=models or [], disk_free_bytes=5 << 30)
    resp = await st.agents.register(RegisterRequest(agent_version="test", name=name, inventory=inventory,
                                                    task_types=["command"], max_tasks=1), None)
    return st.fleet.agents[resp.agent_id]


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.001)


async def within(pending: asyncio.Task[PollResponse]) -> PollResponse:
    return await asyncio.wait_for(pending, 2.0)


async def waiting(st: AppState, a: AgentState, poll_id: str, **fields: Any) -> asyncio.Task[PollResponse]:
    """An agent's poll that found nothing to do and now waits for work."""
    pending = asyncio.ensure_future(st.polling.poll(a, PollRequest(poll_id=poll_id, free_slots=1, **fields)))
    await settle()
    assert not pending.done() and a.id in st.fleet.waiting
    return pending


async def submit(st: AppState, task: TaskSpec) -> str:
    record, _ = await st.tasks.submit(task, ADMIN)
    return record["id"]


async def attempts(st: AppState, task_id: str) -> list[tuple[str, bool | None]]:
    record = await st.tasks.get(task_id, ADMIN)
    return [(a["agent"], a["model_cached"]) for a in record["attempt_history"]]


async def test_a_task_on_a_held_model_goes_to_the_holder_and_its_attempt_says_it_was_cached(st: AppState) -> None:
    cold = await register(st, "cold")
    warm = await register(st, "warm", held(MODEL))
    cold_poll = await waiting(st, cold, "poll-cold-01")  # the cold one has waited longest
    warm_poll = await waiting(st, warm, "poll-warm-01")

    task_id = await submit(st, spec())
    (lease,) = (await within(warm_poll)).leases
    assert lease.task_id == task_id and not cold_poll.done()
    assert await attempts(st, task_id) == [("warm", True)]

    plain = await submit(st, spec(None))  # no hub model: the longest waiting agent, and nothing to record
    (lease,) = (await within(cold_poll)).leases
    assert lease.task_id == plain and await attempts(st, plain) == [("cold", None)]


async def test_when_the_holder_is_busy_the_task_goes_at_once_to_an_idle_agent(st: AppState) -> None:
    warm = await register(st, "warm", held(MODEL))
    busy = await submit(st, spec(None))
    (lease,) = (await within(asyncio.ensure_future(st.polling.poll(
        warm, PollRequest(poll_id="poll-warm-01", free_slots=1))))).leases
    assert lease.task_id == busy
    cold = await register(st, "cold")
    cold_poll = await waiting(st, cold, "poll-cold-01")
    warm_poll = asyncio.ensure_future(st.polling.poll(warm, PollRequest(
        poll_id="poll-warm-02", free_slots=0, running=[LeaseRef(task_id=busy, epoch=lease.epoch)])))
    await settle()
    assert warm.id not in st.fleet.waiting  # a full agent's poll takes no work

    task_id = await submit(st, spec())
    (lease,) = (await within(cold_poll)).leases  # at once: no clock moved, no hold ended
    assert lease.task_id == task_id and await attempts(st, task_id) == [("cold", False)]
    warm_poll.cancel()


async def test_held_models_a_poll_reports_steer_placement_and_survive_a_restart(
        settings: CoordinatorSettings) -> None:
    async with coordinator_on(settings, ManualClock()) as st:
        cold, later = await register(st, "cold"), await register(st, "later")
        assert later.holds_model(MODEL) is False
        cold_poll = await waiting(st, cold, "poll-cold-01")
        later_poll = await waiting(st, later, "poll-later-1", models=held(MODEL), disk_free_bytes=7 << 30)
        assert later.holds_model(MODEL) and later.inventory.disk_free_bytes == 7 << 30

        task_id = await submit(st, spec())
        assert (await within(later_poll)).leases[0].task_id == task_id and not cold_poll.done()
        await st.reaper.flush()  # the reported inventory is written with the last-seen times
        later_id = later.id

    async with coordinator_on(settings, ManualClock()) as st:  # a new coordinator process
        again = st.fleet.agents[later_id]
        assert again.holds_model(MODEL) and again.inventory.models == held(MODEL)


async def test_the_listing_shows_every_user_how_much_an_agent_holds_and_admins_what(st: AppState) -> None:
    a = await register(st, "warm", held(MODEL, "org/data", kind="model") + held("org/rows", kind="dataset"))
    mine = st.agents.describe(a, ADMIN).model_dump(mode="json", exclude_unset=True)
    assert (mine["model_count"], mine["model_bytes"], mine["disk_free_bytes"]) == (3, 3000, 5 << 30)
    assert [(m["id"], m["kind"], m["where"]) for m in mine["models"]] == [
        (MODEL, "model", "hf-cache"), ("org/data", "model", "hf-cache"), ("org/rows", "dataset", "hf-cache")]
    theirs = st.agents.describe(a, Principal(user="bob", role="user")).model_dump(mode="json", exclude_unset=True)
    assert theirs["model_count"] == 3 and "models" not in theirs
