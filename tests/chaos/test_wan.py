"""Agents behind NAT on a bad WAN link (200 ms RTT, 2 % loss, some reordering): every task finishes,
no lease expires (heartbeats keep up), and a submit still reaches an idle agent's held poll within
about one RTT plus the processing measured on the plain link."""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

import pytest

from tests import netns
from tests.chaos.conftest import Report
from tests.chaos.fleet import Ledger, all_tasks, exactly_once, wait_load_done
from tests.chaos.scale import Scale
from tests.chaos.wan import WanLink, tcp_rtt
from tests.harness import Agent, Coordinator, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.netns]
HEARTBEAT_S, TTL_S, POLL_HOLD_S, TASK_S = 1.0, 5.0, 5.0, 3.0


def submit_to_start(coord: Coordinator, probes: Path, count: int, tag: str) -> list[float]:
    """Seconds from a submit to the task's first instruction, with every agent idle (poll held)."""
    out = []
    for i in range(count):
        wait_for(lambda: not any(w["leases"] for w in coord.workers()), 30, "agents idle")
        time.sleep(1.0)  # each agent's next poll is held by now, even across the WAN
        mark = probes / f"{tag}-{i}"
        t0 = time.time()
        task = coord.submit({"taskType": "command", "command": f"date +%s.%N > {mark}"})
        started = wait_for(lambda m=mark: m.exists() and m.read_text().strip(), 30, "the probe task to start",
                           interval=0.01)
        out.append(float(started) - t0)
        assert coord.wait_state(task["id"], {"succeeded", "failed"})["state"] == "succeeded"
    return out


def test_tasks_finish_and_timings_hold_over_a_slow_lossy_nat(
    nat: netns.NatNet, tmp_path: Path, scale: Scale, report: Report, rng: random.Random,
) -> None:
    coord = Coordinator(tmp_path, host=netns.COORD_IP, prefix=nat.exec_prefix(nat.coord_ns),
                        heartbeat_s=HEARTBEAT_S, lease_ttl_s=TTL_S, poll_hold_s=POLL_HOLD_S)
    agents = [Agent(coord, f"far-{i}", max_tasks=3, prefix=nat.exec_prefix(nat.agent_ns)) for i in range(2)]
    wan = WanLink(nat, tmp_path, seed=rng.randrange(1 << 30))
    ledger = Ledger(tmp_path / "ledger")
    probes = tmp_path / "probes"
    probes.mkdir()
    try:
        coord.start()
        for agent in agents:
            agent.start()
        plain = submit_to_start(coord, probes, scale.wan_probes, "plain")
        plain_rtt = statistics.median(tcp_rtt(nat, netns.COORD_IP, coord.port))

        wan.up()
        rtts = tcp_rtt(nat, netns.COORD_IP, coord.port)
        rtt = statistics.median(rtts)
        report(f"WAN on the NAT router by {wan.method}: TCP connect RTT from the agent LAN p50 {rtt * 1000:.0f} ms "
               f"(plain {plain_rtt * 1000:.1f} ms); coordinator timings: heartbeat {HEARTBEAT_S:g}s, lease TTL "
               f"{TTL_S:g}s, poll hold {POLL_HOLD_S:g}s")
        assert 0.18 <= rtt <= 0.6, f"the WAN is not in effect: RTT p50 {rtt:.3f}s"

        slow = submit_to_start(coord, probes, scale.wan_probes, "wan")
        base, lat = statistics.median(plain), statistics.median(slow)
        report(f"submit -> start on an idle agent ({len(slow)} probes): p50 {lat * 1000:.0f} ms, max "
               f"{max(slow) * 1000:.0f} ms over the WAN; p50 {base * 1000:.0f} ms on the plain link")
        assert lat >= 0.09, f"faster than the one-way delay: {lat:.3f}s (is the poll really held across the WAN?)"
        assert lat <= base + rtt + 0.3, f"submit -> start p50 {lat:.3f}s > processing {base:.3f}s + RTT {rtt:.3f}s"

        spec = {"taskType": "command", "command": f"sleep {TASK_S:g}; {ledger.append_cmd()}"}
        t0 = time.monotonic()
        resp = coord.http.post("/api/v1/tasks", json=[spec] * scale.wan_tasks)
        assert resp.status_code == 201, resp.text
        ids = [t["id"] for t in resp.json()["tasks"]]
        wait_load_done(coord, len(ids) + len(plain) + len(slow), timeout=60 + 4 * len(ids) * TASK_S / 6)
        elapsed = time.monotonic() - t0
        stats = wan.down()
        link = wan.describe()

        tasks = all_tasks(coord)
        load = {i: tasks[i] for i in ids}
        missing, twice, unknown = exactly_once(ledger.counts(), ids)
        logs = "".join(a.proc.output() for a in agents)
        retried = {what: logs.count(what) for what in ("poll failed", "failed (")}  # poll / with_retries calls
        succeeded = sum(t["state"] == "succeeded" for t in load.values())
        expired = sum(t["attempts"] != 1 for t in load.values())
        report(f"{len(ids)} tasks of {TASK_S:g}s on 2 agents x 3 slots in {elapsed:.1f}s: {succeeded} succeeded, "
               f"{expired} with more than one attempt (a lease expired), ledger {len(missing)} missing / "
               f"{len(twice)} duplicates; agent-side retries {retried}; self-fencing "
               f"{logs.count('self-fencing')}; the link did: {link}")
        assert succeeded == len(ids), {i: t["state"] for i, t in load.items() if t["state"] != "succeeded"}
        assert expired == 0, [(i, t["attempt_history"]) for i, t in load.items() if t["attempts"] != 1][:3]
        assert "self-fencing" not in logs
        assert not missing and not twice and not unknown, (missing, twice, unknown)
        if "packets" in stats:  # the emulator: loss and reordering really happened
            assert stats["dropped"] > 0 and stats["reordered"] > 0, stats
    finally:
        wan.down()
        for agent in agents:
            agent.stop()
        coord.stop()
