"""Task secrets reach the task's process and nothing else: not the API, the logs, the database, the
coordinator's or the agent's own log."""

from __future__ import annotations

import hashlib
import sqlite3

from tests.harness import Coordinator, wait_for

SECRET = "hf_Zq8sEcReT1234567890abcdef"
# prints the value whole, then split across two writes 0.3 s apart (two separate reads on the agent),
# and a digest that proves the child had the real value
SHOW = ('echo "token=$HF_TOKEN"; printf "%s" "${HF_TOKEN%????????????}"; sleep 0.3; '
        'printf "%s\\n" "${HF_TOKEN#${HF_TOKEN%????????????}}"; printf "%s" "$HF_TOKEN" | sha256sum')


def test_secrets_reach_only_the_task_process(coordinator: Coordinator, start_agent) -> None:
    agent = start_agent("secret-box")
    ok = coordinator.submit({"taskType": "command", "command": SHOW, "secrets": {"HF_TOKEN": SECRET}})
    assert ok["spec"]["secrets"] == {"HF_TOKEN": "<redacted>"}
    bad = coordinator.submit({"taskType": "command", "command": 'echo "auth failed for $HF_TOKEN" >&2; exit 3',
                              "secrets": {"HF_TOKEN": SECRET}, "retry": {"max_attempts": 1}})
    assert coordinator.wait_state(ok["id"], {"succeeded", "failed"})["state"] == "succeeded"
    assert coordinator.wait_state(bad["id"], {"succeeded", "failed"})["state"] == "failed"

    logs = coordinator.logs(ok["id"])
    assert "token=***" in logs and "***\n" in logs.split("token=***", 1)[1]  # the split echo is masked too
    assert hashlib.sha256(SECRET.encode()).hexdigest() in logs  # the child saw the real value
    failed = coordinator.task(bad["id"])
    assert "auth failed for ***" in failed["error"]

    answers = [coordinator.http.get(p).text for p in (
        f"/api/v1/tasks/{ok['id']}", f"/api/v1/tasks/{bad['id']}", "/api/v1/tasks", f"/api/v1/tasks/{ok['id']}/logs",
        f"/api/v1/tasks/{bad['id']}/logs", "/api/v1/workers", "/metrics")]
    for text in answers:
        assert SECRET not in text
    for part in (SECRET, SECRET[:-12], SECRET[-12:]):  # nor any piece the split echo printed
        assert part not in logs

    agent.stop()
    coordinator.stop()  # flush everything to disk, then read every file the coordinator wrote
    blob = b"".join(p.read_bytes() for p in coordinator.data_dir.rglob("*") if p.is_file())
    assert SECRET.encode() not in blob
    assert SECRET not in coordinator.proc.output() and SECRET not in agent.proc.output()
    con = sqlite3.connect(coordinator.data_dir / "mloc.db")
    assert con.execute("SELECT COUNT(*) FROM task_secrets").fetchone()[0] == 0  # dropped once the tasks ended
    con.close()


def test_secrets_are_kept_encrypted_until_the_task_ends(coordinator: Coordinator) -> None:
    spec = {"taskType": "command", "command": "true", "resources": {"gpus": 1}, "secrets": {"API_KEY": SECRET}}
    task = coordinator.submit(spec)  # no agent: it stays queued with its secret stored
    con = sqlite3.connect(coordinator.data_dir / "mloc.db")
    (sealed,) = con.execute("SELECT ciphertext FROM task_secrets WHERE task_id=?", (task["id"],)).fetchone()
    assert SECRET not in sealed and len(sealed) > len(SECRET)
    assert (coordinator.data_dir / "secrets.key").stat().st_mode & 0o077 == 0
    coordinator.http.post(f"/api/v1/tasks/{task['id']}/cancel")
    wait_for(lambda: con.execute("SELECT COUNT(*) FROM task_secrets").fetchone()[0] == 0, 10,
             "the cancelled task's secret to be deleted")
    con.close()


def test_bad_secrets_are_refused_without_echoing_them(coordinator: Coordinator) -> None:
    for secrets, field in (({"MLOC_JOIN_TOKEN": SECRET}, "secrets"), ({"HF_TOKEN": "abc"}, "secrets"),
                           ({"bad name": SECRET}, "secrets")):
        resp = coordinator.http.post("/api/v1/tasks", json={"taskType": "command", "command": "true",
                                                            "secrets": secrets})
        assert resp.status_code == 422 and resp.json()["error"]["field"].startswith(field), resp.text
        assert SECRET not in resp.text and "abc" not in resp.json()["error"]["message"]
