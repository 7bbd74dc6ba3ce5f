"""A real coordinator and a real agent on this machine, driven over REST only.

Both are started as a user starts them (``python -m mloc_shared.cli.main start --node-type ...``,
through tests/harness.py as bench.core does). The agent declares no GPU: what it reports is what
NVML found. While a task runs, a thread reads ``/api/v1/workers`` once a second, so the report
holds what the coordinator was told (the GPU's utilisation and memory, the task's progress).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.gpu import nvml
from tests.harness import FINAL, Agent, Coordinator

AGENT = "gpu-kit"
WATCH_S = 1.0
REPO = Path(__file__).resolve().parents[2]


class Cluster:
    def __init__(self, root: Path, readable: Path) -> None:
        # the coordinator's default heartbeat and lease TTL (what MLOC's overhead is measured with);
        # polls held 5 s instead of 25 s so the agent's GPU stats (sent with a poll, every 15 s at
        # most) reach the coordinator while a task of a minute runs
        self.coordinator = Coordinator(root, heartbeat_s=10.0, lease_ttl_s=45.0, poll_hold_s=5.0)
        # as the agent's operator: the kit's TrainerCallback (hyperparameters.callbacks) on its path, which
        # tasks inherit, and the kit's model and data folder among those tasks may read
        self.agent = Agent(self.coordinator, AGENT, max_tasks=1, extra_env={
            "MLOC_CANCEL_GRACE_S": "10", "PYTHONPATH": str(REPO), "MLOC_TASK_PATH_ROOTS": str(readable)})

    def start(self) -> float:
        started = time.monotonic()
        self.coordinator.start()
        self.agent.start()
        return time.monotonic() - started

    def stop(self) -> None:
        self.agent.stop()
        self.coordinator.stop()

    def worker(self) -> dict[str, Any]:
        return next(w for w in self.coordinator.workers() if w["name"] == AGENT)

    def run(self, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Submit, watch until final, and return the task record with what was seen meanwhile. One
        read of the task and one of the workers a second: the kit's own load stays off the measure."""
        sampler = nvml.Sampler()
        baseline = sampler.baseline()
        seen: list[dict[str, Any]] = []
        task = self.coordinator.submit(spec)
        sampler.start()
        deadline = time.monotonic() + timeout
        try:
            while True:
                record = self.coordinator.task(task["id"])
                if record["state"] in FINAL:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"task {task['id']} still {record['state']} after {timeout:g}s")
                self._sample(seen)
                time.sleep(WATCH_S)
        finally:
            device = sampler.stop()
        return {"task": record, "worker_samples": seen, "nvml": {"baseline": baseline, **device}}

    def _sample(self, seen: list[dict[str, Any]]) -> None:
        try:
            w = self.worker()
        except Exception:  # a read that fails is a missing sample, not a failed phase
            return
        gpus = [{k: g.get(k) for k in ("index", "utilization_pct", "memory_used_mb", "task_id")} for g in w["gpus"]]
        seen.append({"t": time.time(), "gpus": gpus, "progress": [lease.get("progress") for lease in w["leases"]]})

    def artifact(self, task_id: str, name: str) -> bytes | None:
        resp = self.coordinator.http.get(f"/api/v1/tasks/{task_id}/artifacts/{name}", follow_redirects=True)
        return resp.content if resp.status_code == 200 else None

    def logs(self, task_id: str) -> str:
        return self.coordinator.logs(task_id)
