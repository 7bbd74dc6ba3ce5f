"""Progress history (the loss curve) on its way from heartbeats to the store.

A heartbeat only appends a tuple to its lease's buffer (the hot path stays in memory, as the latest
progress does); the reaper's flush, a completion and a requeue write the buffers in the same transaction
as the rest of their writes (store/repo/progress.py bounds the rows per attempt).
"""

from __future__ import annotations

from collections.abc import Iterable

from mloc_shared.protocol import Progress

from mloc_server.services.fleet import LeaseState
from mloc_server.store.records import NewPoint, PointBatch

MAX_BUFFERED_POINTS = 1000  # progress points a lease holds in memory between writes
STEP_LIMIT = 2**63  # a step SQLite cannot store as an integer draws no point (the wire does not bound it)


def take_points(leases: Iterable[LeaseState]) -> list[tuple[LeaseState, PointBatch]]:
    """The progress points gathered in memory, as batches to write; the leases' buffers are emptied
    (``restore_points`` puts them back when the write fails)."""
    out = []
    for lease in leases:
        if lease.points:
            out.append((lease, PointBatch(lease.task_id, lease.attempt, lease.points, lease.points_stored)))
            lease.points = []
    return out


def restore_points(taken: list[tuple[LeaseState, PointBatch]]) -> None:
    for lease, batch in taken:
        lease.points[:0] = batch.points
        del lease.points[:-MAX_BUFFERED_POINTS]  # writes failing for long: keep the recent ones


def note_stored(taken: list[tuple[LeaseState, PointBatch]], counts: dict[tuple[str, int], int]) -> None:
    for lease, batch in taken:
        lease.points_stored = counts.get((batch.task_id, batch.attempt), lease.points_stored)


def keep_point(lease: LeaseState, p: Progress, now: float) -> None:
    """A point of the curve per distinct step that carries a value (a bare step/total draws nothing)."""
    if p.step is None or p.step == lease.last_point_step or not -STEP_LIMIT <= p.step < STEP_LIMIT or (
            p.loss is None and p.learning_rate is None and not p.metrics):
        return
    lease.last_point_step = p.step
    lease.points.append(NewPoint(p.step, now, p.loss, p.learning_rate, p.metrics))
    if len(lease.points) > MAX_BUFFERED_POINTS:  # writes failing for long: keep the recent ones
        del lease.points[0]

