"""Agents killed with -9 in the middle of their tasks: the coordinator hears nothing more from them,
requeues their tasks once the lease TTL has passed (not before), and other agents finish them."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chaos.conftest import Report
from tests.chaos.fleet import Ledger, all_tasks, exactly_once, wait_load_done
from tests.chaos.scale import Scale
from tests.harness import Agent, Coordinator, wait_for

pytestmark = pytest.mark.chaos
HEARTBEAT_S, TTL_S, TASK_S = 0.5, 4.0, 3.0


@dataclass
class Kill:
    agent: str
    at: float  # wall clock, comparable with the coordinator's attempt times
    held: set[str]


def test_agents_killed_mid_task_are_requeued_after_ttl_and_finish_elsewhere(
    tmp_path: Path, scale: Scale, report: Report, rng: random.Random,
) -> None:
    coord = Coordinator(tmp_path, heartbeat_s=HEARTBEAT_S, lease_ttl_s=TTL_S)
    ledger = Ledger(tmp_path / "ledger")
    agents: list[Agent] = []
    try:
        coord.start()
        for i in range(scale.agent_count):
            agents.append(Agent(coord, f"box-{i}", max_tasks=2).start())
        command = f"{ledger.append_cmd('start')}; sleep {TASK_S}; {ledger.append_cmd('done')}"
        spec = {"taskType": "command", "command": command, "retry": {"max_attempts": 5, "backoff_s": 0}}
        resp = coord.http.post("/api/v1/tasks", json=[spec] * scale.agent_tasks)
        assert resp.status_code == 201, resp.text
        ids = [t["id"] for t in resp.json()["tasks"]]
        report(f"{len(ids)} tasks of {TASK_S:g}s on {len(agents)} agents x 2 slots; lease TTL {TTL_S:g}s, "
               f"heartbeat {HEARTBEAT_S:g}s; {scale.agent_kills} agents will be killed -9 mid-task")

        kills: list[Kill] = []
        alive = {a.name: a for a in agents}
        for _ in range(scale.agent_kills):
            time.sleep(rng.uniform(0.5, 2.0))

            def busy() -> list[tuple[str, set[str]]]:
                return [(w["name"], {lease["task_id"] for lease in w["leases"]}) for w in coord.workers()
                        if w["name"] in alive and w["leases"]]

            name, held = rng.choice(wait_for(busy, 20, "an agent running tasks"))
            at = time.time()
            alive.pop(name).kill9()
            kills.append(Kill(name, at, held))
            report(f"killed {name} -9 while it ran {len(held)} task(s)")

        states = wait_load_done(coord, len(ids), timeout=120)
        tasks = {i: coord.task(i) for i in all_tasks(coord)}
        killed = {k.agent for k in kills}
        requeue_delays: list[float] = []
        for kill in kills:
            # a dead agent gets no new work: its abandoned long poll must not claim tasks for it
            late = [(i, round(a["started_at"] - kill.at, 1)) for i, t in tasks.items() for a in t["attempt_history"]
                    if a["agent"] == kill.agent and a["started_at"] > kill.at + 0.5]
            assert not late, f"tasks leased to {kill.agent} after it was killed (id, seconds after): {late}"
            lost = {i for i, t in tasks.items() for a in t["attempt_history"]
                    if a["agent"] == kill.agent and a["outcome"] == "lost"}
            finished_there = {i for i, t in tasks.items() if t.get("agent") == kill.agent}
            assert kill.held <= lost | finished_there, f"{kill.agent}'s tasks {kill.held - lost} were not requeued"
            assert lost, f"nothing of {kill.agent} was requeued"
            for task_id in lost:
                task = tasks[task_id]
                attempt = next(a for a in task["attempt_history"] if a["agent"] == kill.agent
                               and a["outcome"] == "lost")
                delay = attempt["ended_at"] - kill.at
                requeue_delays.append(delay)
                # the last heartbeat came at most ~1.1 heartbeats before the kill: expiry is no earlier
                assert delay >= TTL_S - 1.2 * HEARTBEAT_S - 0.3, f"{task_id} requeued {delay:.2f}s after the kill"
                assert delay <= TTL_S + 5.0, f"{task_id} requeued only {delay:.2f}s after the kill"
                assert "lease expired" in attempt["error"], attempt
                assert task["state"] == "succeeded", task
                assert task["agent"] not in killed and task["attempts"] >= 2, task

        done, started = ledger.counts("done"), ledger.counts("start")
        missing, twice, unknown = exactly_once(done, ids)
        requeued = len(requeue_delays)
        where = sorted({t["agent"] for t in tasks.values() if t["attempts"] > 1})
        report(f"{requeued} tasks of the killed agents requeued {min(requeue_delays):.1f}-{max(requeue_delays):.1f}s "
               f"after their kill (TTL {TTL_S:g}s) and finished on {', '.join(where)}; {states['succeeded']}/"
               f"{len(ids)} succeeded; ledger: {sum(done.values())} completed runs, {len(twice)} duplicates, "
               f"{len(missing)} missing, {sum(started.values())} starts (killed runs included)")
        assert all(t["state"] == "succeeded" for t in tasks.values())
        assert not missing and not twice and not unknown, (missing, twice, unknown)
        assert sum(started.values()) <= sum(t["attempts"] for t in tasks.values())
    finally:
        for agent in agents:
            agent.stop()
        coord.stop()
