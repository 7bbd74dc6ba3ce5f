"""Simulated agents for bench/scale.py: thousands of protocol-faithful agents in one process.

    python -m bench.simagent --url http://127.0.0.1:8000 --join-token T --agents 5000 --prefix sim0
                             --status status.json --out stats.json

Each simulated agent does what a real one does on the wire (docs/protocol.md) and nothing else:
it registers with the join token, holds a long poll on its own keep-alive connection (re-polling
when the hold ends), and for every lease it holds sends a heartbeat every ``heartbeat_s`` (the
server's timing, with the real agent's jitter) carrying progress. It never runs a task: a lease
whose spec is named ``probe-…`` is recorded (when it arrived) and completed in the next poll;
any other lease is held and heartbeated until the end.

Why not httpx or aiohttp: the coordinator and the sim share 2 cores, and the sim must not be
the bottleneck it measures. A minimal HTTP/1.1 client on asyncio streams costs a fraction of
their CPU per request; the request bodies are still built from the shared protocol models.
Heartbeats open a fresh connection by default, as the real agent does (it closes an idle
connection after 5 s; heartbeats come every 10-15 s); ``--heartbeat-conn keep`` keeps one open.
Connections spread over several 127.0.0.x source addresses so ephemeral ports never run out.

Its own full garbage collections are switched off (young ones still run): with thousands of agents
a full pass stops the simulator for hundreds of milliseconds, which would be counted as the
coordinator's heartbeat latency. A run is bounded, so the cyclic garbage it keeps is too.

SIGTERM or SIGINT stops it: it writes ``--out`` (every heartbeat's wall time and latency, probe
arrival times, error counts) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import resource
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mloc_shared.protocol import (
    CompletionRef,
    Gpu,
    HeartbeatRequest,
    Inventory,
    LeaseRef,
    PollRequest,
    PollResponse,
    Progress,
    RegisterRequest,
    RegisterResponse,
)
from mloc_shared.version import PROTOCOL_HEADER, PROTOCOL_VERSION

PROBE_PREFIX = "probe-"


class HttpError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status


class Connection:
    """One HTTP/1.1 keep-alive connection: the sim's whole HTTP client (JSON POSTs only)."""

    def __init__(self, host: str, port: int, source_ip: str | None) -> None:
        self.host, self.port, self.source_ip = host, port, source_ip
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        local = (self.source_ip, 0) if self.source_ip else None
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port, local_addr=local)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def post(self, path: str, body: bytes, headers: str, timeout: float) -> bytes:
        """POST and return the body of a 2xx answer; anything else raises (and drops the connection)."""
        try:
            return await asyncio.wait_for(self._post(path, body, headers), timeout)
        except BaseException:
            self.close()
            raise

    async def _post(self, path: str, body: bytes, headers: str) -> bytes:
        if self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        self._writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{headers}\r\n".encode() + body)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length, chunked, close = 0, False, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        data = await self._read_chunked() if chunked else await self._reader.readexactly(length)
        if close:
            self.close()
        if status >= 300:
            raise HttpError(status, data)
        return data

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        parts = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await self._reader.readexactly(size + 2))
            if size == 0:
                return b"".join(p[:-2] for p in parts)


@dataclass
class Stats:
    """What the fleet saw; written to --out at the end, summarised to --status every second."""

    counts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    heartbeats: list[tuple[float, float]] = field(default_factory=list)  # (wall time sent, ms)
    registers_ms: list[float] = field(default_factory=list)
    probes: dict[str, float] = field(default_factory=dict)  # task id -> wall time the lease arrived

    def error(self, kind: str, exc: BaseException) -> None:
        key = f"{kind}: {type(exc).__name__}" + (f" {exc.status}" if isinstance(exc, HttpError) else "")
        self.errors[key] += 1
        if len(self.error_samples) < 20:
            self.error_samples.append(f"{kind}: {exc!r}"[:300])


class Fleet:
    """The agents of this process and what they share (target, timings, stats, stop flag)."""

    def __init__(self, args: argparse.Namespace) -> None:
        url = urlsplit(args.url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.join_token = args.join_token
        self.prefix = args.prefix
        self.gpus = args.gpus
        self.keep_hb_conn = args.heartbeat_conn == "keep"
        self.sources = [f"127.0.0.{i}" for i in range(2, 2 + args.source_ips)] if args.source_ips else [None]
        self.stats = Stats()
        self.stopping = asyncio.Event()
        self.register_gate = asyncio.Semaphore(args.register_concurrency)
        self.agents: list[SimAgent] = []

    def source(self, i: int) -> str | None:
        return self.sources[i % len(self.sources)]

    def status(self) -> dict[str, Any]:
        return {
            "agents": len(self.agents), "registered": sum(a.agent_id is not None for a in self.agents),
            "polling": sum(a.polling for a in self.agents), "held": sum(len(a.held) for a in self.agents),
            "probes": len(self.stats.probes), "heartbeats": len(self.stats.heartbeats),
            "errors": sum(self.stats.errors.values()), "counts": dict(self.stats.counts),
        }


class SimAgent:
    """One simulated agent: register, hold a poll, heartbeat the leases it holds."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        self.name = f"{fleet.prefix}-{index:05d}"
        self.index = index
        self.agent_id: str | None = None
        self.credential = ""
        self.heartbeat_s = 15.0
        self.poll_hold_s = 25.0
        self.poll_conn = Connection(fleet.host, fleet.port, fleet.source(index))
        self.held: dict[str, int] = {}  # task id -> epoch
        self.done: list[CompletionRef] = []
        self.polling = False
        self._tasks: set[asyncio.Task[None]] = set()

    def _headers(self) -> str:
        auth = f"Authorization: Bearer {self.credential}\r\n" if self.credential else ""
        return f"{PROTOCOL_HEADER}: {PROTOCOL_VERSION}\r\n{auth}"

    async def run(self) -> None:
        try:
            await self.register()
            while not self.fleet.stopping.is_set():
                await self.poll()
        finally:
            for task in self._tasks:
                task.cancel()
            self.poll_conn.close()

    async def register(self) -> None:
        gpus = [Gpu(index=i, uuid=f"GPU-{self.name}-{i}", name="NVIDIA A100-SXM4-80GB", memory_total_mb=81920,
                    compute_capability="8.0", declared=True) for i in range(self.fleet.gpus)]
        req = RegisterRequest(agent_version="sim", name=self.name, inventory=Inventory(
            hostname=self.name, gpus=gpus, gpu_source="declared", cpu_count=16, memory_mb=65536),
            task_types=["command"], max_tasks=max(1, self.fleet.gpus))
        body = req.model_dump_json().encode()
        headers = f"{PROTOCOL_HEADER}: {PROTOCOL_VERSION}\r\nX-MLOC-Join-Token: {self.fleet.join_token}\r\n"
        delay = 0.5
        while not self.fleet.stopping.is_set():
            async with self.fleet.register_gate:
                t0 = time.perf_counter()
                try:
                    raw = await self.poll_conn.post("/api/v1/agents/register", body, headers, 30)
                except (TimeoutError, OSError, asyncio.IncompleteReadError, HttpError) as exc:
                    self.fleet.stats.error("register", exc)
                    raw = None
                else:
                    self.fleet.stats.registers_ms.append((time.perf_counter() - t0) * 1000)
            if raw is not None:
                resp = RegisterResponse.model_validate_json(raw)
                self.agent_id, self.credential = resp.agent_id, resp.credential
                self.heartbeat_s, self.poll_hold_s = resp.timings.heartbeat_s, resp.timings.poll_hold_s
                self.fleet.stats.counts["registered"] += 1
                return
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 10)

    async def poll(self) -> None:
        done, self.done = self.done, []
        # one task per poll (a real agent asks for all its free slots): at the bulk submit of the
        # long tasks every woken agent then takes one, and the fleet ends up one lease per agent
        req = PollRequest(poll_id=uuid.uuid4().hex, free_slots=min(1, max(0, self.fleet.gpus - len(self.held))),
                          running=[LeaseRef(task_id=t, epoch=e) for t, e in self.held.items()], completions=done)
        self.polling = True
        try:
            raw = await self.poll_conn.post("/api/v1/agents/poll", req.model_dump_json().encode(), self._headers(),
                                            self.poll_hold_s + 15)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, HttpError) as exc:
            if self.fleet.stopping.is_set():
                return
            self.fleet.stats.error("poll", exc)
            self.done = done + self.done  # report them again, like the real agent
            await asyncio.sleep(random.uniform(0.25, 0.75))
            return
        finally:
            self.polling = False
        arrived = time.time()
        resp = PollResponse.model_validate_json(raw)
        self.fleet.stats.counts["polls"] += 1
        for lease in resp.leases:
            if str(lease.spec.get("name", "")).startswith(PROBE_PREFIX):
                self.fleet.stats.probes[lease.task_id] = arrived
                self.done.append(CompletionRef(task_id=lease.task_id, epoch=lease.epoch, outcome="succeeded",
                                               exit_code=0))
            elif lease.task_id not in self.held:
                self.held[lease.task_id] = lease.epoch
                self._spawn(self.heartbeat_loop(lease.task_id, lease.epoch))
        for task_id in resp.lost + resp.cancel:
            if self.held.pop(task_id, None) is not None:
                self.fleet.stats.counts["lost"] += 1

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def heartbeat_loop(self, task_id: str, epoch: int) -> None:
        """Renew one lease like the real agent (lease_run.py), from a steady state: phases spread."""
        conn = Connection(self.fleet.host, self.fleet.port, self.fleet.source(self.index + 1))
        step = 0
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.fleet.stopping.wait(), self.heartbeat_s * random.random())
            while task_id in self.held and not self.fleet.stopping.is_set():
                step += 1
                body = HeartbeatRequest(epoch=epoch, progress=Progress(step=step, total=1000, loss=1.0 / step))
                sent, t0 = time.time(), time.perf_counter()
                try:
                    await conn.post(f"/api/v1/leases/{task_id}/heartbeat", body.model_dump_json().encode(),
                                    self._headers(), max(1.0, min(self.heartbeat_s, 10.0)))
                    self.fleet.stats.heartbeats.append((sent, (time.perf_counter() - t0) * 1000))
                except (TimeoutError, OSError, asyncio.IncompleteReadError, HttpError) as exc:
                    if not self.fleet.stopping.is_set():
                        self.fleet.stats.error("heartbeat", exc)
                        if isinstance(exc, HttpError) and exc.status == 409:
                            self.held.pop(task_id, None)
                if not self.fleet.keep_hb_conn:
                    conn.close()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.fleet.stopping.wait(), self.heartbeat_s * random.uniform(0.9, 1.1))
        finally:
            conn.close()


def raise_nofile(wanted: int) -> int:
    """Lift the open-files limit as far as allowed (root may raise the hard limit too)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in ((wanted, max(wanted, hard)), (min(wanted, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def write_status(fleet: Fleet, path: Path) -> None:
    while True:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**fleet.status(), "time": time.time()}))
        tmp.replace(path)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(fleet.stopping.wait(), 1.0)
        if fleet.stopping.is_set():
            return


async def amain(args: argparse.Namespace) -> None:
    fleet = Fleet(args)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, fleet.stopping.set)
    fleet.agents = [SimAgent(fleet, i) for i in range(args.agents)]
    status = asyncio.create_task(write_status(fleet, Path(args.status))) if args.status else None
    runs = [asyncio.create_task(a.run()) for a in fleet.agents]
    await fleet.stopping.wait()
    for task in runs:
        task.cancel()
    await asyncio.gather(*runs, return_exceptions=True)
    if status is not None:
        await status
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    out = {**fleet.status(), "errors_by_kind": dict(fleet.stats.errors), "error_samples": fleet.stats.error_samples,
           "heartbeats": fleet.stats.heartbeats, "registers_ms": fleet.stats.registers_ms,
           "probes": fleet.stats.probes, "cpu_s": cpu.ru_utime + cpu.ru_stime, "max_rss_kb": cpu.ru_maxrss}
    Path(args.out).write_text(json.dumps(out))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="simulated MLOC agents (see the module docstring)")
    ap.add_argument("--url", required=True)
    ap.add_argument("--join-token", required=True)
    ap.add_argument("--agents", type=int, required=True)
    ap.add_argument("--prefix", default=f"sim{os.getpid()}", help="agent names are PREFIX-00000 …")
    ap.add_argument("--gpus", type=int, default=2, help="declared GPUs per agent (= its max tasks)")
    ap.add_argument("--heartbeat-conn", choices=("fresh", "keep"), default="fresh")
    ap.add_argument("--source-ips", type=int, default=8, help="spread over 127.0.0.2.. (0: let the OS pick)")
    ap.add_argument("--register-concurrency", type=int, default=64)
    ap.add_argument("--status", help="a JSON summary rewritten every second")
    ap.add_argument("--out", required=True)
    ap.add_argument("--uvloop", action="store_true", help="use uvloop when it is installed")
    args = ap.parse_args(argv)
    raise_nofile(args.agents * 3 + 1024)
    gc.set_threshold(700, 1, 1_000_000_000)  # young collections only (see the module docstring)
    if args.uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
