"""The SQLite file's filesystem fills up or turns read-only under a running coordinator.

Users must get a clear answer (503 naming the database and the cause, never a 500 or a stack
trace), nothing already stored may be harmed (``PRAGMA integrity_check``, the tasks accepted
before read back unchanged), work in flight must not run twice, and everything must work again
once the disk is fixed, with no restart needed."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import prerequisites
from tests.chaos import disk
from tests.chaos.conftest import Report
from tests.chaos.fleet import Ledger, all_tasks, exactly_once
from tests.harness import Agent, Coordinator, wait_for

pytestmark = pytest.mark.chaos
HEARTBEAT_S, TTL_S = 0.5, 4.0
KEPT = ("id", "state", "spec", "attempts", "user", "created_at", "finished_at", "exit_code")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[disk.SmallDisk]:
    why = disk.available(tmp_path)
    if why:
        prerequisites.missing(why)
    d = disk.SmallDisk(tmp_path / "coordinator", size_mb=8)
    try:
        yield d.mount()
    finally:
        d.unmount()


class Fleet:
    """A coordinator whose data dir is the small disk, one agent, and a ledger of task runs."""

    def __init__(self, tmp_path: Path) -> None:
        self.coord = Coordinator(tmp_path, heartbeat_s=HEARTBEAT_S, lease_ttl_s=TTL_S)
        self.agent = Agent(self.coord, "worker", max_tasks=2)
        self.ledger = Ledger(tmp_path / "ledger")
        self.db = Path(self.coord.data_dir) / "mloc.db"

    def task_spec(self, seconds: float = 0) -> dict[str, Any]:
        cmd = self.ledger.append_cmd() if not seconds else f"sleep {seconds:g}; {self.ledger.append_cmd()}"
        return {"taskType": "command", "command": cmd}

    def preload(self, count: int) -> dict[str, dict[str, Any]]:
        """Tasks run to the end before the fault: what must come through it unchanged."""
        ids = [self.coord.submit(self.task_spec())["id"] for _ in range(count)]
        for task_id in ids:
            assert self.coord.wait_state(task_id, {"succeeded", "failed"})["state"] == "succeeded"
        return {i: {k: t[k] for k in KEPT} for i, t in all_tasks(self.coord).items()}

    def start_running(self, count: int, seconds: float) -> list[str]:
        ids = [self.coord.submit(self.task_spec(seconds))["id"] for _ in range(count)]
        for task_id in ids:
            self.coord.wait_state(task_id, "running")
        return ids

    def check_unavailable(self, resp: httpx.Response, *causes: str) -> str:
        """A refused write: 503, JSON error naming the database and the cause, no stack trace."""
        assert resp.status_code == 503, f"{resp.status_code} {resp.text}"
        err = resp.json()["error"]
        message = f"{err['message']} {err.get('hint', '')}"
        assert err["code"] == "unavailable" and "database" in message, err
        assert any(c in message for c in causes), err
        assert "Traceback" not in resp.text
        return err["message"]

    def submit_raw(self, key: str, pad: int = 0) -> httpx.Response:
        spec = self.task_spec()
        if pad:
            spec["env"] = {"PAD": "x" * pad}
        try:
            return self.coord.http.post("/api/v1/tasks", json=spec, headers={"Idempotency-Key": key}, timeout=30)
        except httpx.HTTPError as exc:
            raise AssertionError(f"submit {key}: no answer ({exc})") from exc

    def recovered(self) -> dict[str, Any]:
        """After the fault: /health is 200 again and new work runs; returns the new task."""
        wait_for(lambda: self.coord.http.get("/health").status_code == 200, 30, "/health back to 200")
        fresh = self.coord.submit(self.task_spec())
        done = self.coord.wait_state(fresh["id"], {"succeeded", "failed"}, timeout=60)
        assert done["state"] == "succeeded", done
        return done

    def check_intact(self, before: dict[str, dict[str, Any]], accepted: list[str]) -> str:
        """Stopped coordinator: the file passes integrity_check and holds everything it accepted."""
        self.agent.stop()
        assert self.coord.proc is not None
        self.coord.proc.stop()
        con = sqlite3.connect(self.db)
        try:
            integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            con.close()
        assert integrity == "ok", integrity
        self.coord.start()  # read back through the API, as a user would
        now = all_tasks(self.coord)
        for task_id, record in before.items():
            assert {k: now[task_id][k] for k in KEPT} == record, task_id
        lost = [i for i in accepted if i not in now]
        assert not lost, f"accepted during the fault but gone: {lost}"
        return integrity

    def stop(self) -> None:
        self.agent.stop()
        self.coord.stop()


def check_log_clean(coord: Coordinator) -> int:
    """The coordinator says what failed in one line, not with a stack trace per request."""
    log = coord.proc.output() if coord.proc is not None else ""
    assert "Traceback" not in log, log[log.index("Traceback") - 300:][:3000]
    return sum("database" in line and ("ERROR" in line or "WARNING" in line) for line in log.splitlines())


def test_disk_full_answers_503_keeps_data_and_recovers(tmp_path: Path, small_disk: disk.SmallDisk,
                                                        report: Report) -> None:
    fleet = Fleet(tmp_path)
    try:
        fleet.coord.start()
        fleet.agent.start()
        before = fleet.preload(20)
        running = fleet.start_running(2, seconds=3)
        filled = small_disk.fill()
        fault_at = time.monotonic()
        report(f"{len(before)} tasks done and 2 running; then filled the {small_disk.size_mb} MiB data dir "
               f"({filled >> 10} KiB of filler)")

        # writes go on while SQLite has room in its WAL; the first one that needs a new page fails
        accepted, refused = [], None
        for i in range(400):
            resp = fleet.submit_raw(f"full-{i}", pad=20_000)
            if resp.status_code != 201:
                refused = resp
                break
            accepted.append(resp.json()["id"])
        assert refused is not None, "400 submits of 20 KB fitted on a full disk"
        message = fleet.check_unavailable(refused, "full", "disk")
        health = fleet.coord.http.get("/health")
        assert health.status_code == 503 and "full" in str(health.json()["database"]), health.text
        assert fleet.coord.http.get(f"/api/v1/tasks/{running[0]}").status_code == 200  # reads still work
        report(f"{len(accepted)} padded submits still fitted in SQLite's WAL, then: 503 {message!r}; /health 503 "
               f"{health.json()['database']!r}; reads still 200")

        # keep it full past the lease TTL while the running tasks end and try to report
        codes: dict[int, int] = {}
        while time.monotonic() - fault_at < TTL_S + 4:
            resp = fleet.submit_raw(f"during-{len(codes)}-{time.monotonic()}")
            codes[resp.status_code] = codes.get(resp.status_code, 0) + 1
            if resp.status_code == 503:
                fleet.check_unavailable(resp, "full", "disk")
            else:
                accepted.append(resp.json()["id"])
            time.sleep(0.25)
        assert 500 not in codes, codes
        small_disk.free()
        cleared_at = time.monotonic()

        fresh = fleet.recovered()
        recovered_in = time.monotonic() - cleared_at
        for task_id in running:
            done = fleet.coord.wait_state(task_id, {"succeeded", "failed"}, timeout=60)
            assert done["state"] == "succeeded" and done["attempts"] == 1, done["attempt_history"]
        counts = fleet.ledger.counts()
        ids = [*before, *running, fresh["id"]]
        missing, twice, _ = exactly_once(counts, ids)
        report(f"held full {cleared_at - fault_at:.1f}s (> TTL {TTL_S:g}s): submits answered {codes}; freed the "
               f"disk: /health 200 and a new task ran {recovered_in:.1f}s later; the 2 tasks that ended during "
               f"the fault succeeded with 1 attempt; ledger {len(missing)} missing / {len(twice)} duplicates")
        assert not missing and not twice, (missing, twice)
        warnings = check_log_clean(fleet.coord)
        integrity = fleet.check_intact(before, accepted)
        report(f"integrity_check {integrity!r}; {len(before)} earlier tasks unchanged, {len(accepted)} accepted "
               f"during the fault all stored; coordinator log: {warnings} one-line database errors, no traceback")
    finally:
        fleet.stop()


def test_read_only_disk_answers_503_keeps_data_and_recovers(tmp_path: Path, report: Report) -> None:
    why = disk.available(tmp_path) or disk.Ext4Disk.missing()
    if why:
        prerequisites.missing(why)
    ext4 = disk.Ext4Disk(tmp_path / "coordinator", tmp_path / "data.img")
    fleet = Fleet(tmp_path)
    try:
        ext4.create()
        fleet.coord.start()
        fleet.agent.start()
        before = fleet.preload(20)
        running = fleet.start_running(2, seconds=3)
        # SQLite runs with synchronous=NORMAL: a commit is safe from a killed process at once, and on the
        # disk once the kernel writes it back (within ~30 s) or at a checkpoint. sync() stands for that
        # time having passed for the work above; the submits below are the last seconds before the
        # failure, whose fate is reported (they must only never be half there)
        os.sync()
        late = []
        for i in range(5):
            spec = {**fleet.task_spec(), "resources": {"labels": {"site": "nowhere"}}}  # stays queued
            late.append(fleet.coord.submit(spec, headers={"Idempotency-Key": f"late-{i}"})["id"])
        options = ext4.fail()
        fault_at = time.monotonic()
        assert {"ro", "emergency_ro"} & set(options.split(",")), options
        report(f"{len(before)} tasks done, 2 running, {len(late)} queued just before the fault; then an ext4 error "
               f"on the data dir's disk: the kernel turned it read-only under the running coordinator ({options})")

        resp = fleet.submit_raw("ro-0")
        message = fleet.check_unavailable(resp, "read", "disk")
        health = fleet.coord.http.get("/health")
        assert health.status_code == 503, health.text
        assert fleet.coord.http.get(f"/api/v1/tasks/{running[0]}").status_code == 200
        report(f"submit: 503 {message!r}; /health 503 {health.json()['database']!r}; reads still 200")

        codes: dict[int, int] = {}
        while time.monotonic() - fault_at < TTL_S + 4:
            resp = fleet.submit_raw(f"ro-{sum(codes.values())}")
            codes[resp.status_code] = codes.get(resp.status_code, 0) + 1
            if resp.status_code == 503:
                fleet.check_unavailable(resp, "read", "disk")
            time.sleep(0.25)
        assert codes == {503: sum(codes.values())}, codes
        warnings = check_log_clean(fleet.coord)

        # a restart while the disk is still read-only: a clear refusal, not a crash with a stack trace
        assert fleet.coord.proc is not None
        fleet.coord.proc.stop()
        mark = len(fleet.coord.proc.output())
        fleet.coord.start(wait=False)
        code = fleet.coord.proc.proc.wait(60)
        startup = fleet.coord.proc.output()[mark:]
        said = "".join(startup.splitlines())  # the CLI wraps its message at the terminal's width
        assert code != 0 and "read-only" in said.lower() and str(fleet.db) in said, startup[-3000:]
        assert "Traceback" not in startup, startup[-3000:]
        said = said[said.find("error:"):]
        report(f"restarted while read-only: exit code {code}, it said {said!r}")

        fsck = ext4.repair()
        repaired_at = time.monotonic()
        fleet.coord.start()
        fresh = fleet.recovered()
        for task_id in running:
            done = fleet.coord.wait_state(task_id, {"succeeded", "failed"}, timeout=60)
            assert done["state"] == "succeeded" and done["attempts"] == 1, done["attempt_history"]
        counts = fleet.ledger.counts()
        missing, twice, _ = exactly_once(counts, [*before, *running, fresh["id"]])
        report(f"read-only for {repaired_at - fault_at:.1f}s: submits answered {codes}, {warnings} one-line database "
               f"errors in the log, no traceback; unmounted, e2fsck ({fsck!r}), mounted, started: a new task ran "
               f"{time.monotonic() - repaired_at:.1f}s later; the 2 tasks that ended during the fault succeeded "
               f"with 1 attempt; ledger {len(missing)} missing / {len(twice)} duplicates")
        assert not missing and not twice, (missing, twice)
        integrity = fleet.check_intact(before, [])
        now = all_tasks(fleet.coord)
        kept = [i for i in late if i in now]
        assert all(now[i]["state"] == "queued" and now[i]["spec"]["resources"]["labels"] == {"site": "nowhere"}
                   for i in kept), [now[i] for i in kept]
        report(f"integrity_check {integrity!r}; {len(before)} earlier tasks and the 2 running ones intact; of the "
               f"{len(late)} submits acknowledged in the last moment before the disk failed, {len(kept)} survived "
               f"whole and {len(late) - len(kept)} were lost (not yet written back: synchronous=NORMAL)")
    finally:
        fleet.stop()
        ext4.unmount()


def test_idle_coordinator_reports_healthy_again_once_the_disk_has_room(
    tmp_path: Path, small_disk: disk.SmallDisk, report: Report,
) -> None:
    """A readiness probe that keeps seeing 503 keeps users away, so no write would ever clear it:
    /health must find out by itself that the disk has room again."""
    coord = Coordinator(tmp_path, heartbeat_s=HEARTBEAT_S, lease_ttl_s=TTL_S)
    try:
        coord.start()
        small_disk.fill()
        resp = coord.http.post("/api/v1/tasks", json={"taskType": "command", "command": "true", "env": {
            "PAD": "x" * 50_000}})
        assert resp.status_code == 503, resp.text
        assert coord.http.get("/health").status_code == 503
        small_disk.free()
        freed = time.monotonic()
        wait_for(lambda: coord.http.get("/health").status_code == 200, 15, "/health 200 with no other traffic",
                 interval=0.5)
        report(f"idle coordinator, disk full: submit 503, /health 503; disk freed: /health 200 after "
               f"{time.monotonic() - freed:.1f}s with no other request")
    finally:
        coord.stop()
