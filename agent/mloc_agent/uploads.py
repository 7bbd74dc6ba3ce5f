"""Uploading artifacts and checkpoints through URLs the coordinator presigns for the lease, and
downloading the checkpoint an attempt resumes from. Folders travel as one tar file."""

from __future__ import annotations

import asyncio
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from mloc_shared.protocol import UploadCommit, UploadedPart, UploadRequest

from mloc_agent.client import CoordinatorClient
from mloc_agent.retries import with_retries


def _tar(folder: Path) -> Path:
    fd, name = tempfile.mkstemp(suffix=".tar", dir=folder.parent)
    os.close(fd)
    with tarfile.open(name, "w") as tar:
        tar.add(folder, arcname=".")
    return Path(name)


async def upload(
    client: CoordinatorClient, task_id: str, epoch: int, path: Path, *, name: str, kind: str = "artifact",
    step: int | None = None,
) -> dict[str, Any]:
    """Upload one file or folder; returns the artifact record. Retries network faults per part."""
    packed = await asyncio.to_thread(_tar, path) if path.is_dir() else None
    source = packed or path
    try:
        size = source.stat().st_size
        plan = await with_retries(lambda: client.plan_upload(
            task_id, UploadRequest(epoch=epoch, name=name, size=size, kind=kind, step=step)), 120, "presign")  # type: ignore[arg-type]
        parts: list[UploadedPart] | None = None
        if plan.parts:
            parts = []
            part_size = plan.part_size or size
            with open(source, "rb") as fh:
                for part in plan.parts:
                    fh.seek((part.part_number - 1) * part_size)
                    data = fh.read(part_size)
                    etag = await with_retries(lambda u=part.url, d=data: client.put_bytes(u, d), 300, "part upload")
                    parts.append(UploadedPart(part_number=part.part_number, etag=etag))
        else:
            assert plan.url is not None
            await with_retries(lambda: client.put_file(plan.url, str(source), plan.headers), 300, "upload")
        return await with_retries(lambda: client.commit_upload(
            task_id, plan.upload_id, UploadCommit(epoch=epoch, upload_id=plan.upload_id, parts=parts)), 120, "commit")
    finally:
        if packed is not None:
            packed.unlink(missing_ok=True)


async def fetch_checkpoint(client: CoordinatorClient, url: str, dest: Path) -> Path:
    """Download a checkpoint and unpack it into ``dest`` (tar) or keep it as a file."""
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / (dest.name + ".download")
    await with_retries(lambda: client.download(url, str(tmp)), 600, "checkpoint download")

    def unpack() -> None:
        if tarfile.is_tarfile(tmp):
            with tarfile.open(tmp) as tar:
                tar.extractall(dest, filter="data")
            tmp.unlink()
        else:
            tmp.rename(dest / "checkpoint")

    await asyncio.to_thread(unpack)
    return dest
