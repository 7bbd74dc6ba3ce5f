"""The embedded artifact store: files under ``<data_dir>/artifacts``, behind HMAC-signed URLs.

URLs are relative to the coordinator (``/api/v1/blobs/<key>?exp=..&sig=..``); agents resolve them
against the coordinator URL they already use. A signature covers method, key and expiry.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from urllib.parse import quote

from mloc_shared.errors import Forbidden, NotFound, ValidationFailed

from mloc_server.artifacts.base import PlannedUpload


class LocalStore:
    def __init__(self, root: Path, secret_file: Path, expiry_s: int) -> None:
        self.root = root
        self.expiry_s = expiry_s
        self.root.mkdir(parents=True, exist_ok=True)
        if not secret_file.exists():
            secret_file.touch(mode=0o600)
            secret_file.write_text(secrets.token_hex(32))
        self._key = bytes.fromhex(secret_file.read_text().strip())

    def _sign(self, method: str, key: str, exp: int) -> str:
        return hmac.new(self._key, f"{method}\n{key}\n{exp}".encode(), hashlib.sha256).hexdigest()

    def signed_url(self, method: str, key: str) -> str:
        exp = int(time.time()) + self.expiry_s
        return f"/api/v1/blobs/{quote(key)}?exp={exp}&sig={self._sign(method, key, exp)}"

    def verify(self, method: str, key: str, exp: str | None, sig: str | None) -> None:
        try:
            expiry = int(exp or "")
        except ValueError:
            raise Forbidden("the URL is not signed") from None
        if not sig or not sig.isascii() or not hmac.compare_digest(sig, self._sign(method, key, expiry)):
            raise Forbidden("bad signature for this URL")
        if expiry < time.time():
            raise Forbidden("this URL has expired; ask the coordinator for a new one")

    def path_for(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not str(path).startswith(str(self.root.resolve()) + os.sep):
            raise ValidationFailed("bad storage key", field="key")
        return path

    async def plan_upload(self, key: str, size: int) -> PlannedUpload:
        return PlannedUpload(url=self.signed_url("PUT", key))

    async def finish_upload(self, key: str, multipart_id: str | None, parts: list[tuple[int, str]]) -> None:
        if not self.path_for(key).exists():
            raise NotFound("the file was not uploaded; PUT it to the upload URL first")

    def download_url(self, key: str) -> str:
        return self.signed_url("GET", key)

    async def close(self) -> None:
        return None
