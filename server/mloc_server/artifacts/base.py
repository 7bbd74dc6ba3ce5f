"""The object-store seam: where artifact bytes live. The coordinator only presigns; agents move bytes.

Two implementations: ``LocalStore`` (the embedded default: files under the coordinator's data dir,
URLs signed with HMAC and served by the coordinator) and ``S3Store`` (any S3-compatible service:
presigned PUT, multipart for large files, presigned GET).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

from mloc_shared.errors import ValidationFailed

_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def check_artifact_name(name: str) -> str:
    """A relative path of plain segments: no '..', no absolute path, no control characters."""
    if not name or len(name) > 512:
        raise ValidationFailed("artifact name must be 1..512 characters", field="name")
    if _BAD_CHARS.search(name):
        raise ValidationFailed("artifact name has a control character or a backslash", field="name")
    if name.startswith("/") or any(seg in ("", ".", "..") for seg in name.split("/")):
        raise ValidationFailed(
            f"artifact name {name!r} must be a relative path without '.', '..' or empty segments", field="name"
        )
    return name


@dataclass
class PlannedUpload:
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    multipart_id: str | None = None
    part_size: int | None = None
    part_urls: list[str] = field(default_factory=list)


class ArtifactStore(Protocol):
    async def plan_upload(self, key: str, size: int) -> PlannedUpload:
        """Presign the upload of ``size`` bytes to ``key`` (one PUT, or parts)."""

    async def finish_upload(self, key: str, multipart_id: str | None, parts: list[tuple[int, str]]) -> None:
        """Complete a multipart upload from its parts' ETags; check a single PUT arrived."""

    def download_url(self, key: str) -> str:
        """A presigned GET URL (absolute for S3; coordinator-relative for the local store)."""

    async def close(self) -> None: ...
