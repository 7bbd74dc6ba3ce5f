"""Issue 11, item 8: every user sees the agents and their capacity; only an admin, or the task's owner,
sees what runs on them (task ids, lease epochs, progress)."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.conftest import A100
from tests.harness import Coordinator, wait_for
from tests.security.users import submit, user_client

LISTINGS = ("/api/v1/workers", "/api/v1/agents", "/api/v1/workers?page=1&page_size=50")


def test_users_see_agents_but_not_other_users_work_on_them(coordinator: Coordinator, start_agent,
                                                           tmp_path: Path) -> None:
    start_agent("shared-box", gpus=[A100])
    alice, bob = user_client(coordinator, "alice"), user_client(coordinator, "bob")
    note = f"alice-private-{uuid.uuid4().hex[:12]}"
    go = tmp_path / "go"
    command = (f'printf \'{{"type": "progress", "step": 3, "total": 9, "message": "{note}"}}\\n\' > "$MLOC_PROGRESS"; '
               f"i=0; while [ ! -e '{go}' ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done")
    task = submit(alice, {"taskType": "command", "command": command, "resources": {"gpus": 1}})
    wait_for(lambda: note in coordinator.http.get("/api/v1/workers").text, 20,
             "the task's lease and progress in the admin's fleet listing")

    for path in LISTINGS:
        seen = bob.get(path)
        assert seen.status_code == 200, seen.text
        (box,) = [w for w in seen.json()["workers"] if w["name"] == "shared-box"]
        assert box["max_tasks"] >= 1 and len(box["gpus"]) == 1  # agents and their capacity stay visible
        assert task["id"] not in seen.text, f"{path} shows bob the id of alice's task running on shared-box"
        assert note not in seen.text, f"{path} shows bob the progress of alice's task"
        assert not [lease for lease in box.get("leases") or [] if lease.get("task_id") or lease.get("epoch")]
    for who, client in (("the owner", alice), ("the admin", coordinator.http)):
        assert task["id"] in client.get("/api/v1/workers").text, f"{who} no longer sees the task on its agent"
    go.touch()
    alice.close()
    bob.close()
