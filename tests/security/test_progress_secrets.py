"""Issue 11, item 7: a secret the task writes to its progress channel is masked like its logs are:
in the task's progress (live and stored), in the fleet listing, and in the database."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

from tests.harness import FINAL, Coordinator, wait_for
from tests.security.users import submit, user_client, user_view

SECRET = f"pw-{uuid.uuid4().hex}"


def test_a_secret_in_a_progress_message_is_masked_everywhere(coordinator: Coordinator, start_agent,
                                                              tmp_path: Path) -> None:
    start_agent("progress-box")
    go = tmp_path / "go"
    report = ('printf \'{"type": "progress", "step": 1, "total": 2, "message": "logging in with %s"}\\n\' '
              '"$DB_PASSWORD" > "$MLOC_PROGRESS"')
    wait_go = f"i=0; while [ ! -e '{go}' ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done"
    alice, bob = user_client(coordinator, "alice"), user_client(coordinator, "bob")
    task = submit(alice, {"taskType": "command", "command": f"{report}; {wait_go}", "resources": {"gpus": 0},
                          "secrets": {"DB_PASSWORD": SECRET}})

    live = wait_for(lambda: (coordinator.task(task["id"]).get("progress") or {}).get("message"), 20,
                    "the task's progress message to reach the coordinator")
    assert "logging in with" in live  # the message itself is kept, only the value is hidden
    assert SECRET not in live, f"the secret is shown in clear in the task's progress: {live!r}"
    for who, client in (("the owner", alice), ("another user", bob), ("the admin", coordinator.http)):
        listing = client.get("/api/v1/workers").text
        assert SECRET not in listing, f"the secret shows in clear in /api/v1/workers to {who}"

    go.touch()
    coordinator.wait_state(task["id"], FINAL)
    assert SECRET not in user_view(alice, task["id"]), "the secret shows in clear in the finished task"
    con = sqlite3.connect(coordinator.data_dir / "mloc.db")
    try:
        progress, result = con.execute("SELECT progress, result FROM tasks WHERE id=?", (task["id"],)).fetchone()
    finally:
        con.close()
    assert "logging in with" in (progress or "") + (result or "")
    assert SECRET not in json.dumps([progress, result]), "the secret is stored in clear in the tasks table"
    alice.close()
    bob.close()
