"""The model and dataset mirror without ML: push, list, refusals, a lease's mirrored copies on a real
agent (mode first), S3 multipart pushes through moto, and downloads that resume with Range."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import subprocess
import threading
from pathlib import Path

import boto3
import httpx
import pytest
from mloc_agent.client import CoordinatorClient
from mloc_agent.mirror import (
    MANIFEST,
    PART_SUFFIX,
    MirrorError,
    MirrorStopped,
    download_snapshot,
    hub_reachable,
)
from mloc_server.artifacts.local import LocalStore
from mloc_shared.api_client import ApiClient
from mloc_shared.mirror import MirroredFile, MirroredSnapshot, hub_references
from mloc_shared.mirror_push import push_folder, snapshot_identity

from tests.harness import MLOC, Agent, Coordinator, base_env, wait_for
from tests.test_artifacts import KEYS
from tests.test_artifacts import moto as moto  # a fixture

HUB_ID = "mloc-test/tiny-files"


def _snapshot(folder: Path, big: int = 0) -> Path:
    """A folder that stands for a hub snapshot: a config, a nested file, and optionally a big blob."""
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "test", "seed": os.urandom(4).hex()}))
    (folder / "sub" / "weights.bin").write_bytes(os.urandom(3000))
    if big:
        (folder / "big.bin").write_bytes(os.urandom(big))
    return folder


def _api(coord: Coordinator, token: str | None = None) -> ApiClient:
    return ApiClient(coord.url, token or coord.admin_token)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_push_then_list_shows_the_snapshot_and_a_push_replaces_its_revision(coordinator: Coordinator,
                                                                            tmp_path: Path) -> None:
    folder = _snapshot(tmp_path / "snap")
    entry = push_folder(_api(coordinator), folder, "model", HUB_ID, "main")
    assert {f["path"] for f in entry["files"]} == {"config.json", "sub/weights.bin"}
    assert entry["bytes"] == sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    listing = coordinator.http.get("/api/v1/mirror").json()
    assert listing["mode"] == "fallback"
    [only] = listing["mirrored"]
    assert (only["kind"], only["hub_id"], only["revision"], only["pushed_by"]) == ("model", HUB_ID, "main", "admin")
    assert {f["path"]: f["sha256"] for f in only["files"]}["config.json"] == _sha(folder / "config.json")

    (folder / "config.json").write_text('{"changed": true}')
    push_folder(_api(coordinator), folder, "model", HUB_ID, "main")
    [again] = coordinator.http.get("/api/v1/mirror").json()["mirrored"]  # replaced, not listed twice
    assert {f["path"]: f["sha256"] for f in again["files"]}["config.json"] == _sha(folder / "config.json")
    assert coordinator.http.get("/api/v1/mirror", params={"kind": "dataset"}).json()["mirrored"] == []

    # the CLI: a folder pushed --as a dataset id, then listed
    env = base_env(MLOC_COORDINATOR_URL=coordinator.url, MLOC_TOKEN=coordinator.admin_token, COLUMNS="200")
    out = subprocess.run([*MLOC, "models", "push", str(folder), "--dataset", "--as", "mloc-test/rows"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([*MLOC, "models", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "mloc-test/rows" in out.stdout and HUB_ID in out.stdout, out.stdout + out.stderr
    refused = subprocess.run([*MLOC, "models", "push", str(folder)], env=env, capture_output=True, text=True,
                             timeout=60)  # a plain folder needs --as
    assert refused.returncode == 2 and "--as" in refused.stderr


def test_bad_pushes_are_refused_with_the_field_named(coordinator: Coordinator, tmp_path: Path) -> None:
    good = {"path": "config.json", "size": 2, "sha256": "0" * 64}

    def plan(**body) -> httpx.Response:
        return coordinator.http.post("/api/v1/mirror/pushes", json={"hub_id": HUB_ID, "files": [good], **body})

    for body, field in (({"hub_id": "../etc"}, "hub_id"), ({"hub_id": "a/b/c"}, "hub_id"),
                        ({"revision": "../../x"}, "revision"), ({"kind": "checkpoint"}, "kind"),
                        ({"files": [{**good, "path": "../escape"}]}, "files.0.path"),
                        ({"files": [{**good, "path": "/abs"}]}, "files.0.path"),
                        ({"files": [{**good, "path": "a\\b"}]}, "files.0.path"),
                        ({"files": [good, good]}, "files"), ({"files": []}, "files"),
                        ({"files": [{**good, "sha256": "xyz"}]}, "files.0.sha256")):
        resp = plan(**body)
        assert resp.status_code == 422, (body, resp.text)
        assert resp.json()["error"]["field"] == field, (body, resp.json())
    assert coordinator.http.get("/api/v1/mirror", params={"kind": "weights"}).status_code == 422
    unknown = coordinator.http.post("/api/v1/mirror/pushes/nope/commit", json={"files": []})
    assert unknown.status_code == 404
    # planned but never uploaded: the commit says so and nothing is listed
    push_id = plan().json()["push_id"]
    missing = coordinator.http.post(f"/api/v1/mirror/pushes/{push_id}/commit", json={"files": []})
    assert missing.status_code == 404 and "upload" in missing.json()["error"]["message"]
    assert coordinator.http.get("/api/v1/mirror").json()["mirrored"] == []
    # another user may not replace what alice pushed, nor commit her push
    tokens = {u: coordinator.http.post("/api/v1/tokens", json={"user": u}).json()["token"] for u in ("alice", "bob")}
    push_folder(_api(coordinator, tokens["alice"]), _snapshot(tmp_path / "a"), "model", HUB_ID, "v1")
    with pytest.raises(Exception, match="only they or an admin"):
        push_folder(_api(coordinator, tokens["bob"]), _snapshot(tmp_path / "b"), "model", HUB_ID, "v1")
    alices = _api(coordinator, tokens["alice"]).post("/api/v1/mirror/pushes", json={
        "hub_id": "alice/x", "files": [good]})["push_id"]
    stolen = httpx.post(f"{coordinator.url}/api/v1/mirror/pushes/{alices}/commit", json={"files": []},
                        headers={"Authorization": f"Bearer {tokens['bob']}"})
    assert stolen.status_code == 403
    assert httpx.get(f"{coordinator.url}/api/v1/mirror").status_code == 401


def test_hub_references_of_a_spec() -> None:
    spec = {"model": {"source": {"type": "huggingface", "identifier": "org/m", "revision": "v2"}},
            "dataset": {"hub": "org/d"}}
    assert hub_references(spec) == [("model", "org/m", "v2"), ("dataset", "org/d", None)]
    assert hub_references({"model": {"source": {"identifier": "org/m"}}}) == [("model", "org/m", None)]
    for source in ({"type": "local", "identifier": "org/m"}, {"identifier": "/models/m"}, {"identifier": "~/m"},
                   {"type": "task", "identifier": "abc"}):
        assert hub_references({"model": {"source": source}}) == [], source
    assert hub_references({"dataset": {"path": "x.jsonl"}}) == []
    cache = Path("/cache/hub/models--org--name/snapshots/abc123")
    assert snapshot_identity(cache) == ("model", "org/name", "abc123")
    assert snapshot_identity(Path("/data/my-model")) is None


def test_a_task_gets_the_mirrored_copy_and_the_next_task_reuses_it(tmp_path: Path) -> None:
    coord = Coordinator(tmp_path, extra_env={"MLOC_MODEL_MIRROR": "first"}).start()
    agent = Agent(coord, "mirrored").start()
    try:
        folder = _snapshot(tmp_path / "snap")
        push_folder(_api(coord), folder, "model", HUB_ID, "main")
        script = ('python3 -c "import json,os; m=json.loads(os.environ[\'MLOC_MIRRORED\']); '
                  'p=m[\'model:' + HUB_ID + '\']; print(open(os.path.join(p, \'config.json\')).read())"')
        spec = {"taskType": "command", "command": script,
                "model": {"source": {"type": "huggingface", "identifier": HUB_ID}}}
        first = coord.submit(spec)["id"]
        done = coord.wait_state(first, {"succeeded", "failed"}, timeout=60)
        assert done["state"] == "succeeded", (done, coord.logs(first))
        assert coord.logs(first, "stdout").strip() == (folder / "config.json").read_text()
        assert "downloaded" in coord.logs(first, "system")
        held = agent.data_dir / "mirror" / "models" / HUB_ID / "main"
        assert _sha(held / "sub" / "weights.bin") == _sha(folder / "sub" / "weights.bin")
        assert (held / MANIFEST).is_file()
        second = coord.submit(spec)["id"]
        assert coord.wait_state(second, {"succeeded", "failed"}, timeout=60)["state"] == "succeeded"
        assert "already on this agent" in coord.logs(second, "system")
        # the agent reports the copy it holds (model_cache.py), and the mirror's listing says who holds it
        wait_for(lambda: coord.http.get("/api/v1/mirror").json()["mirrored"][0]["held_by"] == ["mirrored"], 30,
                 "the listing naming the agent that holds the copy")
        # a task that reads the first one's outputs gets the base that task trained on
        chained = coord.submit({"taskType": "command", "command": "echo $MLOC_MIRRORED",
                                "model": {"source": {"type": "task", "identifier": first}}})["id"]
        assert coord.wait_state(chained, {"succeeded", "failed"}, timeout=60)["state"] == "succeeded"
        assert json.loads(coord.logs(chained, "stdout")) == {f"model:{HUB_ID}": str(held)}
        # an id nobody pushed: no mirrored copy, no MLOC_MIRRORED
        other = coord.submit({**spec, "command": "echo ${MLOC_MIRRORED:-none}",
                              "model": {"source": {"type": "huggingface", "identifier": "org/unmirrored"}}})["id"]
        assert coord.wait_state(other, {"succeeded", "failed"}, timeout=60)["state"] == "succeeded"
        assert coord.logs(other, "stdout").strip() == "none"
    finally:
        agent.stop()
        coord.stop()


def test_a_big_file_goes_to_s3_in_parts_and_agents_get_presigned_urls(tmp_path: Path, moto: str) -> None:
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1", **KEYS)
    s3.create_bucket(Bucket="mloc-mirror")
    coord = Coordinator(tmp_path, extra_env={
        "MLOC_S3_BUCKET": "mloc-mirror", "MLOC_S3_ENDPOINT_URL": moto, "MLOC_S3_ACCESS_KEY_ID": "testing",
        "MLOC_S3_SECRET_ACCESS_KEY": "testing", "MLOC_MULTIPART_THRESHOLD_MB": "5", "MLOC_MULTIPART_PART_MB": "5",
    }).start()
    try:
        folder = _snapshot(tmp_path / "snap", big=(6 << 20) + 123)
        push_folder(_api(coord), folder, "model", HUB_ID, "main")
        key = f"mloc/mirror/models/{HUB_ID}/main/big.bin"
        head = s3.head_object(Bucket="mloc-mirror", Key=key)
        assert head["ContentLength"] == (folder / "big.bin").stat().st_size
        assert head["ETag"].strip('"').endswith("-2")  # two parts
        body = s3.get_object(Bucket="mloc-mirror", Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == _sha(folder / "big.bin")
    finally:
        coord.stop()


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with Range support, and records the Range headers it was sent."""

    ranges: list[str | None] = []

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        data = path.read_bytes()
        wanted = self.headers.get("Range")
        type(self).ranges.append(wanted)
        start = int(wanted.removeprefix("bytes=").rstrip("-")) if wanted else 0
        self.send_response(206 if wanted else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args) -> None:
        return None


def test_a_partial_download_resumes_with_range_and_a_finished_snapshot_is_reused(coordinator: Coordinator,
                                                                                 tmp_path: Path) -> None:
    """Through the coordinator's own blob store (it answers Range), URLs signed as the coordinator signs them."""
    served = _snapshot(tmp_path / "served", big=200_000)
    store = LocalStore(coordinator.data_dir / "artifacts", coordinator.data_dir / "blob.key", 600)
    push_folder(_api(coordinator), served, "model", HUB_ID, "main")
    files = [MirroredFile(path=p, size=(served / p).stat().st_size, sha256=_sha(served / p),
                          url=store.signed_url("GET", f"mirror/models/{HUB_ID}/main/{p}"))
             for p in ("config.json", "sub/weights.bin", "big.bin")]
    snap = MirroredSnapshot(kind="model", hub_id=HUB_ID, revision="main", files=files)
    data_dir = tmp_path / "agent"
    target = data_dir / "mirror" / "models" / HUB_ID / "main"
    target.mkdir(parents=True)
    (target / ("big.bin" + PART_SUFFIX)).write_bytes((served / "big.bin").read_bytes()[:150_000])
    lines: list[str] = []

    async def run() -> tuple[int, tuple[Path, bool], tuple[Path, bool]]:
        client = CoordinatorClient(coordinator.url)
        try:
            fetched: list[int] = []
            part = target / ("big.bin" + PART_SUFFIX)
            size = await client.download_resuming(files[2].url, str(part), fetched.append)
            assert size == files[2].size
            part.write_bytes(part.read_bytes()[:150_000])  # broken again: download_snapshot resumes it
            return sum(fetched), await download_snapshot(client, snap, data_dir, lines.append), \
                await download_snapshot(client, snap, data_dir, lines.append)
        finally:
            await client.close()

    resumed_bytes, (folder, fetched), (again, fetched_again) = asyncio.run(run())
    assert resumed_bytes == files[2].size - 150_000  # only the missing tail came
    assert folder == target and fetched and again == target and not fetched_again
    for f in files:
        assert _sha(target / f.path) == f.sha256
    assert not list(target.rglob("*" + PART_SUFFIX))
    assert any("/0.2 MB" in line for line in lines), lines


def test_a_file_that_does_not_match_its_sha256_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "served"
    root.mkdir()
    (root / "w.bin").write_bytes(b"x" * 5000)
    _RangeHandler.ranges = []
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/w.bin"
    good = MirroredFile(path="w.bin", size=5000, sha256=_sha(root / "w.bin"), url=url)
    try:
        async def run(snap: MirroredSnapshot, data_dir: Path, stopped=lambda: False) -> tuple[Path, bool]:
            client = CoordinatorClient("http://127.0.0.1:1")
            try:
                return await download_snapshot(client, snap, data_dir, lambda line: None, stopped)
            finally:
                await client.close()

        # a partial file whose bytes are wrong: resumed, found bad, fetched once more from its first byte
        folder = tmp_path / "a" / "mirror" / "models" / "o" / "main"
        folder.mkdir(parents=True)
        (folder / ("w.bin" + PART_SUFFIX)).write_bytes(b"y" * 1000)
        snap = MirroredSnapshot(kind="model", hub_id="o", revision="main", files=[good])
        assert asyncio.run(run(snap, tmp_path / "a"))[1]
        assert (folder / "w.bin").read_bytes() == b"x" * 5000
        assert _RangeHandler.ranges == ["bytes=1000-", None]
        bad = MirroredSnapshot(kind="model", hub_id="o", revision="main",
                               files=[good.model_copy(update={"sha256": "0" * 64})])
        with pytest.raises(MirrorError, match="sha256"):
            asyncio.run(run(bad, tmp_path / "b"))
        # a cancelled lease stops the download at its next block; nothing is taken for finished
        with pytest.raises(MirrorStopped):
            asyncio.run(run(snap, tmp_path / "d", stopped=lambda: True))
        assert not (tmp_path / "d" / "mirror" / "models" / "o" / "main" / MANIFEST).exists()
        leaving = MirroredSnapshot(kind="model", hub_id="o", revision="main",
                                   files=[good.model_copy(update={"path": "../../out.bin"})])
        with pytest.raises(MirrorError, match="leaves its folder"):
            asyncio.run(run(leaving, tmp_path / "c"))
    finally:
        server.shutdown()
        server.server_close()


def test_the_hub_probe_is_quick_and_cached() -> None:
    now = [1000.0]
    assert not asyncio.run(hub_reachable({"HF_HUB_OFFLINE": "1"}))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    assert asyncio.run(hub_reachable({"HF_ENDPOINT": endpoint}, now=lambda: now[0]))
    server.shutdown()
    server.server_close()
    assert asyncio.run(hub_reachable({"HF_ENDPOINT": endpoint}, now=lambda: now[0]))  # the cached answer
    now[0] += 61
    assert not asyncio.run(hub_reachable({"HF_ENDPOINT": endpoint}, now=lambda: now[0]))
