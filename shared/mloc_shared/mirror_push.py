"""``mloc models push``: put a hub snapshot (or a local folder standing for one) into the coordinator's mirror.

Runs on the caller's machine, where the hub is reachable: a hub id is fetched there with
``huggingface_hub.snapshot_download``; the files then go straight to the artifact store through
the URLs the coordinator presigns (one PUT per file, or parts for a big file on S3), and a commit
lists the snapshot. The coordinator never reads the bytes unless it is the store itself.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from mloc_shared.api_client import ApiClient
from mloc_shared.errors import ValidationFailed, error_from_body
from mloc_shared.mirror import (
    CommittedFile,
    MirrorFile,
    PlannedFile,
    PushCommit,
    PushPlan,
    PushRequest,
    check_file_path,
    check_hub_id,
    check_revision,
)
from mloc_shared.protocol import UploadedPart

SKIPPED_DIRS = {".git", ".cache", ".huggingface"}
SKIPPED_SUFFIXES = (".lock", ".incomplete", ".mloc-part")
SKIPPED_FILES = {".mloc-mirror.json"}
CHUNK = 1 << 20


def snapshot_files(folder: Path) -> list[MirrorFile]:
    """Every file under ``folder`` (symlinks of a hub cache followed), with its size and sha256."""
    out: list[MirrorFile] = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            if name in SKIPPED_FILES or name.endswith(SKIPPED_SUFFIXES):
                continue
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            check_file_path(rel, "files")
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                while block := fh.read(CHUNK):
                    digest.update(block)
            out.append(MirrorFile(path=rel, size=path.stat().st_size, sha256=digest.hexdigest()))
    if not out:
        raise ValidationFailed(f"{folder} holds no files to push", field="ID_OR_DIR")
    return out


def snapshot_identity(folder: Path) -> tuple[str, str, str] | None:
    """(kind, hub id, revision) of a hub cache snapshot folder (``…/models--org--name/snapshots/<rev>``)."""
    parts = folder.resolve().parts
    if len(parts) < 3 or parts[-2] != "snapshots":
        return None
    repo = parts[-3]
    for prefix, kind in (("models--", "model"), ("datasets--", "dataset")):
        if repo.startswith(prefix):
            return kind, repo[len(prefix):].replace("--", "/"), parts[-1]
    return None


def fetch_from_hub(hub_id: str, kind: str, revision: str | None) -> Path:
    """The snapshot's folder in this machine's hub cache, downloaded now if it is not there."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValidationFailed("pushing a hub id needs huggingface_hub on this machine (pip install "
                               "huggingface_hub), or push a local folder with --as", field="ID_OR_DIR") from None
    return Path(snapshot_download(hub_id, repo_type=kind, revision=revision))


def _chunks(path: Path, offset: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        fh.seek(offset)
        left = length
        while left > 0 and (block := fh.read(min(CHUNK, left))):
            left -= len(block)
            yield block


def _put(http: httpx.Client, url: str, path: Path, offset: int, length: int, headers: dict[str, str]) -> str:
    resp = http.put(url, content=_chunks(path, offset, length), headers={**headers, "Content-Length": str(length)})
    if resp.status_code >= 400:
        try:
            body: Any = resp.json()
        except ValueError:
            body = {"error": {"message": f"upload failed with HTTP {resp.status_code}: {resp.text[:200]}"}}
        raise error_from_body(resp.status_code, body)
    return resp.headers.get("ETag", "")


def upload_file(http: httpx.Client, base_url: str, folder: Path, f: MirrorFile, plan: PlannedFile) -> CommittedFile:
    """One file to the presigned URL(s) of its plan: a single PUT, or its parts in order."""
    path = folder / f.path
    if plan.url is not None:
        _put(http, urljoin(base_url + "/", plan.url), path, 0, f.size, plan.headers)
        return CommittedFile(path=f.path)
    assert plan.parts and plan.part_size
    parts = []
    for part in plan.parts:
        offset = (part.part_number - 1) * plan.part_size
        etag = _put(http, urljoin(base_url + "/", part.url), path, offset, min(plan.part_size, f.size - offset), {})
        parts.append(UploadedPart(part_number=part.part_number, etag=etag))
    return CommittedFile(path=f.path, parts=parts)


def push_folder(api: ApiClient, folder: Path, kind: str, hub_id: str, revision: str,
                on_file: Callable[[MirrorFile], None] = lambda f: None) -> dict[str, Any]:
    """List, upload and commit ``folder`` as the mirrored snapshot ``hub_id@revision``; the entry listed."""
    check_hub_id(hub_id, "--as")
    check_revision(revision, "--revision")
    files = snapshot_files(folder)
    request = PushRequest(kind=kind, hub_id=hub_id, revision=revision, files=files)  # type: ignore[arg-type]
    plan = PushPlan.model_validate(api.post("/api/v1/mirror/pushes", json=request.model_dump()))
    by_path = {p.path: p for p in plan.files}
    committed = []
    with httpx.Client(verify=api.verify, timeout=httpx.Timeout(300.0, connect=10.0)) as http:
        for f in files:
            committed.append(upload_file(http, api.base_url, folder, f, by_path[f.path]))
            on_file(f)
    return api.post(f"/api/v1/mirror/pushes/{plan.push_id}/commit", json=PushCommit(files=committed).model_dump())


def resolve_source(ref: str, kind: str, as_id: str | None, revision: str | None) -> tuple[Path, str, str]:
    """(folder, hub id, revision) for ``mloc models push``'s argument: an existing folder is pushed as
    it is (named by --as, or by its place in a hub cache); anything else is a hub id fetched here."""
    folder = Path(ref).expanduser()
    if folder.is_dir():
        known = snapshot_identity(folder)
        if as_id is None and (known is None or known[0] != kind):
            raise ValidationFailed(f"{ref} is a folder but not a hub cache snapshot: name its hub id with --as "
                                   "org/name", field="--as")
        hub_id = as_id or (known[1] if known else "")
        return folder, hub_id, revision or (known[2] if known and as_id is None else "main")
    check_hub_id(ref, "ID_OR_DIR")
    return fetch_from_hub(ref, kind, revision), as_id or ref, revision or "main"
