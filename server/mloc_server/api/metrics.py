"""Prometheus ``/metrics``: fleet state read at scrape time, agent-call latencies timed as served.

State (tasks, agents, GPUs, leases) is read when scraped, from the in-memory mirror plus one
``GROUP BY`` query, so the hot paths pay nothing for it. Poll and heartbeat latencies are timed
by a middleware that looks only at the agent protocol's routes. Task durations are read from the
tasks that reached a final state since the previous scrape. Every series is per coordinator
process (one registry per app), so tests can run several coordinators in one process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from mloc_server.api.common import state, user
from mloc_server.services.overview import AGENT_STATES, finished_tasks, fleet_counts, task_counts
from mloc_server.state import AppState

routes = web.RouteTableDef()
TASK_STATES = ("blocked", "queued", "running", "succeeded", "failed", "cancelled")
# the agent protocol's routes, by canonical path: only these are timed
CALLS = {
    "/api/v1/agents/poll": "poll",
    "/api/v1/leases/{task_id}/heartbeat": "heartbeat",
    "/api/v1/agents/register": "register",
    "/api/v1/leases/{task_id}/complete": "complete",
    "/api/v1/agents/completions": "complete",
    "/api/v1/leases/{task_id}/logs": "logs",
}
# a poll is held up to poll_hold_s (25 s by default) when there is no work: the upper buckets see that
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
DURATION_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600, 72 * 3600)
COUNTERS = {
    "leases_granted": ("mloc_leases_granted", "Leases handed to agents"),
    "handoffs": ("mloc_handoffs", "Leases claimed by the submit's own commit for an agent holding a poll"),
    "leases_expired": ("mloc_leases_expired", "Leases lost (no heartbeat within the TTL, or the agent restarted)"),
    "tasks_finished": ("mloc_tasks_finished", "Completions recorded"),
    "polls": ("mloc_agent_polls", "Long polls received"),
    "heartbeats": ("mloc_heartbeats", "Heartbeats received"),
    "preemptions_requested": ("mloc_preemptions_requested",
                              "Running tasks asked to checkpoint and stop (preemption, a drain with a deadline)"),
    "preemptions": ("mloc_preemptions", "Attempts that ended preempted and were queued again"),
}


class _Snapshot(Collector):
    """Yields the families built by the last refresh (collect() is sync; the refresh needs the database)."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return list(self.families)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.calls = Histogram("mloc_agent_call_duration_seconds",
                               "Agent protocol calls as the coordinator served them (a poll includes its hold)",
                               ["call"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._timers = {call: self.calls.labels(call) for call in set(CALLS.values())}
        self.task_durations = Histogram("mloc_task_duration_seconds",
                                        "Tasks that reached a final state: first start to end (0 if never started)",
                                        ["task_type", "state"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.snapshot = _Snapshot()
        self.registry.register(self.snapshot)
        self._finished_after = time.time()
        self._lock = asyncio.Lock()

    def observe(self, call: str, seconds: float) -> None:
        self._timers[call].observe(seconds)

    async def render(self, st: AppState, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format the scraper asked for (Prometheus text or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept or "")
        async with self._lock:  # two scrapers at once must not count a finished task twice
            await self._refresh(st)
            return encoder(self.registry), content_type

    async def _refresh(self, st: AppState) -> None:
        by_state = await task_counts(st.db)
        while finished := await finished_tasks(st.db, self._finished_after):
            for t in finished:
                took = (t.finished_at - t.started_at) if t.started_at is not None else 0.0
                self.task_durations.labels(t.task_type, t.state).observe(max(0.0, took))
            self._finished_after = finished[-1].finished_at
        counts = fleet_counts(st.fleet, st.settings.poll_hold_s)
        tasks = GaugeMetricFamily("mloc_tasks", "Tasks by state (queued = the queue's depth)", labels=["state"])
        for name in TASK_STATES:
            tasks.add_metric([name], by_state.get(name, 0))
        agents = GaugeMetricFamily("mloc_agents", "Registered agents by state", labels=["state"])
        for name in AGENT_STATES:
            agents.add_metric([name], counts.agents[name])
        gpus = GaugeMetricFamily("mloc_gpus", "GPUs: used (leased), free (on an agent taking work), unavailable",
                                 labels=["state"])
        for name, value in (("used", counts.gpus_used), ("free", counts.gpus_free),
                            ("unavailable", counts.gpus_unavailable)):
            gpus.add_metric([name], value)
        families: list[Metric] = [tasks, agents, gpus,
                                  GaugeMetricFamily("mloc_leases_active", "Leases held now", value=counts.leases)]
        for key, (name, doc) in COUNTERS.items():
            families.append(CounterMetricFamily(name, doc, value=st.fleet.counters.get(key, 0)))
        families.append(GaugeMetricFamily("mloc_uptime_seconds", "Seconds since this coordinator started",
                                          value=time.time() - st.started_at))
        self.snapshot.families = families


METRICS = web.AppKey("mloc_metrics", Metrics)


@web.middleware
async def time_agent_calls(request: web.Request, handler) -> web.StreamResponse:
    route = request.match_info.route
    call = CALLS.get(route.resource.canonical) if route.resource is not None else None
    if call is None:
        return await handler(request)
    start = time.perf_counter()
    try:
        return await handler(request)
    finally:
        request.app[METRICS].observe(call, time.perf_counter() - start)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Needs a token like the API (Prometheus: ``authorization: {credentials: <token>}``), or loopback where
    MLOC_LOOPBACK_ADMIN is turned on."""
    user(request)
    body, content_type = await request.app[METRICS].render(state(request), request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


def install(app: web.Application) -> None:
    """Add /metrics and the timing middleware to the coordinator's app."""
    disable_created_metrics()  # no *_created series: they double the output and no dashboard reads them
    app[METRICS] = Metrics()
    app.middlewares.append(time_agent_calls)
    app.add_routes(routes)
