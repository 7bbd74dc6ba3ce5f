"""A gang across two boxes behind one NAT: two agent namespaces on one LAN (tests/netns.py LanNet),
the coordinator in a third namespace that cannot open a connection to either. A 2-node torchrun job
(gloo) runs as one job; kill -9 of one member mid-run stops the other member's ranks within the TTL,
the gang goes back to the queue once, and resumes on two agents from the last checkpoint's step."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netns
from tests.harness import Agent, Coordinator, wait_for
from tests.prerequisites import missing
from tests.test_gangs import torchrun

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]
TTL = 4.0


@pytest.fixture
def lan() -> Iterator[netns.LanNet]:
    why = netns.available()
    if why:
        missing(f"network namespaces unavailable: {why}")
    net = netns.LanNet().up()
    try:
        yield net
    finally:
        net.down()


def coordinator_in(lan: netns.LanNet, tmp_path: Path) -> Coordinator:
    coord = Coordinator(tmp_path, host=netns.COORD_IP, prefix=lan.exec_prefix(lan.coord_ns), lease_ttl_s=TTL,
                        extra_env={"MLOC_ALLOW_PRIVATE_URLS": "true"})
    coord.url = f"http://{netns.COORD_IP}:{coord.port}"
    coord.http.base_url = coord.url
    return coord.start()


def box(coord: Coordinator, lan: netns.LanNet, i: int) -> Agent:
    return Agent(coord, f"box{i}", prefix=lan.exec_prefix(lan.agent_namespaces()[i]))


def reachable(lan: netns.LanNet, ns: str, ip: str, port: int) -> bool:
    probe = f"import socket; socket.create_connection(('{ip}', {port}), 2)"
    return subprocess.run([*lan.exec_prefix(ns), sys.executable, "-c", probe], capture_output=True).returncode == 0


def test_a_two_box_gang_behind_nat_survives_a_killed_member_and_resumes(lan: netns.LanNet, tmp_path: Path) -> None:
    coord = coordinator_in(lan, tmp_path)
    boxes = [box(coord, lan, i).start() for i in range(2)]
    try:
        # the boxes reach each other on their LAN; the coordinator's namespace reaches neither
        listener = subprocess.Popen([*lan.exec_prefix(lan.agent_namespaces()[0]), sys.executable, "-m",
                                     "http.server", "-b", lan.agent_ip(0), "8097"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: reachable(lan, lan.agent_namespaces()[1], lan.agent_ip(0), 8097), 10, "LAN peer")
            assert not reachable(lan, lan.coord_ns, lan.agent_ip(0), 8097)
        finally:
            listener.kill()
            listener.wait()
        assert {a.info()["address"] for a in boxes} == {netns.ROUTER_WAN_IP}  # one NAT: one network

        spec = {"taskType": "command", "command": torchrun("--steps", "60", "--save-every", "5", "--step-s", "0.25"),
                "resources": {"nodes": 2}, "retry": {"backoff_s": 1, "max_attempts": 3}}
        task_id = coord.submit(spec)["id"]
        running = wait_for(lambda: (t := coord.task(task_id)).get("last_checkpoint") and t, 120,
                           "a checkpoint from node rank 0")
        members = running["attempt_history"][0]["members"]
        assert sorted(members) == ["box0", "box1"]
        assert running["lease"]["agent"] == members[0]  # node rank 0 holds the task's lease
        victim = next(a for a in boxes if a.name == members[1])
        killed_at = time.time()
        victim.kill9()

        requeued = wait_for(lambda: t if ((t := coord.task(task_id))["attempts"] >= 2 or t["state"] == "queued")
                            else None, 60, "the gang requeued")
        first = coord.task(task_id)["attempt_history"][0]
        assert first["outcome"] == "lost" and first["ended_at"] - killed_at <= TTL + 2, first
        assert requeued["attempts"] <= 2
        step = coord.task(task_id)["last_checkpoint"]["step"]

        boxes.append(box(coord, lan, boxes.index(victim)).start())  # a new agent process in its namespace
        done = coord.wait_state(task_id, {"succeeded", "failed"}, timeout=180)
        logs = coord.logs(task_id)
        assert done["state"] == "succeeded", (done, logs[-3000:])
        assert done["attempts"] == 2, done["attempt_history"]  # one requeue for the whole gang
        assert sorted(done["attempt_history"][1]["members"]) == ["box0", "box1"]
        resumed = {int(s) for s in re.findall(r"\[gang\] rank=\d resumed_from_step=(\d+)", logs)}
        assert resumed and min(resumed) >= step >= 5, (resumed, step)
        seen = set(re.findall(r"\[gang\] rank=(\d) world_size=(\d) node_rank=(\d) all_reduce=(\d+)", logs))
        assert seen == {("0", "2", "0", "3"), ("1", "2", "1", "3")}
        assert "ranks meet at 198.51.100.6" in logs  # node rank 0's LAN address, not the NAT's
    finally:
        for agent in boxes:
            if agent.proc is not None and agent.proc.alive():
                agent.kill9()
        coord.stop()
