"""The coordinator killed with -9 at random moments under load, and restarted: every task still
finishes exactly once. A task's own process appends its id to a ledger, so runs are counted by
something other than the coordinator."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.chaos.conftest import Report
from tests.chaos.fleet import Ledger, all_tasks, exactly_once, wait_load_done
from tests.chaos.scale import Scale
from tests.harness import Agent, Coordinator

pytestmark = pytest.mark.chaos
TASK_S = 0.3


class Submitter(threading.Thread):
    """Submits tasks one by one with an Idempotency-Key each, retrying through coordinator crashes,
    as a careful client would: a retried submit must never create a second task. Paced at about the
    fleet's throughput, so the kills hit submits as well as claims and completions."""

    def __init__(self, coord: Coordinator, count: int, command: str, pace_s: float) -> None:
        super().__init__(name="chaos-submitter", daemon=True)
        self.coord, self.count, self.command, self.pace_s = coord, count, command, pace_s
        self.ids: dict[str, str] = {}  # idempotency key -> task id
        self.retries = 0
        self.replays = 0  # a retry answered 200: the first try had committed before the crash
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.coord.url, timeout=10,
                              headers={"Authorization": f"Bearer {self.coord.admin_token}"}) as http:
                start = time.monotonic()
                for i in range(self.count):
                    self._submit(http, f"chaos-{i}")
                    time.sleep(max(0.0, start + (i + 1) * self.pace_s - time.monotonic()))
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _submit(self, http: httpx.Client, key: str) -> None:
        spec = {"taskType": "command", "name": key, "command": self.command,
                "retry": {"max_attempts": 5, "backoff_s": 0}}
        deadline = time.monotonic() + 120
        retried = False
        while time.monotonic() < deadline:
            try:
                resp = http.post("/api/v1/tasks", json=spec, headers={"Idempotency-Key": key})
            except httpx.TransportError:
                resp = None
            if resp is not None and resp.status_code in (200, 201):
                if key in self.ids:
                    assert self.ids[key] == resp.json()["id"]
                self.ids[key] = resp.json()["id"]
                self.replays += retried and resp.status_code == 200
                return
            if resp is not None and resp.status_code < 500:
                raise AssertionError(f"submit {key} refused: {resp.status_code} {resp.text}")
            self.retries += 1
            retried = True
            time.sleep(0.2)
        raise AssertionError(f"submit {key} not accepted within 120s")


def test_coordinator_killed_under_load_runs_every_task_exactly_once(
    tmp_path: Path, scale: Scale, report: Report, rng: random.Random,
) -> None:
    n, kills = scale.coord_tasks, scale.coord_kills
    # restart_grace_s covers the agents' retry backoff (completions back off up to 10 s), as the
    # default 60 s does in production: a finished task's result arrives before its lease can expire
    coord = Coordinator(tmp_path, heartbeat_s=0.5, lease_ttl_s=4.0, restart_grace_s=10.0)
    ledger = Ledger(tmp_path / "ledger")
    agents: list[Agent] = []
    try:
        coord.start()
        for i in range(scale.coord_agents):
            agents.append(Agent(coord, f"steady-{i}", max_tasks=scale.coord_slots).start())
        slots = scale.coord_agents * scale.coord_slots
        report(f"{n} tasks of {TASK_S}s through {scale.coord_agents} agents x {scale.coord_slots} slots; "
               f"the coordinator will be killed -9 {kills} times")
        t0 = time.monotonic()
        submitter = Submitter(coord, n, f"sleep {TASK_S}; {ledger.append_cmd()}", pace_s=TASK_S / slots)
        submitter.start()
        history = []
        gap = min(3.0, n * TASK_S / slots / (kills + 1))  # spread the kills over the load
        for k in range(1, kills + 1):
            time.sleep(rng.uniform(gap / 3, gap))
            health = coord.http.get("/health").json()
            done = len(ledger.lines())
            assert done < n, f"the load ended before kill {k}; make the tasks longer"
            at = time.monotonic() - t0
            coord.kill9()
            time.sleep(rng.uniform(0.05, 1.0))
            coord.restart()
            down = time.monotonic() - t0 - at
            history.append(f"t={at:.1f}s")
            report(f"kill {k} at t={at:.1f}s: {done}/{n} ledger lines, {len(submitter.ids)} submitted, "
                   f"{health['running']} running, {health['queued']} queued; back healthy after {down:.1f}s")
        submitter.join(180)
        assert not submitter.is_alive() and submitter.error is None, submitter.error
        states = wait_load_done(coord, n, timeout=60 + 3 * n * TASK_S / slots)
        elapsed = time.monotonic() - t0

        ids = list(submitter.ids.values())
        assert len(set(ids)) == n, "two idempotency keys got the same task"
        tasks = all_tasks(coord)
        assert sorted(tasks) == sorted(ids), f"{len(tasks)} tasks stored for {n} submits"
        not_ok = {i: t["state"] for i, t in tasks.items() if t["state"] != "succeeded"}
        counts = ledger.counts()
        missing, twice, unknown = exactly_once(counts, ids)
        attempts = Counter(t["attempts"] for t in tasks.values())
        report(f"coordinator killed {kills} times at {', '.join(history)}; {n} tasks in {elapsed:.1f}s: "
               f"{states['succeeded']} succeeded, {sum(counts.values())} ledger runs, {len(twice)} duplicates, "
               f"{len(missing)} missing; attempts {dict(sorted(attempts.items()))}; submits retried "
               f"{submitter.retries}x ({submitter.replays} answered from the committed first try)")
        assert not not_ok, f"tasks not succeeded: {dict(list(not_ok.items())[:10])}"
        assert not missing, f"{len(missing)} tasks never ran: {missing[:10]}"
        assert not twice, f"{len(twice)} tasks ran more than once: {[(i, counts[i]) for i in twice[:10]]}"
        assert not unknown, f"runs of unknown tasks: {unknown[:10]}"
    finally:
        for agent in agents:
            agent.stop()
        coord.stop()
