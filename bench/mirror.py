"""The model mirror's transfer rates: ``python -m bench.mirror [--mb 256] [--files 4]``.

Starts a coordinator with its embedded store, pushes a folder of random files as a model snapshot
(what ``mloc models push DIR --as ID`` does), then fetches it as an agent would, through presigned
URLs: once from nothing, once resuming every file from its middle, and once more (already on the
agent: its manifest is compared, nothing is read). Prints MB/s for each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from mloc_agent.client import CoordinatorClient
from mloc_agent.mirror import PART_SUFFIX, download_snapshot
from mloc_server.artifacts.local import LocalStore
from mloc_shared.api_client import ApiClient
from mloc_shared.mirror import MirroredFile, MirroredSnapshot
from mloc_shared.mirror_push import push_folder

from tests.harness import Coordinator

HUB_ID = "bench/mirror"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="the snapshot's size")
    parser.add_argument("--files", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "snapshot"
        folder.mkdir()
        size = (args.mb << 20) // args.files
        for i in range(args.files):
            (folder / f"model-{i:05d}.safetensors").write_bytes(os.urandom(size))
        coord = Coordinator(root / "run").start()
        try:
            started = time.perf_counter()
            entry = push_folder(ApiClient(coord.url, coord.admin_token), folder, "model", HUB_ID, "main")
            push_s = time.perf_counter() - started
            store = LocalStore(coord.data_dir / "artifacts", coord.data_dir / "blob.key", 600)
            snap = MirroredSnapshot(kind="model", hub_id=HUB_ID, revision="main", files=[
                MirroredFile(**f, url=store.signed_url("GET", f"mirror/models/{HUB_ID}/main/{f['path']}"))
                for f in entry["files"]])
            agent_dir = root / "agent"
            timings = asyncio.run(_fetches(coord.url, snap, agent_dir))
        finally:
            coord.stop()
    total = args.mb
    print(f"snapshot: {args.files} files, {total} MB (hashing included in every figure)")
    print(f"push (list + sha256 + upload + commit): {push_s:6.2f} s  {total / push_s:7.1f} MB/s")
    for label, seconds, moved in timings:
        rate = f"{moved / seconds:7.1f} MB/s of what moved" if moved else "nothing moved"
        print(f"{label:38s} {seconds:6.3f} s  {rate}")


async def _fetches(url: str, snap: MirroredSnapshot, data_dir: Path) -> list[tuple[str, float, float]]:
    client = CoordinatorClient(url)
    total = sum(f.size for f in snap.files) / (1 << 20)
    out = []
    try:
        started = time.perf_counter()
        await download_snapshot(client, snap, data_dir, lambda line: None)
        out.append(("fetch from nothing", time.perf_counter() - started, total))
        folder = data_dir / "mirror" / "models" / HUB_ID / "main"
        (folder / ".mloc-mirror.json").unlink()
        for f in snap.files:  # every file broken off half way
            target = folder / f.path
            target.rename(target.with_name(target.name + PART_SUFFIX))
            os.truncate(target.with_name(target.name + PART_SUFFIX), f.size // 2)
        started = time.perf_counter()
        await download_snapshot(client, snap, data_dir, lambda line: None)
        out.append(("resume every file from its middle", time.perf_counter() - started, total / 2))
        started = time.perf_counter()
        await download_snapshot(client, snap, data_dir, lambda line: None)
        out.append(("already on the agent", time.perf_counter() - started, 0.0))
    finally:
        await client.close()
    return out


if __name__ == "__main__":
    main()
