"""Issue 11, item 9: secrets the deployment itself holds. The first start's admin token is not printed
(the log says where the file is); the database is private to its owner (0600, whatever the umask);
a task cannot read the join token out of the agent's own environment (/proc/<pid>/environ)."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import FINAL, Coordinator
from tests.security.users import admin_from_file, submit, user_client, user_view

# what a command task can do on its agent's host: read the environment of every process of its agent
# (the agent, the warden it started, the task's own process) through /proc
ENVIRON_OF_AGENT = r"""
import os, sys
root = int(sys.argv[1])
parents = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        parents[int(pid)] = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        pass
def under(pid):
    while pid > 1:
        if pid == root:
            return True
        pid = parents.get(pid, 0)
    return False
with open(os.path.join(os.environ["MLOC_OUTPUT_DIR"], "environ.txt"), "w") as out:
    for pid in sorted(p for p in parents if under(p)):
        try:
            out.write(f"== {pid}\n" + open(f"/proc/{pid}/environ", "rb").read().replace(b"\0", b"\n").decode() + "\n")
        except OSError as exc:
            out.write(f"== {pid}: {exc}\n")
"""


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common default umask, so the test shows what the coordinator itself sets."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_the_first_start_does_not_print_the_admin_token(coordinator: Coordinator) -> None:
    token = (coordinator.data_dir / "admin.token").read_text().strip()
    log = coordinator.proc.output()
    assert token not in log, "the coordinator printed its admin token in its log at first start"
    assert "admin.token" in log, "the log should say where the admin token was written"


def test_the_database_is_private_to_its_owner(umask_022: None, tmp_path: Path) -> None:
    coord = admin_from_file(tmp_path)
    try:
        coord.submit({"taskType": "command", "command": "true", "resources": {"gpus": 1}})  # some writes
        files = sorted(p for p in coord.data_dir.iterdir() if p.name.startswith("mloc.db"))
        assert files, list(coord.data_dir.iterdir())
        for path in files:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode & 0o077 == 0, f"{path.name} is {mode:04o}: other users on the host can read it"
    finally:
        coord.stop()


def test_a_task_cannot_read_the_join_token_from_the_agents_environment(coordinator: Coordinator,
                                                                       start_agent) -> None:
    agent = start_agent("environ-box")
    alice = user_client(coordinator, "alice")
    task = submit(alice, {"taskType": "command", "resources": {"gpus": 0},
                          "command": [sys.executable, "-c", ENVIRON_OF_AGENT, str(agent.proc.pid)]})
    done = coordinator.wait_state(task["id"], FINAL)
    assert done["state"] == "succeeded", done.get("error")
    seen = user_view(alice, task["id"])
    assert f"== {agent.proc.pid}" in seen, "the scan did not reach the agent's process"
    assert coordinator.join_token not in seen, (
        "a command task read the join token from the agent's environment: "
        + json.dumps([line for line in seen.splitlines() if coordinator.join_token in line]))
    alice.close()
