"""A small synchronous client of the user API, for the CLI and scripts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from mloc_shared.errors import error_from_body


class ApiClient:
    def __init__(self, base_url: str, token: str | None = None, ca_bundle: str | None = None,
                 timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.verify: str | bool = ca_bundle if ca_bundle else True
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers,
                                  verify=ca_bundle if ca_bundle else True, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _check(self, resp: httpx.Response) -> Any:
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"error": {"message": resp.text[:300]}}
            raise error_from_body(resp.status_code, body)
        return resp.json() if resp.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self._check(self._http.get(path, params={k: v for k, v in params.items() if v is not None}))

    def post(self, path: str, *, json: Any = None, content: bytes | None = None,
             headers: dict[str, str] | None = None) -> Any:
        return self._check(self._http.post(path, json=json, content=content, headers=headers))

    def patch(self, path: str, *, json: Any = None) -> Any:
        return self._check(self._http.patch(path, json=json))

    def delete(self, path: str) -> Any:
        return self._check(self._http.delete(path))

    def submit(self, body: bytes, idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/yaml"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return self.post("/api/v1/tasks", content=body, headers=headers)

    def follow_logs(self, task_id: str) -> Iterator[str]:
        with self._http.stream("GET", f"/api/v1/tasks/{task_id}/logs", params={"follow": "1"},
                               timeout=httpx.Timeout(30.0, read=None)) as resp:
            if resp.status_code >= 400:
                resp.read()
                self._check(resp)
            yield from resp.iter_text()

    def download(self, task_id: str, name: str, dest: str) -> int:
        size = 0
        with self._http.stream("GET", f"/api/v1/tasks/{task_id}/artifacts/{name}", follow_redirects=True) as resp:
            if resp.status_code >= 400:
                resp.read()
                self._check(resp)
            with open(dest, "wb") as fh:
                for block in resp.iter_bytes():
                    fh.write(block)
                    size += len(block)
        return size
