"""An agent's side of the protocol spoken by hand (typed wire models, one httpx client), for tests that
need a real credential and a live lease but must never run what they are handed (fuzzers, bad input)."""

from __future__ import annotations

import uuid

import httpx
from mloc_shared.protocol import (
    Completion,
    HeartbeatRequest,
    Inventory,
    Lease,
    LogBatch,
    LogChunk,
    PollRequest,
    PollResponse,
    RegisterRequest,
    UploadCommit,
    UploadPlan,
    UploadRequest,
)
from mloc_shared.version import PROTOCOL_HEADER, PROTOCOL_VERSION

from tests.harness import Coordinator


class ProtocolPeer:
    """Registers like an agent (join token), then claims, reports and finishes leases on request."""

    def __init__(self, coord: Coordinator, name: str) -> None:
        self.coord = coord
        self.name = name
        req = RegisterRequest(agent_version="test-peer", name=name, task_types=["command"], max_tasks=4,
                              inventory=Inventory(hostname=f"{name}-host", cpu_count=2, memory_mb=1024))
        resp = httpx.post(f"{coord.url}/api/v1/agents/register", content=req.model_dump_json(), timeout=10,
                          headers={"X-MLOC-Join-Token": coord.join_token, PROTOCOL_HEADER: str(PROTOCOL_VERSION)})
        assert resp.status_code == 201, resp.text
        self.credential: str = resp.json()["credential"]
        self.headers = {"Authorization": f"Bearer {self.credential}", PROTOCOL_HEADER: str(PROTOCOL_VERSION)}
        self.http = httpx.Client(base_url=coord.url, headers=self.headers, timeout=30)
        self.current: Lease | None = None
        self.submitted = 0  # tasks claim() queued, for tests that count what is stored

    def close(self) -> None:
        self.http.close()

    def _post(self, path: str, body: object, status: int = 200) -> dict:
        resp = self.http.post(path, content=body.model_dump_json())  # type: ignore[attr-defined]
        assert resp.status_code == status, (path, resp.status_code, resp.text)
        return resp.json()

    def poll(self, free_slots: int = 1) -> PollResponse:
        req = PollRequest(poll_id=uuid.uuid4().hex, free_slots=free_slots)
        return PollResponse.model_validate(self._post("/api/v1/agents/poll", req))

    def claim(self) -> Lease:
        """Queue a harmless command task and take a lease (this peer runs nothing: it only reports)."""
        self.coord.http.post(f"/api/v1/agents/{self.name}/undrain")  # a fuzzer may have drained it
        self.coord.submit({"taskType": "command", "name": "peer-held", "command": "true"})
        self.submitted += 1
        for _ in range(10):
            leases = self.poll().leases
            if leases:
                self.current = leases[0]
                return self.current
        raise AssertionError("no lease offered to the protocol peer")

    def alive(self) -> Lease:
        """The lease held now, renewed; a fresh one when the last was finished or lost."""
        if self.current is not None:
            beat = HeartbeatRequest(epoch=self.current.epoch)
            if self.http.post(f"/api/v1/leases/{self.current.task_id}/heartbeat",
                              content=beat.model_dump_json()).status_code == 200:
                return self.current
        return self.claim()

    def log(self, lease: Lease, *lines: str) -> None:
        chunks = [LogChunk(seq=i, data=line) for i, line in enumerate(lines)]
        self._post(f"/api/v1/leases/{lease.task_id}/logs", LogBatch(epoch=lease.epoch, chunks=chunks))

    def upload(self, lease: Lease, name: str, data: bytes) -> UploadPlan:
        """Plan, PUT (to the coordinator's embedded store) and commit one artifact."""
        plan = UploadPlan.model_validate(self._post(f"/api/v1/leases/{lease.task_id}/uploads",
                                                    UploadRequest(epoch=lease.epoch, name=name, size=len(data)),
                                                    status=201))
        assert plan.url is not None
        assert httpx.put(f"{self.coord.url}{plan.url}", content=data, timeout=30).status_code == 201
        self._post(f"/api/v1/leases/{lease.task_id}/uploads/{plan.upload_id}/commit",
                   UploadCommit(epoch=lease.epoch, upload_id=plan.upload_id))
        return plan

    def finish(self, lease: Lease, outcome: str = "succeeded") -> None:
        done = Completion(epoch=lease.epoch, outcome=outcome, exit_code=0, result={"ok": True})
        self._post(f"/api/v1/leases/{lease.task_id}/complete", done)
        self.current = None
