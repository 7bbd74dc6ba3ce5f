"""depends_on, pipelines and sweeps in the coordinator's real services (app.open_state on a real SQLite
file, a ManualClock): tasks are claimed and completed through the real leasing paths."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from mloc_server.clock import ManualClock
from mloc_server.services.auth import Principal
from mloc_server.services.fleet import AgentState
from mloc_server.settings import CoordinatorSettings
from mloc_server.state import AppState
from mloc_shared.errors import ValidationFailed
from mloc_shared.protocol import Completion
from mloc_shared.spec_parsing import parse_document, validate_spec

from tests.fairshare_sim import coordinator_on, gpu_agent

pytestmark = pytest.mark.timeout(20)
ALICE = Principal(user="alice", role="user")


def settings_for(tmp_path: Path) -> CoordinatorSettings:
    return CoordinatorSettings(data_dir=tmp_path, lease_ttl_s=30, heartbeat_s=10, poll_hold_s=300)


def cmd(**extra: Any) -> dict[str, Any]:
    return {"taskType": "command", "command": "true", **extra}


async def submit(st: AppState, spec: dict[str, Any], who: Principal = ALICE) -> dict[str, Any]:
    record, _ = await st.tasks.submit(validate_spec(spec), who)
    st.clock.advance(0.01)
    return record


async def run_next(st: AppState, agent: AgentState, outcome: str = "succeeded") -> list[str]:
    """Claim what the agent can take now and end it with ``outcome``; the ids it ran."""
    offers = await st.leasing.claim(agent, agent.max_tasks - len(agent.leases), "poll")
    for offer in offers:
        st.clock.advance(1.0)
        await st.leasing.complete(agent, offer.task_id, Completion(epoch=offer.epoch, outcome=outcome))
    await st.dependencies.idle()
    return [o.task_id for o in offers]


async def state_of(st: AppState, task_id: str) -> dict[str, Any]:
    return await st.tasks.get(task_id, ALICE)


async def test_a_dependent_is_blocked_until_its_parent_succeeds_then_runs(tmp_path: Path) -> None:
    async with coordinator_on(settings_for(tmp_path), ManualClock()) as st:
        agent = await gpu_agent(st, "box")
        parent = await submit(st, cmd(name="prep"))
        child = await submit(st, cmd(depends_on=["prep"]))  # by name: the owner's newest task of that name
        assert child["state"] == "blocked"
        assert parent["id"] in child["pending_reason"] and "succeed" in child["pending_reason"]
        assert (await state_of(st, child["id"]))["depends_on"] == [{"task": parent["id"], "condition": "succeeded"}]
        assert await run_next(st, agent) == [parent["id"]]  # the blocked one is never leased meanwhile
        assert (await state_of(st, child["id"]))["state"] == "queued"
        assert await run_next(st, agent) == [child["id"]]
        assert (await state_of(st, child["id"]))["state"] == "succeeded"


async def test_a_failed_parent_cancels_succeeded_dependents_and_releases_finished_and_failed_ones(
        tmp_path: Path) -> None:
    async with coordinator_on(settings_for(tmp_path), ManualClock()) as st:
        agent = await gpu_agent(st, "box", max_tasks=4)
        parent = await submit(st, cmd(name="train"))
        needs_success = await submit(st, cmd(depends_on=[parent["id"]]))
        grandchild = await submit(st, cmd(depends_on=[needs_success["id"]]))
        any_end = await submit(st, cmd(depends_on=[{"task": parent["id"], "condition": "finished"}]))
        on_failure = await submit(st, cmd(depends_on=[{"task": parent["id"], "condition": "failed"}]))
        assert await run_next(st, agent, "failed") == [parent["id"]]
        cancelled = await state_of(st, needs_success["id"])
        assert cancelled["state"] == "cancelled"
        assert cancelled["error"] == f"task {parent['id']} (train) failed; this task needed it to succeed"
        cascaded = await state_of(st, grandchild["id"])  # the cancel itself is an end its dependents hear of
        assert cascaded["state"] == "cancelled" and needs_success["id"] in cascaded["error"]
        assert {(await state_of(st, t["id"]))["state"] for t in (any_end, on_failure)} == {"queued"}
        assert sorted(await run_next(st, agent)) == sorted([any_end["id"], on_failure["id"]])


async def test_a_failed_condition_is_cancelled_when_its_parent_succeeds(tmp_path: Path) -> None:
    async with coordinator_on(settings_for(tmp_path), ManualClock()) as st:
        agent = await gpu_agent(st, "box")
        parent = await submit(st, cmd())
        cleanup = await submit(st, cmd(depends_on=[{"task": parent["id"], "condition": "failed"}]))
        await run_next(st, agent)
        row = await state_of(st, cleanup["id"])
        assert row["state"] == "cancelled" and "needed it to fail" in row["error"]
        with pytest.raises(ValidationFailed) as late:  # submitted after the fact: refused, not cancelled
            await submit(st, cmd(depends_on=[{"task": parent["id"], "condition": "failed"}]))
        assert late.value.field == "depends_on.0" and "already succeeded" in late.value.message


async def test_unknown_ids_names_and_other_users_tasks_are_refused_naming_the_field(tmp_path: Path) -> None:
    async with coordinator_on(settings_for(tmp_path), ManualClock()) as st:
        bobs = await submit(st, cmd(name="bobs"), Principal(user="bob", role="user"))
        for ref in ("0000000000000nosuchtask", "no-such-name", bobs["id"], "bobs"):
            with pytest.raises(ValidationFailed) as refused:
                await submit(st, cmd(depends_on=[ref]))
            assert refused.value.field == "depends_on.0", ref
        with pytest.raises(ValidationFailed) as implicit:
            await submit(st, {"taskType": "inference", "model": {"source": {"type": "task", "identifier": bobs["id"]}}})
        assert implicit.value.field == "model.source.identifier"
        total = (await st.tasks.list(ALICE, state=None, user=None, task_type=None, page=1, page_size=10))["total"]
        assert total == 0  # nothing of a refused submit was stored


async def test_a_task_that_reads_another_tasks_outputs_waits_for_it(tmp_path: Path) -> None:
    async with coordinator_on(settings_for(tmp_path), ManualClock()) as st:
        agent = await gpu_agent(st, "box")
        sft = await submit(st, cmd())
        reader = await submit(st, {"taskType": "inference", "resources": {"gpus": 0},
                                   "model": {"source": {"type": "task", "identifier": sft["id"]}}})
        assert reader["state"] == "blocked" and sft["id"] in reader["pending_reason"]
        await run_next(st, agent)
        assert (await state_of(st, reader["id"]))["state"] == "queued"
        with pytest.raises(ValidationFailed) as wrong:  # reading outputs needs success, whatever depends_on says
            await submit(st, {"taskType": "inference", "model": {"source": {"type": "task", "identifier": sft["id"]}},
                              "depends_on": [{"task": sft["id"], "condition": "failed"}]})
        assert wrong.value.field == "depends_on.0"


async def test_a_blocked_task_can_be_cancelled_and_its_dependents_follow(tmp_path: Path) -> None:
    async with coordinator_on(settings_for(tmp_path), ManualClock()) as st:
        await gpu_agent(st, "box")
        a = await submit(st, cmd())
        b = await submit(st, cmd(depends_on=[a["id"]]))
        c = await submit(st, cmd(depends_on=[b["id"]]))
        assert (await st.tasks.cancel(b["id"], ALICE))["state"] == "cancelled"
        await st.dependencies.idle()
        assert (await state_of(st, c["id"]))["state"] == "cancelled"
        assert (await state_of(st, a["id"]))["state"] == "queued"


PIPELINE = """
name: exp
tasks:
  prep:
    taskType: command
    command: "true"
  train:
    taskType: command
    command: "true"
    depends_on: [prep]
  report:
    taskType: command
    command: "true"
    depends_on: [{task: train, condition: finished}]
"""


async def test_a_pipeline_runs_its_steps_in_order_and_rolls_up_their_states(tmp_path: Path) -> None:
    async with coordinator_on(settings_for(tmp_path), ManualClock()) as st:
        agent = await gpu_agent(st, "box", max_tasks=3)
        p = await st.pipelines.submit(*parse_document(PIPELINE.encode()), ALICE)
        assert (p["kind"], p["name"], p["state"]) == ("pipeline", "exp", "queued")
        steps = {s["name"]: s for s in p["steps"]}
        assert [steps[n]["state"] for n in ("prep", "train", "report")] == ["queued", "blocked", "blocked"]
        train = await state_of(st, steps["train"]["task_id"])
        assert train["depends_on"] == [{"task": steps["prep"]["task_id"], "condition": "succeeded"}]
        assert train["pipeline"] == {"id": p["id"], "step": "train", "index": 1}
        ran = [await run_next(st, agent) for _ in range(3)]
        assert ran == [[steps[n]["task_id"]] for n in ("prep", "train", "report")]
        done = await st.pipelines.get(p["id"], ALICE)
        assert done["state"] == "succeeded" and done["counts"] == {"succeeded": 3}
        listed = await st.pipelines.list(ALICE, 1, 20)
        assert [q["id"] for q in listed["pipelines"]] == [p["id"]]


@pytest.mark.parametrize(("doc", "field"), [
    ("tasks:\n  a: {taskType: command, command: 'true', depends_on: [b]}\n"
     "  b: {taskType: command, command: 'true', depends_on: [a]}\n", "tasks.b.depends_on"),  # a -> b -> a
    ("tasks:\n  a: {taskType: command, command: 'true', depends_on: [a]}\n", "tasks.a.depends_on"),
    ("tasks:\n  a: {taskType: inference, model: {source: {type: step, identifier: zz}}}\n",
     "tasks.a.model.source.identifier"),
    ("tasks:\n  a: {taskType: command, command: 'true'}\n  b: {taskType: command, command: 'true', "
     "depends_on: [nothere]}\n", "tasks.b.depends_on.0"),
    ("tasks:\n  a: {taskType: command, comand: 'true'}\n", "tasks.a.comand"),
])
async def test_a_bad_pipeline_is_refused_whole_naming_the_step_field(tmp_path: Path, doc: str, field: str) -> None:
    async with coordinator_on(settings_for(tmp_path), ManualClock()) as st:
        with pytest.raises(ValidationFailed) as refused:
            await st.pipelines.submit(*parse_document(doc.encode()), ALICE)
        assert refused.value.field == field
        assert (await st.pipelines.list(ALICE, 1, 20))["total"] == 0
        assert (await st.tasks.list(ALICE, state=None, user=None, task_type=None, page=1, page_size=10))["total"] == 0


async def test_cancelling_a_pipeline_stops_every_unfinished_step(tmp_path: Path) -> None:
    async with coordinator_on(settings_for(tmp_path), ManualClock()) as st:
        agent = await gpu_agent(st, "box")
        p = await st.pipelines.submit(*parse_document(PIPELINE.encode()), ALICE)
        offers = await st.leasing.claim(agent, 1, "poll")  # prep runs
        answer = await st.pipelines.cancel(p["id"], ALICE)
        assert answer["cancelling"] == [offers[0].task_id] and len(answer["cancelled"]) == 2
        await st.leasing.complete(agent, offers[0].task_id, Completion(epoch=offers[0].epoch, outcome="failed"))
        await st.dependencies.idle()
        after = await st.pipelines.get(p["id"], ALICE)
        assert after["state"] == "cancelled" and {s["state"] for s in after["steps"]} == {"cancelled"}


SWEEP = """
taskType: command
command: "true"
hyperparameters: {learning_rate: 1.0e-4}
sweep:
  grid:
    hyperparameters.learning_rate: [1.0e-4, 2.0e-4, 5.0e-4]
  max_parallel: 1
"""


async def test_a_sweep_makes_one_task_per_value_and_max_parallel_runs_them_one_at_a_time(tmp_path: Path) -> None:
    async with coordinator_on(settings_for(tmp_path), ManualClock()) as st:
        agent = await gpu_agent(st, "box", max_tasks=3)  # room for all three: only max_parallel holds them back
        p = await st.pipelines.submit(*parse_document(SWEEP.encode()), ALICE)
        assert p["kind"] == "sweep" and len(p["steps"]) == 3
        values = [s["values"]["hyperparameters.learning_rate"] for s in p["steps"]]
        assert values == [1e-4, 2e-4, 5e-4]
        assert [s["state"] for s in p["steps"]] == ["queued", "blocked", "blocked"]
        assert "max_parallel" in p["steps"][1]["pending_reason"]
        for i, s in enumerate(p["steps"]):
            task = await state_of(st, s["task_id"])
            assert task["spec"]["hyperparameters"]["learning_rate"] == values[i]
            assert task["spec"]["array"] == {"index": i, "count": 3}
            assert task["values"] == {"hyperparameters.learning_rate": values[i]}
        ran = []
        for outcome in ("failed", "succeeded", "succeeded"):  # a failed child does not cancel its siblings
            ran += await run_next(st, agent, outcome)
        assert ran == [s["task_id"] for s in p["steps"]]
        spans = []
        for task_id in ran:
            (attempt,) = (await state_of(st, task_id))["attempt_history"]
            spans.append((attempt["started_at"], attempt["ended_at"]))
        assert all(prev[1] <= nxt[0] for prev, nxt in itertools.pairwise(spans))
        done = await st.pipelines.get(p["id"], ALICE)
        assert done["state"] == "failed"
        assert [(r["values"]["hyperparameters.learning_rate"], r["state"]) for r in done["rollup"]] == [
            (1e-4, "failed"), (2e-4, "succeeded"), (5e-4, "succeeded")]


@pytest.mark.parametrize(("doc", "field"), [
    ("taskType: command\ncommand: 'true'\nsweep: {grid: {nosuch.path: [1, 2]}}\n", "sweep.grid.nosuch.path"),
    ("taskType: sft\nmodel: {source: {identifier: m}}\ndataset: {hub: d}\n"
     "sweep: {grid: {hyperparameters.learnin_rate: [1, 2]}}\n", "sweep.hyperparameters.learnin_rate"),
    ("taskType: command\ncommand: 'true'\nsweep: {grid: {priority: [1, 5000]}}\n", "sweep.priority"),
    ("taskType: command\ncommand: 'true'\nsweep: {list: []}\n", "sweep.list"),
    ("taskType: command\ncommand: 'true'\nsweep: {grid: {priority: [1]}, max_parallel: 0}\n", "sweep.max_parallel"),
])
async def test_a_bad_sweep_is_refused_naming_the_field(tmp_path: Path, doc: str, field: str) -> None:
    async with coordinator_on(settings_for(tmp_path), ManualClock()) as st:
        with pytest.raises(ValidationFailed) as refused:
            await st.pipelines.submit(*parse_document(doc.encode()), ALICE)
        assert refused.value.field == field, refused.value.message


async def test_blocked_tasks_whose_parent_ended_before_a_restart_are_decided_at_start(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    async with coordinator_on(settings, ManualClock()) as st:
        agent = await gpu_agent(st, "box")
        parent = await submit(st, cmd())
        child = await submit(st, cmd(depends_on=[parent["id"]]))
        st.leasing.on_task_final.remove(st.dependencies.task_ended)  # as if it stopped right after the end
        await run_next(st, agent)
        assert (await state_of(st, child["id"]))["state"] == "blocked"
        later = await submit(st, cmd(depends_on=[child["id"]], secrets={"API_KEY": "s3cret-value"}))
    async with coordinator_on(settings, ManualClock()) as st:
        assert (await state_of(st, child["id"]))["state"] == "queued"
        assert st.fleet.queue.get(child["id"]) is not None
        assert (await state_of(st, later["id"]))["state"] == "blocked"
        assert await st.db.secrets_ciphertext(later["id"]) is not None  # still waiting: its secrets are kept


async def test_a_retried_submit_returns_the_first_task_even_after_its_parent_ended(tmp_path: Path) -> None:
    async with coordinator_on(settings_for(tmp_path), ManualClock()) as st:
        agent = await gpu_agent(st, "box")
        parent = await submit(st, cmd())
        spec = validate_spec(cmd(depends_on=[parent["id"]]))
        first, created = await st.tasks.submit(spec, ALICE, "retry-me")
        assert created and first["state"] == "blocked"
        await run_next(st, agent, "failed")  # the dependent is cancelled; a new submit would be refused
        again, created = await st.tasks.submit(spec, ALICE, "retry-me")
        assert not created and again["id"] == first["id"] and again["state"] == "cancelled"
