"""An S3-compatible artifact store: presigned PUT (multipart above a threshold), presigned GET.

Agents never see the store's credentials: they get URLs valid for one object and a short time.
boto3 calls that touch the network (create/complete multipart) run in a thread.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from mloc_shared.errors import Unavailable, ValidationFailed

from mloc_server.artifacts.base import PlannedUpload

MAX_PARTS = 10_000


class S3Store:
    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None,
        region: str,
        access_key_id: str | None,
        secret_access_key: str | None,
        prefix: str,
        multipart_threshold: int,
        part_size: int,
        expiry_s: int,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.expiry_s = expiry_s
        self.client: Any = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region, aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"},
                          s3={"addressing_style": "path"}),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    async def _call(self, fn, **kwargs) -> Any:
        try:
            return await asyncio.to_thread(fn, **kwargs)
        except Exception as exc:  # botocore raises many types; the message is what helps
            raise Unavailable(f"object store call failed: {exc}") from None

    async def plan_upload(self, key: str, size: int) -> PlannedUpload:
        full = self._key(key)
        if size < self.multipart_threshold:
            url = self.client.generate_presigned_url(
                "put_object", Params={"Bucket": self.bucket, "Key": full}, ExpiresIn=self.expiry_s)
            return PlannedUpload(url=url)
        part_size = max(self.part_size, math.ceil(size / MAX_PARTS))
        count = math.ceil(size / part_size)
        if count > MAX_PARTS:
            raise ValidationFailed("file too large for a multipart upload", field="size")
        created = await self._call(self.client.create_multipart_upload, Bucket=self.bucket, Key=full)
        upload_id = created["UploadId"]
        urls = [
            self.client.generate_presigned_url(
                "upload_part",
                Params={"Bucket": self.bucket, "Key": full, "UploadId": upload_id, "PartNumber": n},
                ExpiresIn=self.expiry_s,
            )
            for n in range(1, count + 1)
        ]
        return PlannedUpload(multipart_id=upload_id, part_size=part_size, part_urls=urls)

    async def finish_upload(self, key: str, multipart_id: str | None, parts: list[tuple[int, str]]) -> None:
        full = self._key(key)
        if multipart_id is None:
            await self._call(self.client.head_object, Bucket=self.bucket, Key=full)
            return
        if not parts:
            raise ValidationFailed("a multipart upload needs its parts' ETags", field="parts")
        await self._call(
            self.client.complete_multipart_upload, Bucket=self.bucket, Key=full, UploadId=multipart_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in sorted(parts)]},
        )

    def download_url(self, key: str) -> str:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=self.expiry_s)

    async def close(self) -> None:
        self.client.close()
