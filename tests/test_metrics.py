"""Prometheus /metrics and JSON logs, read from real coordinator and agent processes."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import A100
from tests.harness import Agent, Coordinator, wait_for

SLOW = 'for i in $(seq 1 200); do echo "{\\"step\\": $i, \\"total\\": 200}" > "$MLOC_PROGRESS"; sleep 0.1; done'


def scrape(coord: Coordinator) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = coord.http.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_follow_the_fleet_leases_and_tasks(coordinator: Coordinator, start_agent) -> None:
    agent = start_agent("metrics-box", gpus=[A100, A100])
    quick = coordinator.submit({"taskType": "command", "command": "sleep 0.3", "resources": {"gpus": 1}})
    coordinator.wait_state(quick["id"], "succeeded")
    slow = coordinator.submit({"taskType": "command", "command": SLOW, "resources": {"gpus": 1},
                               "retry": {"backoff_s": 60}})
    coordinator.wait_state(slow["id"], "running")

    m = wait_for(lambda: (x := scrape(coordinator)) and value(x, "mloc_agent_call_duration_seconds_count",
                                                               call="heartbeat") >= 2 and x, 15, "heartbeats")
    assert value(m, "mloc_agents", state="active") == 1 and value(m, "mloc_agents", state="offline") == 0
    assert value(m, "mloc_gpus", state="used") == 1 and value(m, "mloc_gpus", state="free") == 1
    assert value(m, "mloc_tasks", state="running") == 1 and value(m, "mloc_tasks", state="succeeded") == 1
    assert value(m, "mloc_leases_active") == 1
    assert value(m, "mloc_leases_granted_total") == 2 and value(m, "mloc_leases_expired_total") == 0
    assert value(m, "mloc_agent_call_duration_seconds_count", call="poll") >= 1
    assert value(m, "mloc_agent_call_duration_seconds_bucket", call="heartbeat", le="0.1") >= 2  # fast renewals
    durations = value(m, "mloc_task_duration_seconds_count", task_type="command", state="succeeded")
    assert durations == 1
    assert 0.3 <= value(m, "mloc_task_duration_seconds_sum", task_type="command", state="succeeded") < 10
    again = scrape(coordinator)  # a second scrape does not count the same task twice
    assert value(again, "mloc_task_duration_seconds_count", task_type="command", state="succeeded") == 1

    agent.kill9()  # the lease is lost: after the TTL the task goes back to the queue
    coordinator.wait_state(slow["id"], "queued", timeout=30)
    m = scrape(coordinator)
    assert value(m, "mloc_leases_expired_total") == 1 and value(m, "mloc_leases_active") == 0
    assert value(m, "mloc_tasks", state="queued") == 1 and value(m, "mloc_gpus", state="used") == 0

    om = coordinator.http.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["content-type"].startswith("application/openmetrics-text") and om.text.endswith("# EOF\n")


def _json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines
    return [json.loads(line) for line in lines]  # every line is one JSON object


def test_log_format_json_gives_one_json_object_a_line(tmp_path: Path) -> None:
    coord = Coordinator(tmp_path, extra_env={"MLOC_LOG_FORMAT": "json"}).start()
    agent = Agent(coord, "json-logger", extra_env={"MLOC_LOG_FORMAT": "json"})
    try:
        agent.start()
        task = coord.submit({"taskType": "command", "command": "echo hi"})
        coord.wait_state(task["id"], "succeeded")
    finally:
        agent.stop()
        coord.stop()
    for log in (coord.proc.output(), agent.proc.output()):
        records = _json_lines(log)
        assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    assert any("listening on" in r["msg"] for r in _json_lines(coord.proc.output()))
    assert any(r["msg"].startswith("registered as json-logger") for r in _json_lines(agent.proc.output()))
