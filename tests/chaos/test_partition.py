"""An agent behind NAT cut off from the coordinator (iptables DROP on its router) for longer than the
lease TTL. It must stop its task on its own (self-fencing) while still cut off, the task must run
elsewhere, and once the network is back the agent's late completion is refused and it takes new
work again as if nothing happened."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from tests import netns
from tests.chaos.conftest import Report
from tests.chaos.fleet import Ledger
from tests.harness import Agent, Coordinator, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.netns]
HEARTBEAT_S, TTL_S, POLL_HOLD_S = 0.5, 4.0, 5.0


def test_cut_off_agent_fences_itself_and_its_late_completion_is_refused(
    nat: netns.NatNet, tmp_path: Path, report: Report,
) -> None:
    coord = Coordinator(tmp_path, host=netns.COORD_IP, prefix=nat.exec_prefix(nat.coord_ns),
                        heartbeat_s=HEARTBEAT_S, lease_ttl_s=TTL_S, poll_hold_s=POLL_HOLD_S)
    # behind the NAT; the rescuer sits on the coordinator's own network (the test's namespace)
    cut_off = Agent(coord, "behind-nat", labels="site=lan", max_tasks=2, prefix=nat.exec_prefix(nat.agent_ns))
    rescuer = Agent(coord, "rescuer", labels="site=dc")
    ledger = Ledger(tmp_path / "ledger")
    pids = tmp_path / "pids"
    pids.mkdir()
    cut = False
    try:
        coord.start()
        cut_off.start()
        retry = {"max_attempts": 3, "backoff_s": 0}
        # long: its first attempt would run for a minute; short: ends while the agent is cut off
        long_cmd = (f'echo $$ > {pids}/long-$MLOC_ATTEMPT; case $MLOC_ATTEMPT in 1) exec sleep 60;; esac; '
                    f'sleep 0.5; {ledger.append_cmd("long")}')
        short_cmd = f'sleep 3; {ledger.append_cmd("short")}'
        long_id = coord.submit({"taskType": "command", "command": long_cmd, "retry": retry})["id"]
        short_id = coord.submit({"taskType": "command", "command": short_cmd, "retry": retry})["id"]
        for task_id in (long_id, short_id):
            assert coord.wait_state(task_id, "running")["lease"]["agent"] == "behind-nat"
        short_epoch = coord.task(short_id)["lease"]["epoch"]
        pid = int(wait_for(lambda: (pids / "long-1").exists() and (pids / "long-1").read_text().strip(), 10,
                           "the long task's pid"))

        nat.cut_agent(True)
        cut, cut_at = True, time.monotonic()
        report(f"cut behind-nat off (iptables DROP on its router) while it ran 2 tasks; lease TTL {TTL_S:g}s, "
               f"heartbeat {HEARTBEAT_S:g}s")
        rescuer.start()

        # self-fencing: the long task's process goes away while the agent is still cut off
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), TTL_S + 10, "the cut-off agent to stop its task",
                 interval=0.02)
        fenced_after, gone_at = time.monotonic() - cut_at, time.time()
        assert cut
        assert fenced_after >= TTL_S - 1.5 * HEARTBEAT_S - 0.5, f"task stopped {fenced_after:.1f}s into the cut"
        assert "self-fencing" in cut_off.proc.output(), cut_off.proc.output()[-2000:]
        report(f"behind-nat stopped its task itself {fenced_after:.1f}s into the cut (process {pid} gone, "
               f"its log says self-fencing), the network still cut")

        # both tasks are requeued after the TTL and finish on the rescuer, still during the cut
        for task_id in (long_id, short_id):
            done = coord.wait_state(task_id, {"succeeded", "failed", "cancelled"}, timeout=30)
            assert done["state"] == "succeeded" and done["agent"] == "rescuer", done
            assert done["attempts"] == 2 and done["attempt_history"][0]["outcome"] == "lost", done
        rescued_after = time.monotonic() - cut_at
        # no two copies at once: the old process was gone before the coordinator started the next attempt
        second_start = coord.task(long_id)["attempt_history"][1]["started_at"]
        assert gone_at <= second_start + 0.3, f"fenced {gone_at - second_start:.2f}s after attempt 2 started"
        report(f"both tasks requeued and succeeded on rescuer {rescued_after:.1f}s into the cut; the fenced "
               f"process was gone {second_start - gone_at:.2f}s before the next attempt started")

        nat.cut_agent(False)
        cut, cut_back = False, time.monotonic()
        # the late completion of the short task (it ended during the cut) is refused
        wait_for(lambda: "completion refused" in cut_off.proc.output(), 90, "the late completion refused")
        refused_after = time.monotonic() - cut_back
        state = json.loads((cut_off.data_dir / "agent.json").read_text())
        late = coord.http.post(f"/api/v1/leases/{short_id}/complete", json={"epoch": short_epoch,
                               "outcome": "succeeded"},
                               headers={"Authorization": f"Bearer {state['credential']}", "X-MLOC-Protocol": "1"})
        assert late.status_code == 409 and late.json()["error"]["code"] == "lease_lost", late.text
        after = coord.task(short_id)
        assert after["state"] == "succeeded" and after["agent"] == "rescuer" and after["attempts"] == 2, after

        # it rejoins: polls again and takes new work meant for it
        since = time.time()
        wait_for(lambda: (cut_off.info() or {}).get("last_seen", 0) > since, 60, "behind-nat polling again")
        fresh = coord.submit({"taskType": "command", "command": ledger.append_cmd("fresh"),
                              "resources": {"labels": {"site": "lan"}}})
        done = coord.wait_state(fresh["id"], {"succeeded", "failed"}, timeout=60)
        assert done["state"] == "succeeded" and done["agent"] == "behind-nat", done
        rejoined_after = time.monotonic() - cut_back

        runs = {word: sum(ledger.counts(word).values()) for word in ("long", "short", "fresh")}
        assert runs["long"] == 1, runs  # the fenced first attempt never got to its end
        assert runs["fresh"] == 1, runs
        report(f"network back after {cut_back - cut_at:.1f}s; the late completion was refused {refused_after:.1f}s "
               f"later (replayed by hand: 409 lease_lost); behind-nat took a new task {rejoined_after:.1f}s after "
               f"the cut ended; runs to the end: long {runs['long']}, short {runs['short']} (its partitioned run "
               f"finished too but its result was discarded), fresh {runs['fresh']}")
    except httpx.HTTPError as exc:
        raise AssertionError(f"coordinator unreachable from the test: {exc}") from exc
    finally:
        if cut:
            nat.cut_agent(False)
        rescuer.stop()
        cut_off.stop()
        coord.stop()
