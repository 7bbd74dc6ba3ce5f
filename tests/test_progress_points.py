"""The agent's buffer of progress reports between heartbeats (agent/mloc_agent/progress_points.py)."""

from __future__ import annotations

from mloc_agent.progress_points import ProgressPoints
from mloc_shared.protocol import Progress


def test_a_point_per_new_step_with_a_value_kept_until_a_renewal_carries_it() -> None:
    points = ProgressPoints(limit=3)
    for p in (Progress(step=1, loss=2.0), Progress(step=1, loss=1.9), Progress(step=2, message="no value"),
              Progress(step=3, metrics={"reward": 0.1}), Progress(message="pulling")):
        points.add(p)
    assert [p.step for p in points.pending()] == [1, 3]
    batch = points.pending()
    points.add(Progress(step=4, loss=1.0))  # reported while the renewal was on its way: stays for the next
    points.sent(len(batch))
    assert [p.step for p in points.pending()] == [4]
    for step in range(5, 10):  # faster than renewals can carry: the most recent ones
        points.add(Progress(step=step, loss=1.0))
    assert [p.step for p in points.pending()] == [7, 8, 9]
