"""The store's contract: what every backend of the ``Store`` seam must do (huey's StorageTests style).

``StoreContract`` holds the tests and knows only the seam (store/base.py); a backend's test class
says how to make one on a fresh data dir. SQLite, on a real file, is the one backend today; a
PostgreSQL backend adds a class below and runs the same tests. Times are passed in (``now``), never
slept on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mloc_server.store import SqliteStore, Store, StoreTx
from mloc_server.store.records import (
    Claim,
    Dependency,
    DependencyState,
    NewPoint,
    NewTask,
    PendingUpload,
    PointBatch,
    StoredAgent,
    StoredMirror,
    StoredPipeline,
    StoredToken,
)
from mloc_shared.errors import Conflict, NotFound
from mloc_shared.protocol import Gpu, HeldModel, Inventory

T0 = 1_700_000_000.0  # a wall-clock instant the tests count from


def new_task(task_id: str, *, owner: str = "ann", task_type: str = "command", created_at: float = T0,
             max_attempts: int = 3, key: str | None = None, body: str = '{"taskType": "command"}') -> NewTask:
    return NewTask(id=task_id, name=f"name-{task_id}", task_type=task_type, owner=owner, spec=body, priority=0,
                   created_at=created_at, max_attempts=max_attempts, gpus_required=1, requirement='{"gpus": 1}',
                   idempotency_key=key, body_hash=f"hash-of-{body}" if key else None)


def agent(agent_id: str = "a1", **changes: object) -> StoredAgent:
    fields: dict[str, object] = dict(
        id=agent_id, name=f"box-{agent_id}", credential_hash=f"cred-{agent_id}", labels={"zone": "eu"},
        inventory=Inventory(hostname="h", cpu_count=8, gpus=[Gpu(index=0, uuid="GPU-0", name="A100",
                                                               memory_total_mb=81920)]),
        task_types=["command", "sft"], max_tasks=2, state="active", version="1.0", registered_at=T0, last_seen=T0,
    )
    return StoredAgent(**(fields | changes))


def token(token_id: str, kind: str = "user", **changes: object) -> StoredToken:
    fields: dict[str, object] = dict(id=token_id, kind=kind, token_hash=f"hash-{token_id}", user="ann", role="user",
                                     created_at=T0, expires_at=None, max_uses=None, uses=0, revoked=False, note="")
    return StoredToken(**(fields | changes))


def upload(upload_id: str, task_id: str, name: str, *, kind: str = "artifact", step: int | None = None,
           size: int = 10) -> PendingUpload:
    return PendingUpload(id=upload_id, task_id=task_id, epoch=1, attempt=1, name=name, kind=kind, step=step,
                         size=size, storage_key=f"tasks/{task_id}/{upload_id}/{name}", multipart_id=None, created_at=T0)


class StoreUnderTest:
    """An open store of the backend a subclass names (``make_store``), for each test: the base of every
    contract suite (this one, tests/test_gangs_store.py)."""

    def make_store(self, data_dir: Path) -> Store:
        raise NotImplementedError

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[Store]:
        s = self.make_store(tmp_path)
        await s.open()
        try:
            yield s
        finally:
            await s.close()


class StoreContract(StoreUnderTest):
    """Every backend passes these. A subclass supplies ``make_store`` for its backend."""

    async def insert(self, store: Store, *tasks: NewTask) -> None:
        await store.write(lambda tx: [tx.insert_task(t) for t in tasks])

    async def claim(self, store: Store, task_id: str, now: float = T0 + 10, agent_id: str = "a1",
                    gpus: tuple[int, ...] = (0,)) -> int:
        """Claim one queued task; returns the lease's epoch."""
        (claimed,) = await store.write(lambda tx: tx.claim_tasks(agent_id, [Claim(task_id, gpus)], "poll-1", now))
        return claimed.epoch

    # -- transactions and durability ----------------------------------------------------------

    async def test_a_fresh_store_is_healthy_and_empty(self, store: Store) -> None:
        assert store.healthy and store.last_error is None
        assert await store.get_task("nope") is None
        assert await store.active_tasks() == [] and await store.all_agents() == []
        assert await store.count_tasks_by_state() == {}

    async def test_writes_survive_a_reopen(self, tmp_path: Path) -> None:
        first = self.make_store(tmp_path)
        await first.open()
        await self.insert(first, new_task("t1"))
        await first.close()
        again = self.make_store(tmp_path)
        await again.open()
        try:
            task = await again.get_task("t1")
            assert task is not None and task.state == "queued"
        finally:
            await again.close()

    async def test_a_failing_write_undoes_only_itself_among_writes_committed_together(self, store: Store) -> None:
        def failing(tx: StoreTx) -> None:
            tx.insert_task(new_task("doomed"))
            raise NotFound("changed my mind")

        results = await asyncio.gather(
            store.write(lambda tx: tx.insert_task(new_task("kept-1"))), store.write(failing),
            store.write(lambda tx: tx.insert_task(new_task("kept-2"))), return_exceptions=True)
        assert results[0] == ("kept-1", True) and results[2] == ("kept-2", True)
        assert isinstance(results[1], NotFound)  # an MlocError passes through as itself
        assert await store.get_task("doomed") is None
        assert {t.id for t in await store.active_tasks()} == {"kept-1", "kept-2"}

    async def test_a_transaction_reads_its_own_writes(self, store: Store) -> None:
        def submit(tx: StoreTx):
            tx.insert_task(new_task("t1"))
            return tx.get_task("t1")

        seen = await store.write(submit)
        assert seen is not None and seen.id == "t1" and seen.state == "queued"

    # -- tasks --------------------------------------------------------------------------------

    async def test_an_inserted_task_is_queued_with_its_spec_and_no_lease(self, store: Store) -> None:
        await self.insert(store, new_task("t1", owner="bob", task_type="sft", body='{"taskType": "sft"}'))
        t = await store.get_task("t1")
        assert t is not None
        assert (t.owner, t.task_type, t.state, t.spec) == ("bob", "sft", "queued", '{"taskType": "sft"}')
        assert (t.epoch, t.attempts, t.max_attempts, t.agent_id, t.cancel_requested) == (0, 0, 3, None, False)
        assert t.created_at == t.queued_at == t.updated_at == T0 and t.started_at is None
        assert json.loads(t.requirement) == {"gpus": 1} and json.loads(t.lease_gpus) == []

    async def test_a_reused_idempotency_key_returns_the_first_task_or_conflicts(self, store: Store) -> None:
        assert await store.write(lambda tx: tx.insert_task(new_task("t1", key="k"))) == ("t1", True)
        assert await store.write(lambda tx: tx.insert_task(new_task("t2", key="k"))) == ("t1", False)
        with pytest.raises(Conflict) as err:
            await store.write(lambda tx: tx.insert_task(new_task("t3", key="k", body='{"other": 1}')))
        assert err.value.field == "Idempotency-Key"
        assert await store.get_task("t2") is None and await store.get_task("t3") is None
        assert await store.write(lambda tx: (tx.keyed_task("k"), tx.keyed_task("unused"))) == ("t1", None)

    async def test_a_claim_leases_a_queued_task_once(self, store: Store) -> None:
        await self.insert(store, new_task("t1"))
        claimed = await store.write(lambda tx: tx.claim_tasks("a1", [Claim("t1", (0, 2))], "poll-1", T0 + 5))
        assert [(c.task_id, c.epoch, c.attempt, c.spec, c.started_at) for c in claimed] == [
            ("t1", 1, 1, '{"taskType": "command"}', T0 + 5)]
        t = await store.get_task("t1")
        assert t is not None and (t.state, t.agent_id, t.claim_id, t.epoch) == ("running", "a1", "poll-1", 1)
        assert json.loads(t.lease_gpus) == [0, 2] and t.started_at == T0 + 5
        again = await store.write(lambda tx: tx.claim_tasks("a2", [Claim("t1", (0,))], "poll-2", T0 + 6))
        assert again == []  # compare-and-set: no longer queued
        (attempt,) = await store.task_attempts("t1")
        assert (attempt.attempt, attempt.epoch, attempt.agent_id, attempt.ended_at) == (1, 1, "a1", None)
        assert json.loads(attempt.gpus) == [0, 2]

    async def test_a_finish_at_the_current_epoch_wins_and_a_stale_one_changes_nothing(self, store: Store) -> None:
        await self.insert(store, new_task("t1"))
        epoch = await self.claim(store, "t1")
        stale = await store.write(lambda tx: tx.finish_task("t1", epoch + 1, "succeeded", T0 + 20))
        assert stale is False
        assert (await store.get_task("t1")).state == "running"  # type: ignore[union-attr]
        won = await store.write(lambda tx: tx.finish_task("t1", epoch, "failed", T0 + 30, result={"loss": 0.5},
                                                          error="boom", exit_code=3, progress={"step": 7}))
        t = await store.get_task("t1")
        assert won and t is not None
        assert (t.state, t.error, t.exit_code, t.finished_at) == ("failed", "boom", 3, T0 + 30)
        assert json.loads(t.result or "") == {"loss": 0.5} and json.loads(t.progress or "") == {"step": 7}
        (attempt,) = await store.task_attempts("t1")
        assert (attempt.outcome, attempt.error, attempt.ended_at) == ("failed", "boom", T0 + 30)
        assert await store.write(lambda tx: tx.finish_task("t1", epoch, "succeeded", T0 + 40)) is False  # final

    async def test_a_lost_lease_requeues_until_attempts_run_out(self, store: Store) -> None:
        await self.insert(store, new_task("t1", max_attempts=2))
        first = await self.claim(store, "t1")
        assert await store.write(lambda tx: tx.requeue_task("t1", first + 1, "late", T0, T0)) is None  # stale
        state = await store.write(lambda tx: tx.requeue_task("t1", first, "agent vanished", T0 + 60, T0 + 20))
        t = await store.get_task("t1")
        assert state == "queued" and t is not None
        assert (t.state, t.not_before, t.queued_at, t.claim_id) == ("queued", T0 + 60, T0 + 20, None)
        assert t.error == "attempt 1: agent vanished" and json.loads(t.lease_gpus) == []
        second = await self.claim(store, "t1", now=T0 + 70)
        assert second == first + 1
        state = await store.write(lambda tx: tx.requeue_task("t1", second, "agent vanished", T0 + 90, T0 + 80))
        t = await store.get_task("t1")
        assert state == "failed" and t is not None and t.finished_at == T0 + 80
        assert "gave up after 2 attempt(s)" in (t.error or "")
        outcomes = [(a.attempt, a.epoch, a.outcome) for a in await store.task_attempts("t1")]
        assert outcomes == [(1, first, "lost"), (2, second, "lost")]

    async def test_cancelling_a_queued_task_ends_it_and_a_running_one_is_marked(self, store: Store) -> None:
        await self.insert(store, new_task("queued"), new_task("running"))
        epoch = await self.claim(store, "running")
        assert await store.write(lambda tx: tx.request_cancel("queued", T0 + 1)) is False  # not running
        assert await store.write(lambda tx: tx.cancel_queued("running", T0 + 1)) is False  # not queued
        assert await store.write(lambda tx: tx.cancel_queued("queued", T0 + 2)) is True
        assert await store.write(lambda tx: tx.request_cancel("running", T0 + 3)) is True
        cancelled, marked = await store.get_task("queued"), await store.get_task("running")
        assert cancelled is not None and (cancelled.state, cancelled.finished_at) == ("cancelled", T0 + 2)
        assert marked is not None and (marked.state, marked.cancel_requested) == ("running", True)
        # a lost lease of a task asked to cancel ends it rather than queueing it again
        assert await store.write(lambda tx: tx.requeue_task("running", epoch, "gone", T0 + 9, T0 + 4)) == "cancelled"

    async def test_a_blocked_task_keeps_its_edges_and_moves_on_only_from_blocked(self, store: Store) -> None:
        parent = new_task("p1", created_at=T0)
        child = new_task("c1", created_at=T0 + 1)
        child.state, child.blocked_reason = "blocked", "waits for task p1"
        child.depends = [Dependency("p1", "succeeded"), Dependency("gone", "finished")]
        other = new_task("c2", created_at=T0 + 2)
        other.state, other.depends = "blocked", [Dependency("p1", "failed")]
        await self.insert(store, parent, child, other)
        row = await store.get_task("c1")
        assert row is not None and (row.state, row.blocked_reason) == ("blocked", "waits for task p1")
        assert await store.write(lambda tx: tx.blocked_dependents("p1")) == ["c1", "c2"]  # oldest first
        deps = await store.write(lambda tx: tx.task_dependencies("c1"))
        assert deps == [DependencyState("p1", "succeeded", "name-p1", "queued"),
                        DependencyState("gone", "finished", "", "cancelled")]  # a parent gone reads as cancelled
        assert await store.dependencies_of(["c1"]) == {"c1": [{"task": "p1", "condition": "succeeded"},
                                                                {"task": "gone", "condition": "finished"}]}
        assert await store.blocked_tasks() == ["c1", "c2"]
        assert await store.write(lambda tx: tx.unblock("p1", T0 + 5)) is False  # not blocked
        assert await store.write(lambda tx: tx.unblock("c1", T0 + 5)) is True
        assert await store.write(lambda tx: tx.cancel_blocked("c1", "late", T0 + 6)) is False  # queued now
        assert await store.write(lambda tx: tx.cancel_blocked("c2", "p1 succeeded", T0 + 6)) is True
        queued, cancelled = await store.get_task("c1"), await store.get_task("c2")
        assert queued is not None
        assert (queued.state, queued.queued_at, queued.blocked_reason) == ("queued", T0 + 5, None)
        assert cancelled is not None and (cancelled.state, cancelled.error) == ("cancelled", "p1 succeeded")
        assert await store.write(lambda tx: tx.blocked_dependents("p1")) == []

    async def test_task_refs_resolve_ids_then_the_newest_task_named_so_of_that_owner(self, store: Store) -> None:
        named = [new_task("old", created_at=T0, body='{"name": "prep"}'),
                 new_task("new", created_at=T0 + 1, body='{"name": "prep"}'),
                 new_task("bobs", owner="bob", created_at=T0 + 2, body='{"name": "prep"}'),
                 new_task("typed", created_at=T0 + 3, body='{"taskType": "command"}')]  # named after its type only
        for t in named:
            t.name = "prep"
        await self.insert(store, *named)
        assert await store.write(lambda tx: tx.find_task_ref("ann", "old")) == ("old", "prep", "queued")
        assert await store.write(lambda tx: tx.find_task_ref("ann", "prep")) == ("new", "prep", "queued")
        assert await store.write(lambda tx: tx.find_task_ref("ann", "bobs")) is None  # another owner's id
        assert await store.write(lambda tx: tx.find_task_ref("bob", "prep")) == ("bobs", "prep", "queued")

    async def test_a_pipeline_lists_its_tasks_in_step_order_and_counts_a_sweeps_slots(self, store: Store) -> None:
        pipe = StoredPipeline(id="pl", name="lr", kind="sweep", owner="ann", team=None, created_at=T0, max_parallel=1)
        steps = []
        for i in range(3):
            t = new_task(f"s{i}", created_at=T0 + 3 - i)  # created in reverse: step order wins
            t.pipeline_id, t.step, t.step_index, t.sweep_values = "pl", f"lr[{i}]", i, f'{{"x": {i}}}'
            t.state = "queued" if i == 0 else "blocked"
            steps.append(t)

        def write(tx) -> None:
            tx.insert_pipeline(pipe)
            for t in steps:
                tx.insert_task(t)

        await store.write(write)
        assert await store.get_pipeline("pl") == pipe
        rows = await store.pipeline_tasks(["pl"])
        assert [(r.id, r.step, r.sweep_values) for r in rows] == [("s0", "lr[0]", '{"x": 0}'),
                                                                  ("s1", "lr[1]", '{"x": 1}'),
                                                                  ("s2", "lr[2]", '{"x": 2}')]
        assert await store.write(lambda tx: tx.pipeline_slots("s2")) == ("pl", 1, 1, ["s1", "s2"])
        await self.insert(store, new_task("loose"))
        assert await store.write(lambda tx: tx.pipeline_slots("loose")) is None
        listed, total = await store.list_pipelines("ann", 1, 10)
        assert [p.id for p in listed] == ["pl"] and total == 1
        assert await store.list_pipelines("bob", 1, 10) == ([], 0)

    async def test_progress_is_saved_only_for_the_current_epoch(self, store: Store) -> None:
        await self.insert(store, new_task("t1"), new_task("t2"))
        e1, e2 = await self.claim(store, "t1"), await self.claim(store, "t2")
        await store.write(lambda tx: tx.save_progress([("t1", e1, {"step": 3}), ("t2", e2 + 1, {"step": 9})]))
        assert json.loads((await store.get_task("t1")).progress or "") == {"step": 3}  # type: ignore[union-attr]
        assert (await store.get_task("t2")).progress is None  # type: ignore[union-attr]

    async def test_progress_history_keeps_a_point_per_step_and_since_reads_the_newer(self, store: Store) -> None:
        def pts(steps: range, t0: float) -> list[NewPoint]:
            return [NewPoint(step=s, t=t0 + s, loss=1.0 / s, learning_rate=None, metrics={"kl": s / 10})
                    for s in steps]

        counts = await store.write(lambda tx: tx.add_progress_points(
            [PointBatch("t1", 1, pts(range(1, 6), T0)), PointBatch("t2", 1, pts(range(1, 3), T0))]))
        assert counts == {("t1", 1): 5, ("t2", 1): 2}
        # step 5 sent again (a later heartbeat, a new loss) replaces its point; attempt 2 starts its own curve
        again = [NewPoint(step=5, t=T0 + 50, loss=0.01, learning_rate=None, metrics=None)]
        counts = await store.write(lambda tx: tx.add_progress_points(
            [PointBatch("t1", 1, again, counts[("t1", 1)]), PointBatch("t1", 2, pts(range(3, 5), T0 + 100))]))
        assert counts == {("t1", 1): 6, ("t1", 2): 2}  # an over-estimate from a caller's count is allowed
        points = await store.progress_points("t1")
        assert [(p.attempt, p.step) for p in points] == [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (2, 3), (2, 4)]
        assert points[4].loss == 0.01 and points[4].metrics is None and points[0].metrics == {"kl": 0.1}
        newer = await store.progress_points("t1", since=T0 + 4)
        assert [(p.attempt, p.step) for p in newer] == [(1, 5), (2, 3), (2, 4)]
        assert await store.progress_points("t1", since=T0 + 104) == []
        assert await store.progress_points("nope") == []

    async def test_progress_history_is_thinned_to_a_bound_keeping_the_recent_steps(self, store: Store) -> None:
        from mloc_server.store.repo.progress import MAX_POINTS

        n = MAX_POINTS + 500
        stored = None
        for start in range(1, n + 1, 100):  # as flushes would write them: 100 points at a time
            batch = [NewPoint(s, T0 + s, float(s), None, None) for s in range(start, start + 100)]
            stored = (await store.write(lambda tx, b=batch, c=stored: tx.add_progress_points(
                [PointBatch("t1", 1, b, c)])))[("t1", 1)]
        points = await store.progress_points("t1")
        assert len(points) == stored <= MAX_POINTS
        steps = [p.step for p in points]
        assert steps[0] == 1 and steps[-1] == n  # the curve still spans the whole run
        assert steps[-MAX_POINTS // 4:] == list(range(n - MAX_POINTS // 4 + 1, n + 1))  # recent steps all kept
        assert steps == sorted(steps) and len(steps) > MAX_POINTS // 2

    async def test_listing_filters_pages_newest_first_and_counts_all_matches(self, store: Store) -> None:
        await self.insert(store, *[new_task(f"t{i}", owner="ann" if i % 2 else "bob", created_at=T0 + i,
                                            task_type="sft" if i < 2 else "command") for i in range(5)])
        await self.claim(store, "t4")
        page, total = await store.list_tasks(state=None, owner=None, task_type=None, page=1, page_size=2)
        assert [t.id for t in page] == ["t4", "t3"] and total == 5
        page, total = await store.list_tasks(state=None, owner=None, task_type=None, page=3, page_size=2)
        assert [t.id for t in page] == ["t0"] and total == 5
        page, total = await store.list_tasks(state="queued", owner="bob", task_type=None, page=1, page_size=10)
        assert [t.id for t in page] == ["t2", "t0"] and total == 2
        page, total = await store.list_tasks(state=("queued", "running"), owner=None, task_type="command", page=1,
                                             page_size=10)
        assert [t.id for t in page] == ["t4", "t3", "t2"] and total == 3
        assert sorted(t.id for t in await store.active_tasks()) == ["t0", "t1", "t2", "t3", "t4"]

    async def test_counts_and_finished_tasks_for_metrics(self, store: Store) -> None:
        await self.insert(store, new_task("t1"), new_task("t2", owner="bob"), new_task("t3"))
        e1, e2 = await self.claim(store, "t1", now=T0 + 10), await self.claim(store, "t2", now=T0 + 10)
        await store.write(lambda tx: tx.finish_task("t2", e2, "failed", T0 + 50))
        await store.write(lambda tx: tx.finish_task("t1", e1, "succeeded", T0 + 40))
        assert await store.count_tasks_by_state() == {"succeeded": 1, "failed": 1, "queued": 1}
        assert await store.count_tasks_by_state("ann") == {"succeeded": 1, "queued": 1}
        done = await store.finished_since(T0)
        assert [(f.task_type, f.state, f.started_at, f.finished_at) for f in done] == [
            ("command", "succeeded", T0 + 10, T0 + 40), ("command", "failed", T0 + 10, T0 + 50)]
        assert [f.finished_at for f in await store.finished_since(T0 + 40)] == [T0 + 50]
        assert len(await store.finished_since(T0, limit=1)) == 1
        assert [t.id for t in await store.active_tasks()] == ["t3"]

    async def test_usage_counts_gpu_hours_until_now_for_running_attempts(self, store: Store) -> None:
        await self.insert(store, new_task("t1", created_at=T0), new_task("t2", owner="bob", created_at=T0 + 100))
        e1 = await self.claim(store, "t1", now=T0 + 10, gpus=(0, 1))  # waited 10 s, 2 GPUs for 1800 s
        await store.write(lambda tx: tx.finish_task("t1", e1, "succeeded", T0 + 1810))
        await self.claim(store, "t2", now=T0 + 130)  # waited 30 s, 1 GPU, still running at now
        usage = await store.usage(None, None, None, now=T0 + 130 + 3600)
        assert usage.tasks_by_state == {"succeeded": 1, "running": 1} and usage.tasks_by_type == {"command": 2}
        assert usage.total_tasks == 2 and usage.gpu_hours == 2.0
        by_user = {u.user: (u.tasks, u.gpu_hours, u.avg_queue_wait_s) for u in usage.users}
        assert by_user == {"ann": (1, 1.0, 10.0), "bob": (1, 1.0, 30.0)}
        window = await store.usage("bob", T0 + 50, T0 + 200, now=T0 + 130 + 3600)
        assert window.total_tasks == 1 and [u.user for u in window.users] == ["bob"]
        assert (await store.usage(None, T0 + 500, None, now=T0)).total_tasks == 0

    async def test_attempt_usage_lists_open_and_recent_attempts_with_owner_and_team(self, store: Store) -> None:
        """Fair share rebuilds decayed usage from these at start (services/recovery.py)."""
        await self.insert(store, new_task("t1"), NewTask(**{**vars(new_task("t2", owner="bob")), "team": "red"}))
        e1 = await self.claim(store, "t1", now=T0 + 10, gpus=(0, 1))
        await store.write(lambda tx: tx.finish_task("t1", e1, "succeeded", T0 + 100))
        await self.claim(store, "t2", now=T0 + 20)
        rows = sorted(await store.attempt_usage(T0), key=lambda a: a.owner)
        assert [(a.owner, a.team, a.gpu_count, a.started_at, a.ended_at) for a in rows] == [
            ("ann", None, 2, T0 + 10, T0 + 100), ("bob", "red", 1, T0 + 20, None)]
        assert [a.owner for a in await store.attempt_usage(T0 + 100)] == ["bob"]  # ended at or before: left out
        assert (await store.get_task("t2")).team == "red"  # type: ignore[union-attr]

    async def test_a_priority_change_is_kept_in_the_spec_of_a_queued_or_running_task_only(self, store: Store) -> None:
        await self.insert(store, new_task("t1"), new_task("t2"))
        assert await store.write(lambda tx: tx.set_priority("t1", "high", None, T0 + 1)) is True
        row = await store.get_task("t1")
        assert row is not None and json.loads(row.spec)["priority_class"] == "high" and row.priority == 0
        epoch = await self.claim(store, "t2")
        assert await store.write(lambda tx: tx.set_priority("t2", None, 7, T0 + 20)) is True
        row = await store.get_task("t2")
        assert row is not None and json.loads(row.spec) == {"taskType": "command", "priority": 7} and row.priority == 7
        await store.write(lambda tx: tx.finish_task("t2", epoch, "succeeded", T0 + 30))
        assert await store.write(lambda tx: tx.set_priority("t2", "low", None, T0 + 40)) is False
        assert await store.write(lambda tx: tx.set_priority("ghost", "low", None, T0 + 40)) is False

    # -- agents ---------------------------------------------------------------------------------

    async def test_an_agent_round_trips_and_a_re_registration_keeps_its_identity(self, store: Store) -> None:
        await store.write(lambda tx: tx.save_agent(agent()))
        (stored,) = await store.all_agents()
        assert stored == agent()
        again = agent(name="renamed", credential_hash="cred-new", labels={"zone": "us"}, task_types=["rag"],
                      max_tasks=5, state="draining", version="2.0", registered_at=T0 + 500, last_seen=T0 + 500)
        await store.write(lambda tx: tx.save_agent(again))
        (stored,) = await store.all_agents()
        assert (stored.name, stored.state, stored.registered_at) == ("box-a1", "active", T0)  # kept
        assert (stored.credential_hash, stored.labels, stored.task_types, stored.max_tasks, stored.version,
                stored.last_seen) == ("cred-new", {"zone": "us"}, ["rag"], 5, "2.0", T0 + 500)

    async def test_agent_state_and_last_seen(self, store: Store) -> None:
        await store.write(lambda tx: [tx.save_agent(agent("a1")), tx.save_agent(agent("a2"))])
        assert await store.write(lambda tx: tx.set_agent_state("a1", "draining")) is True
        assert await store.write(lambda tx: tx.set_agent_state("ghost", "draining")) is False
        await store.write(lambda tx: tx.touch_agents([(T0 + 7, "a2"), (T0 + 9, "ghost")]))
        by_id = {a.id: a for a in await store.all_agents()}
        assert (by_id["a1"].state, by_id["a1"].last_seen) == ("draining", T0)
        assert (by_id["a2"].state, by_id["a2"].last_seen) == ("active", T0 + 7)

    async def test_held_models_a_poll_reported_replace_the_stored_inventory(self, store: Store) -> None:
        await store.write(lambda tx: [tx.save_agent(agent("a1")), tx.save_agent(agent("a2"))])
        first = agent("a1").inventory
        held = first.model_copy(update={"models": [HeldModel(id="org/x", bytes=123)], "disk_free_bytes": 9 << 30})
        await store.write(lambda tx: tx.save_inventories([(held, "a1"), (held, "ghost")]))
        by_id = {a.id: a for a in await store.all_agents()}
        assert by_id["a1"].inventory == held and by_id["a1"].inventory.gpus == first.gpus
        assert by_id["a2"].inventory.models == [] and by_id["a2"].inventory.disk_free_bytes is None

    async def test_an_attempt_records_whether_its_agent_held_the_model(self, store: Store) -> None:
        await self.insert(store, new_task("held"), new_task("fetched"), new_task("none"))
        claims = [Claim("held", (0,), True), Claim("fetched", (1,), False), Claim("none", (2,))]
        await store.write(lambda tx: tx.claim_tasks("a1", claims, "poll-1", T0 + 10))
        cached = {t: [a.model_cached for a in await store.task_attempts(t)] for t in ("held", "fetched", "none")}
        assert cached == {"held": [True], "fetched": [False], "none": [None]}

    async def test_a_deleted_agent_is_gone_and_its_name_free(self, store: Store) -> None:
        await store.write(lambda tx: [tx.save_agent(agent("a1")), tx.save_agent(agent("a2"))])
        assert await store.write(lambda tx: tx.delete_agent("a1")) is True
        assert await store.write(lambda tx: tx.delete_agent("a1")) is False  # once
        assert await store.write(lambda tx: tx.delete_agent("ghost")) is False
        assert [a.id for a in await store.all_agents()] == ["a2"]
        # a new identity under the old name and credential hash (the unique one) is accepted
        await store.write(lambda tx: tx.save_agent(agent("a3", name="box-a1", credential_hash="cred-a1")))
        assert sorted((a.id, a.name) for a in await store.all_agents()) == [("a2", "box-a2"), ("a3", "box-a1")]

    # -- tokens ---------------------------------------------------------------------------------

    async def test_tokens_are_found_by_hash_and_listed_oldest_first(self, store: Store) -> None:
        await store.write(lambda tx: [tx.insert_token(token("new", created_at=T0 + 5)), tx.insert_token(token("old"))])
        assert await store.token_by_hash("hash-new") == token("new", created_at=T0 + 5)
        assert await store.token_by_hash("unknown") is None
        assert [t.id for t in await store.list_tokens()] == ["old", "new"]
        assert await store.write(lambda tx: tx.revoke_token("old")) is True
        assert await store.write(lambda tx: tx.revoke_token("ghost")) is False
        assert (await store.token_by_hash("hash-old")).revoked is True  # type: ignore[union-attr]

    async def test_a_user_tokens_team_round_trips(self, store: Store) -> None:
        await store.write(lambda tx: [tx.insert_token(token("t", team="red")),
                                      tx.insert_token(token("n", created_at=T0 + 1))])
        assert [(t.id, t.team) for t in await store.list_tokens()] == [("t", "red"), ("n", None)]

    async def test_only_valid_user_tokens_are_active(self, store: Store) -> None:
        await store.write(lambda tx: [
            tx.insert_token(token("ok")), tx.insert_token(token("later", expires_at=T0 + 100)),
            tx.insert_token(token("expired", expires_at=T0 + 10)), tx.insert_token(token("revoked")),
            tx.insert_token(token("join", kind="join")), tx.revoke_token("revoked")])
        assert sorted(t.id for t in await store.active_user_tokens(T0 + 50)) == ["later", "ok"]
        assert sorted(t.id for t in await store.active_user_tokens(T0 + 100)) == ["ok"]

    async def test_a_join_token_counts_its_uses_until_it_is_used_up_expired_or_revoked(self, store: Store) -> None:
        await store.write(lambda tx: [
            tx.insert_token(token("twice", kind="join", max_uses=2)),
            tx.insert_token(token("brief", kind="join", expires_at=T0 + 10)),
            tx.insert_token(token("user", kind="user"))])

        async def use(token_hash: str, now: float = T0) -> bool:
            return await store.write(lambda tx: tx.use_join_token(token_hash, now))

        assert [await use("hash-twice") for _ in range(3)] == [True, True, False]
        assert (await store.token_by_hash("hash-twice")).uses == 2  # type: ignore[union-attr]
        assert await use("hash-brief", T0 + 9) is True and await use("hash-brief", T0 + 10) is False
        assert await use("hash-user") is False and await use("hash-unknown") is False
        await store.write(lambda tx: tx.revoke_token("brief"))
        assert await use("hash-brief", T0) is False

    # -- artifacts ------------------------------------------------------------------------------

    async def test_a_committed_upload_becomes_the_tasks_artifact_once(self, store: Store) -> None:
        await self.insert(store, new_task("t1"))
        await store.write(lambda tx: tx.insert_upload(upload("u1", "t1", "out/model.bin", size=42)))
        assert await store.pending_upload("u1", "other-task") is None
        pending = await store.pending_upload("u1", "t1")
        assert pending is not None and pending.storage_key == "tasks/t1/u1/out/model.bin"
        taken = await store.write(lambda tx: tx.commit_upload("u1", T0 + 3))
        assert taken == pending
        assert await store.write(lambda tx: tx.commit_upload("u1", T0 + 4)) is None
        assert await store.pending_upload("u1", "t1") is None
        art = await store.artifact("t1", "out/model.bin")
        assert art is not None and (art.kind, art.size, art.attempt, art.created_at) == ("artifact", 42, 1, T0 + 3)
        assert await store.artifact("t1", "missing") is None
        assert (await store.get_task("t1")).last_checkpoint is None  # type: ignore[union-attr]

    async def test_a_reupload_replaces_the_artifact_and_a_checkpoint_becomes_the_resume_point(
        self, store: Store
    ) -> None:
        await self.insert(store, new_task("t1"))
        await store.write(lambda tx: [tx.insert_upload(upload("u1", "t1", "b.txt")),
                                      tx.insert_upload(upload("u2", "t1", "a.txt")),
                                      tx.insert_upload(upload("u3", "t1", "b.txt", size=99)),
                                      tx.insert_upload(upload("u4", "t1", "ckpt", kind="checkpoint", step=500))])
        for upload_id, at in (("u1", 1), ("u2", 2), ("u3", 3), ("u4", 3)):
            await store.write(lambda tx, u=upload_id, t=T0 + at: tx.commit_upload(u, t))
        listed = [(a.name, a.size, a.created_at) for a in await store.task_artifacts("t1")]
        assert listed == [("a.txt", 10, T0 + 2), ("b.txt", 99, T0 + 3), ("ckpt", 10, T0 + 3)]
        task = await store.get_task("t1")
        assert task is not None and json.loads(task.last_checkpoint or "") == {
            "name": "ckpt", "step": 500, "size": 10, "storage_key": "tasks/t1/u4/ckpt"}

    # -- logs -----------------------------------------------------------------------------------

    async def test_log_chunks_are_idempotent_and_read_after_a_cursor(self, store: Store) -> None:
        await store.write(lambda tx: tx.insert_logs("t1", 1, [(0, "stdout", "a"), (1, "stderr", "b")], T0))
        await store.write(lambda tx: tx.insert_logs("t1", 1, [(1, "stdout", "resent"), (2, "stdout", "c")], T0))
        await store.write(lambda tx: tx.insert_logs("t1", 2, [(0, "system", "retry")], T0))
        await store.write(lambda tx: tx.insert_logs("t2", 1, [(0, "stdout", "other task")], T0))

        async def read(attempt: int | None, after: tuple[int, int], limit: int = 1000) -> list[tuple[int, int, str]]:
            return [(c.attempt, c.seq, c.data) for c in await store.task_logs("t1", attempt, after, limit)]

        assert await read(None, (0, -1)) == [(1, 0, "a"), (1, 1, "b"), (1, 2, "c"), (2, 0, "retry")]
        assert await read(None, (1, 1)) == [(1, 2, "c"), (2, 0, "retry")]
        assert await read(None, (0, -1), limit=2) == [(1, 0, "a"), (1, 1, "b")]
        assert await read(1, (1, 0)) == [(1, 1, "b"), (1, 2, "c")]
        assert await read(2, (1, 2)) == [(2, 0, "retry")]  # the cursor's seq is of another attempt
        (chunk,) = await store.task_logs("t1", 1, (1, 0), limit=1)
        assert chunk.stream == "stderr"

    # -- task secrets ---------------------------------------------------------------------------

    async def test_secrets_are_kept_per_task_until_deleted(self, store: Store) -> None:
        await self.insert(store, new_task("t1"))
        await store.write(lambda tx: [tx.insert_secrets("t1", "sealed-1", T0), tx.insert_secrets("gone", "x", T0)])
        await store.write(lambda tx: tx.insert_secrets("t1", "sealed-2", T0 + 1))  # replaces
        assert await store.secrets_ciphertext("t1") == "sealed-2"
        assert await store.secrets_ciphertext("t2") is None
        assert sorted(await store.tasks_with_secrets()) == [("gone", "gone"), ("t1", "queued")]
        await store.write(lambda tx: tx.delete_secrets(["gone", "t1"]))
        assert await store.tasks_with_secrets() == [] and await store.secrets_ciphertext("t1") is None


    # -- the model and dataset mirror -----------------------------------------------------------

    async def test_a_mirror_push_is_listed_once_committed_and_replaces_its_revision(self, store: Store) -> None:
        def push(push_id: str, revision: str = "main", *, at: float = T0, kind: str = "model") -> StoredMirror:
            return StoredMirror(id=push_id, kind=kind, hub_id="org/m", revision=revision,
                                files=[{"path": "config.json", "size": 2, "sha256": push_id * 4}], bytes=2,
                                uploads={"config.json": f"mp-{push_id}"}, created_at=at, pushed_by="ann", ready=False)

        await store.write(lambda tx: [tx.insert_mirror_push(push("p1")), tx.insert_mirror_push(push("p2"))])
        assert await store.mirrored() == []  # nothing before a commit
        pending = await store.mirror_push("p1")
        assert pending is not None and pending.uploads == {"config.json": "mp-p1"} and not pending.ready
        done = await store.write(lambda tx: tx.commit_mirror_push("p1", T0 + 5))
        assert done is not None and done.ready and done.created_at == T0 + 5
        assert await store.write(lambda tx: tx.commit_mirror_push("p1", T0 + 6)) is None  # once
        assert await store.mirror_push("p1") is None
        await store.write(lambda tx: tx.commit_mirror_push("p2", T0 + 7))  # the same revision: replaces p1
        [only] = await store.mirrored("model", "org/m")
        assert only.id == "p2" and only.files[0]["sha256"] == "p2" * 4
        await store.write(lambda tx: [tx.insert_mirror_push(push("p3", "v2")), tx.insert_mirror_push(
            push("d1", kind="dataset"))])
        await store.write(lambda tx: [tx.commit_mirror_push("p3", T0 + 9), tx.commit_mirror_push("d1", T0 + 9)])
        assert [m.revision for m in await store.mirrored("model", "org/m")] == ["v2", "main"]  # newest first
        assert [m.id for m in await store.mirrored("dataset")] == ["d1"]
        assert await store.mirrored("model", "org/other") == []


class TestSqliteStore(StoreContract):
    """The SQLite backend, on a real file in the test's data dir."""

    def make_store(self, data_dir: Path) -> Store:
        return SqliteStore.at(str(data_dir / "mloc.db"))
