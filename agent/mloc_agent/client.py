"""The agent's only HTTP code: typed calls to the coordinator. Presigned URLs for artifacts are
fetched here too. Every failure is an ``MlocError``: an answer rebuilt from its error body, or a
``TransportFault`` when none came; retries.py decides which are retried.

Two clients, each where it is best: protocol calls (poll, heartbeat, logs, completions — several
per task, on the hot path) go through aiohttp, which costs about a third of httpx's time per call;
artifact bytes (streamed PUTs with a Content-Length to presigned S3 URLs, downloads) use httpx.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urljoin

import aiohttp
import httpx
from mloc_shared.errors import TransportFault, error_from_body
from mloc_shared.mirror import MirrorRequest, MirrorResponse
from mloc_shared.protocol import (
    Completion,
    CompletionBatch,
    CompletionResults,
    HeartbeatRequest,
    HeartbeatResponse,
    LogBatch,
    PollRequest,
    PollResponse,
    RegisterRequest,
    RegisterResponse,
    SecretsRequest,
    SecretsResponse,
    SourcesRequest,
    SourcesResponse,
    UploadCommit,
    UploadPlan,
    UploadRequest,
)
from mloc_shared.version import PROTOCOL_HEADER, PROTOCOL_VERSION
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def _fault(exc: BaseException) -> TransportFault:
    return TransportFault(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


@contextlib.contextmanager
def _blob_faults() -> Iterator[None]:
    """httpx's transport errors (artifact transfers) as the error tree's TransportFault."""
    try:
        yield
    except httpx.TransportError as exc:
        raise _fault(exc) from exc


class CoordinatorClient:
    def __init__(self, base_url: str, *, ca_bundle: str | None = None, poll_hold_s: float = 25.0) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.credential: str | None = None
        self.poll_hold_s = poll_hold_s
        self.ca_bundle = ca_bundle
        self._session: aiohttp.ClientSession | None = None  # made in the running loop, on first use
        verify: Any = ca_bundle if ca_bundle else True
        # artifact bytes go to presigned URLs, possibly on another host: no credential on those
        self._blobs = httpx.AsyncClient(verify=verify, timeout=httpx.Timeout(300.0, connect=10.0))

    def _protocol_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            tls: ssl.SSLContext | bool = ssl.create_default_context(cafile=self.ca_bundle) if self.ca_bundle else True
            self._session = aiohttp.ClientSession(
                # idle connections closed after 5 s, as httpx does: the held poll's connection is reused
                # back to back, a heartbeat (every 10-15 s) opens its own. Kept heartbeat connections
                # double the coordinator's sockets and, at 5,000 agents in bench.scale, showed 150-300 ms
                # garbage-collection pauses in it (docs/benchmarks.md)
                connector=aiohttp.TCPConnector(limit=16, ssl=tls, keepalive_timeout=5),
                headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION)}, cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self._blobs.aclose()

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"} if self.credential else {}

    async def _post(self, path: str, body: BaseModel, model: type[M] | None, *, timeout: float | None = None,
                    headers: dict[str, str] | None = None) -> Any:
        try:
            async with self._protocol_session().post(
                self.base_url + path, data=body.model_dump_json(),
                headers={"Content-Type": "application/json", **self._auth(), **(headers or {})},
                timeout=aiohttp.ClientTimeout(total=timeout if timeout is not None else 30.0, sock_connect=10.0),
            ) as resp:
                status, raw = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _fault(exc) from exc
        if status >= 400:
            raise error_from_body(status, _error_payload(status, raw))
        return model.model_validate_json(raw) if model is not None else json.loads(raw)

    async def register(self, req: RegisterRequest, join_token: str | None) -> RegisterResponse:
        headers = {"X-MLOC-Join-Token": join_token} if join_token else {}
        return await self._post("api/v1/agents/register", req, RegisterResponse, headers=headers)

    async def poll(self, req: PollRequest) -> PollResponse:
        # the client waits the server's hold plus a margin (GitHub runner: 50 s hold / 60 s timeout)
        return await self._post("api/v1/agents/poll", req, PollResponse, timeout=self.poll_hold_s + 15)

    async def heartbeat(self, task_id: str, req: HeartbeatRequest, timeout: float) -> HeartbeatResponse:
        return await self._post(f"api/v1/leases/{task_id}/heartbeat", req, HeartbeatResponse, timeout=timeout)

    async def logs(self, task_id: str, batch: LogBatch) -> None:
        await self._post(f"api/v1/leases/{task_id}/logs", batch, None)

    async def complete(self, task_id: str, c: Completion) -> dict[str, Any]:
        return await self._post(f"api/v1/leases/{task_id}/complete", c, None)

    async def complete_many(self, batch: CompletionBatch) -> CompletionResults:
        return await self._post("api/v1/agents/completions", batch, CompletionResults)

    async def plan_upload(self, task_id: str, req: UploadRequest) -> UploadPlan:
        return await self._post(f"api/v1/leases/{task_id}/uploads", req, UploadPlan)

    async def commit_upload(self, task_id: str, upload_id: str, req: UploadCommit) -> dict[str, Any]:
        return await self._post(f"api/v1/leases/{task_id}/uploads/{upload_id}/commit", req, None)

    async def sources(self, task_id: str, req: SourcesRequest) -> SourcesResponse:
        return await self._post(f"api/v1/leases/{task_id}/sources", req, SourcesResponse)

    async def mirror(self, task_id: str, req: MirrorRequest) -> MirrorResponse:
        return await self._post(f"api/v1/leases/{task_id}/mirror", req, MirrorResponse)

    async def secrets(self, task_id: str, req: SecretsRequest) -> SecretsResponse:
        return await self._post(f"api/v1/leases/{task_id}/secrets", req, SecretsResponse)

    def absolute(self, url: str) -> str:
        """Presigned URLs of the embedded store are relative to the coordinator."""
        return urljoin(self.base_url, url.lstrip("/")) if url.startswith("/") else url

    async def put_bytes(self, url: str, data: bytes, headers: dict[str, str] | None = None) -> str:
        with _blob_faults():
            resp = await self._blobs.put(self.absolute(url), content=data, headers=headers or {})
        if resp.status_code >= 400:
            raise error_from_body(resp.status_code, _error_payload(resp.status_code, resp.content))
        return resp.headers.get("ETag", "")

    async def put_file(self, url: str, path: str, headers: dict[str, str] | None = None) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    yield block

        hdrs = {"Content-Length": str(os.path.getsize(path)), **(headers or {})}
        with _blob_faults():
            resp = await self._blobs.put(self.absolute(url), content=chunks(), headers=hdrs)
        if resp.status_code >= 400:
            raise error_from_body(resp.status_code, _error_payload(resp.status_code, resp.content))

    async def download(self, url: str, dest: str) -> int:
        size = 0
        with _blob_faults():  # the body too: a connection can break mid-download
            async with self._blobs.stream("GET", self.absolute(url)) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise error_from_body(resp.status_code, _error_payload(resp.status_code, resp.content))
                with open(dest, "wb") as fh:
                    async for block in resp.aiter_bytes(1 << 20):
                        fh.write(block)
                        size += len(block)
        return size


    async def download_resuming(self, url: str, dest: str, on_bytes: Callable[[int], None]) -> int:
        """GET ``url`` into ``dest``, continuing a partial ``dest`` with a Range request (a server that
        answers 200 instead of 206 sends it all again); returns the file's size."""
        have = os.path.getsize(dest) if os.path.exists(dest) else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with _blob_faults():
            async with self._blobs.stream("GET", self.absolute(url), headers=headers) as resp:
                if resp.status_code == 416 and have:  # nothing after what we have: it is all here
                    return have
                if resp.status_code >= 400:
                    await resp.aread()
                    raise error_from_body(resp.status_code, _error_payload(resp.status_code, resp.content))
                if resp.status_code != 206:
                    have = 0
                with open(dest, "ab" if have else "wb") as fh:
                    async for block in resp.aiter_bytes(1 << 20):
                        fh.write(block)
                        have += len(block)
                        on_bytes(len(block))
        return have


def _error_payload(status: int, raw: bytes) -> Any:
    """The coordinator's JSON error body, or its first bytes as the message (a proxy's HTML page)."""
    try:
        return json.loads(raw)
    except ValueError:
        return {"error": {"message": raw[:200].decode(errors="replace") or f"HTTP {status}"}}
