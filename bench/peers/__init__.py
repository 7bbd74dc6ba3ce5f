"""The systems ``python -m bench.compare`` runs side by side, and how each one is installed.

Stdlib only: this package is imported both by the driver (MLOC's venv) and by each runner, which
runs inside its peer's own venv under ``bench/.peers/<name>`` (so the peers' dependencies never
touch MLOC's environment, nor each other's).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Peer:
    """One system under test: what to install, which runner module measures it, and its N."""

    name: str
    label: str
    runner: str  # module run with ``python -m`` from the repo root
    requirements: tuple[str, ...] = ()  # pip specs, pinned: a rerun measures the same thing
    debian: tuple[str, ...] = ()  # apt packages it needs (the Redis server)
    setup: str = ""  # how it runs, for the table's notes
    latency_n: int | None = None  # None: the command line's N; smaller for slow peers
    throughput_n: int | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def in_own_venv(self) -> bool:
        return bool(self.requirements)


MLOC = Peer(
    name="mloc", label="MLOC", runner="bench.peers.mloc_peer",
    setup="coordinator (SQLite WAL) + 2 agent processes x 32 slots; each task is a child process",
)

PEERS: dict[str, Peer] = {p.name: p for p in (
    MLOC,
    Peer(name="ray", label="Ray tasks", runner="bench.peers.ray_peer", requirements=("ray==2.60.0",),
         setup="local ray.init(num_cpus=2); a task is a call in a pooled worker process"),
    Peer(name="celery", label="Celery + Redis", runner="bench.peers.celery_peer",
         requirements=("celery[redis]==5.7.0", "redis==8.1.0", "packaging==26.3"), debian=("redis-server",),
         setup="redis-server on loopback; worker -P prefork -c 2; Redis result backend"),
    Peer(name="huey", label="Huey + SQLite", runner="bench.peers.huey_peer", requirements=("huey==3.5.4",),
         setup="SqliteHuey; consumer -k process -w 2 (default polling: -d 0.1 s, backoff to 10 s)"),
    Peer(name="prefect", label="Prefect server + process worker", runner="bench.peers.prefect_peer",
         requirements=("prefect==3.9.1",), latency_n=20, throughput_n=50,
         setup="prefect server (SQLite) + a process work pool; each flow run is a new Python process; "
               "worker polls every 1 s (PREFECT_WORKER_QUERY_SECONDS, default 10)"),
)}
