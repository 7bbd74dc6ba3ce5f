"""The product's reason to exist: an agent behind NAT, which nothing can connect to, runs tasks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import netns
from tests.harness import Agent, Coordinator, wait_for

pytestmark = pytest.mark.netns

def test_agent_behind_nat_runs_tasks(nat: netns.NatNet, tmp_path: Path) -> None:
    coord = Coordinator(tmp_path, host=netns.COORD_IP, prefix=nat.exec_prefix(nat.coord_ns))
    coord.url = f"http://{netns.COORD_IP}:{coord.port}"
    coord.http.base_url = coord.url
    coord.start()
    agent = Agent(coord, "behind-nat", prefix=nat.exec_prefix(nat.agent_ns))
    try:
        agent.start()
        # something listens on the agent's LAN; the router reaches it, the coordinator's side cannot
        listener = subprocess.Popen([*nat.exec_prefix(nat.agent_ns), sys.executable, "-m", "http.server", "-b",
                                     netns.AGENT_IP, "8099"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://{netns.AGENT_IP}:8099/"

            def reach(ns: str) -> bool:
                cmd = [*nat.exec_prefix(ns), "curl", "-s", "-o", "/dev/null", "-m", "2", url]
                return subprocess.run(cmd, capture_output=True).returncode == 0

            wait_for(lambda: reach(nat.router_ns), 10, "listener reachable from the router")
            assert not reach(nat.coord_ns)
        finally:
            listener.kill()
            listener.wait()
        # the agent is seen from the NAT's address, not its own
        assert agent.info()["address"] == netns.ROUTER_WAN_IP
        ids = [coord.submit({"taskType": "command", "command": f"echo task-{i} from $(hostname -I)"})["id"]
               for i in range(5)]
        for i, task_id in enumerate(ids):
            done = coord.wait_state(task_id, {"succeeded", "failed"}, timeout=30)
            assert done["state"] == "succeeded", done
            out = coord.logs(task_id, "stdout")
            assert f"task-{i}" in out and netns.AGENT_IP in out
    finally:
        agent.stop()
        coord.stop()
