"""Artifacts through presigned URLs: the embedded local store and a real S3-compatible server."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from tests.harness import Agent, Coordinator, free_port, wait_for

KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path / "moto.log", "wb")  # noqa: SIM115 (open for the life of the server)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 30, "moto server")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _writer_task(size_mb: int) -> dict:
    cmd = (f'head -c {size_mb * 1024 * 1024} /dev/urandom > "$MLOC_OUTPUT_DIR/big.bin"; '
           'mkdir -p "$MLOC_OUTPUT_DIR/sub"; echo "hello artifact" > "$MLOC_OUTPUT_DIR/sub/note.txt"; '
           'sha256sum "$MLOC_OUTPUT_DIR/big.bin" | cut -d" " -f1')
    return {"taskType": "command", "command": cmd}


def _check_round_trip(coord: Coordinator, task_id: str, tmp_path: Path) -> None:
    done = coord.wait_state(task_id, {"succeeded", "failed"}, timeout=60)
    assert done["state"] == "succeeded", done
    expected_sha = coord.logs(task_id, "stdout").strip().splitlines()[-1]
    listing = coord.http.get(f"/api/v1/tasks/{task_id}/artifacts").json()["artifacts"]
    assert {a["name"] for a in listing} == {"big.bin", "sub/note.txt"}
    resp = coord.http.get(f"/api/v1/tasks/{task_id}/artifacts/big.bin", follow_redirects=True)
    assert resp.status_code == 200
    assert hashlib.sha256(resp.content).hexdigest() == expected_sha
    note = coord.http.get(f"/api/v1/tasks/{task_id}/artifacts/sub/note.txt", follow_redirects=True)
    assert note.text == "hello artifact\n"
    missing = coord.http.get(f"/api/v1/tasks/{task_id}/artifacts/nope.txt")
    assert missing.status_code == 404


def test_s3_artifact_round_trip_through_moto(tmp_path: Path, moto: str) -> None:
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1", **KEYS)
    s3.create_bucket(Bucket="mloc-artifacts")
    coord = Coordinator(tmp_path, extra_env={
        "MLOC_S3_BUCKET": "mloc-artifacts", "MLOC_S3_ENDPOINT_URL": moto, "MLOC_S3_ACCESS_KEY_ID": "testing",
        "MLOC_S3_SECRET_ACCESS_KEY": "testing", "MLOC_MULTIPART_THRESHOLD_MB": "5", "MLOC_MULTIPART_PART_MB": "5",
    }).start()
    agent = Agent(coord, "s3-writer").start()
    try:
        task = coord.submit(_writer_task(12))  # 12 MiB: a 3-part multipart upload
        _check_round_trip(coord, task["id"], tmp_path)
        redirect = coord.http.get(f"/api/v1/tasks/{task['id']}/artifacts/big.bin")
        assert redirect.status_code == 302 and redirect.headers["location"].startswith(moto)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mloc-artifacts")["Contents"]]
        assert any(k.endswith("/big.bin") for k in keys) and any(k.endswith("/sub/note.txt") for k in keys)
        head = s3.head_object(Bucket="mloc-artifacts", Key=next(k for k in keys if k.endswith("/big.bin")))
        assert head["ContentLength"] == 12 * 1024 * 1024 and "-3" in head["ETag"]  # multipart ETag
        # the agent never held S3 credentials: its environment and state file have none
        assert "testing" not in (agent.data_dir / "agent.json").read_text()
    finally:
        agent.stop()
        coord.stop()


def test_local_store_round_trip_and_signed_urls(coordinator: Coordinator, start_agent, tmp_path: Path) -> None:
    start_agent("local-writer")
    task = coordinator.submit(_writer_task(2))
    _check_round_trip(coordinator, task["id"], tmp_path)
    location = coordinator.http.get(f"/api/v1/tasks/{task['id']}/artifacts/big.bin").headers["location"]
    tampered = location.replace("sig=", "sig=0")
    assert coordinator.http.get(tampered).status_code == 403
    unsigned = location.split("?")[0]
    assert coordinator.http.get(unsigned).status_code == 403
    assert coordinator.http.put(unsigned, content=b"x").status_code == 403


def test_artifact_names_cannot_escape(coordinator: Coordinator, start_agent, tmp_path: Path) -> None:
    agent = start_agent("sneaky")
    task = coordinator.submit({"taskType": "command", "command": "sleep 5"})
    running = coordinator.wait_state(task["id"], "running")
    import json

    cred = json.loads((agent.data_dir / "agent.json").read_text())["credential"]
    headers = {"Authorization": f"Bearer {cred}", "X-MLOC-Protocol": "1"}
    for name in ("../../etc/passwd", "/abs/path", "a/../../b", "a\\b", "nul\x00byte", "", "a//b"):
        resp = coordinator.http.post(f"/api/v1/leases/{task['id']}/uploads", headers=headers,
                                     json={"epoch": running["lease"]["epoch"], "name": name, "size": 1})
        assert resp.status_code == 422 and resp.json()["error"]["field"] in ("name", "size"), (name, resp.text)
