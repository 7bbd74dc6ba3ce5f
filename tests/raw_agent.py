"""The agent protocol spoken by hand (httpx + the shared wire models): for tests that need an agent
to do what a real one never would (touch another agent's lease) or many agents cheaply."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from mloc_shared.protocol import Gpu, Inventory, PollRequest, RegisterRequest
from mloc_shared.version import PROTOCOL_HEADER, PROTOCOL_VERSION

PROTO = {PROTOCOL_HEADER: str(PROTOCOL_VERSION)}


def register_body(name: str, gpus: int = 1, labels: dict[str, str] | None = None) -> str:
    inv = Inventory(hostname=f"host-{name}", gpu_source="declared", gpus=[
        Gpu(index=g, uuid=f"GPU-{name}-{g}", name="NVIDIA A100-SXM4-80GB", memory_total_mb=81920,
            compute_capability="8.0", declared=True) for g in range(gpus)])
    return RegisterRequest(agent_version="0.1.0", name=name, labels=labels or {}, inventory=inv,
                           task_types=["command"], max_tasks=max(1, gpus)).model_dump_json()


class RawAgent:
    def __init__(self, url: str, name: str, join_token: str, gpus: int = 1, labels: dict[str, str] | None = None,
                 **client: Any) -> None:
        self.name = name
        self.http = httpx.Client(base_url=url, timeout=30, headers=PROTO, **client)
        resp = self.register(join_token, gpus, labels)
        assert resp.status_code == 201, resp.text
        self.credential = resp.json()["credential"]
        self.http.headers["Authorization"] = f"Bearer {self.credential}"

    def register(self, join_token: str, gpus: int = 1, labels: dict[str, str] | None = None) -> httpx.Response:
        return self.http.post("/api/v1/agents/register", content=register_body(self.name, gpus, labels),
                              headers={"X-MLOC-Join-Token": join_token})

    def poll(self, free_slots: int = 1) -> dict[str, Any]:
        req = PollRequest(poll_id=uuid.uuid4().hex, free_slots=free_slots)
        resp = self.http.post("/api/v1/agents/poll", content=req.model_dump_json())
        assert resp.status_code == 200, resp.text
        return resp.json()

    def call(self, task_id: str, what: str, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(f"/api/v1/leases/{task_id}/{what}", json=body)

    def close(self) -> None:
        self.http.close()
