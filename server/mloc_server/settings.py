"""The coordinator's settings: one object, built once (flags > MLOC_* > YAML > defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from mloc_shared.settings import MlocSettings
from pydantic import BaseModel, ConfigDict, Field, model_validator


class PriorityClass(BaseModel):
    """A named priority (docs/scheduling.md): tasks of a higher class go first, and may preempt
    running tasks of a lower, preemptible one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    priority: int = Field(ge=-1_000_000, le=1_000_000)
    preemptible: bool = False


DEFAULT_PRIORITY_CLASSES: dict[str, PriorityClass] = {
    "low": PriorityClass(priority=-100, preemptible=True),
    "normal": PriorityClass(priority=0),
    "high": PriorityClass(priority=100),
}


class FairShareSettings(BaseModel):
    """Fair share between users, and teams when weights for teams are given (docs/fairshare.md).

    Usage is GPU-hours decayed with a half-life (Slurm's fair-share); an owner's share is its weight
    over the weights of the owners with work queued or running. Missing names weigh 1.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    users: dict[str, float] = Field(default_factory=dict)
    teams: dict[str, float] = Field(default_factory=dict)
    # order by team first, then by user within it: on when teams are given weights
    by_team: bool | None = None
    half_life_s: float = Field(86400.0, gt=0)
    # a running lease counts as if it had already run this long more: two owners' running counts
    # balance at once, before their decayed usage has had time to differ
    running_charge_s: float = Field(600.0, ge=0)
    # what a running task that asks for no GPU counts as, in GPUs
    no_gpu_charge: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _weights_positive(self) -> FairShareSettings:
        for kind, weights in (("users", self.users), ("teams", self.teams)):
            bad = [n for n, w in weights.items() if not w > 0]
            if bad:
                raise ValueError(f"fair_share.{kind}.{bad[0]}: a weight must be above 0")
        return self

    @property
    def teams_on(self) -> bool:
        return bool(self.teams) if self.by_team is None else self.by_team


class Quota(BaseModel):
    """Limits of one user or team; None: no limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_gpus: int | None = Field(None, ge=0)  # GPUs held by running tasks at once
    max_queued: int | None = Field(None, ge=0)  # tasks queued at once


class QuotaSettings(BaseModel):
    """Per-user and per-team quotas; ``default`` applies to a user with no entry of its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: Quota = Field(default_factory=Quota)
    users: dict[str, Quota] = Field(default_factory=dict)
    teams: dict[str, Quota] = Field(default_factory=dict)


class CoordinatorSettings(MlocSettings):
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    data_dir: Path = Path.home() / ".mloc" / "coordinator"
    database_url: str | None = None
    # normal: an acknowledged write survives a killed coordinator, not an OS crash of the host (the
    # last commits not yet written back); full: it is on disk before the answer, at ~2x the latency
    db_synchronous: Literal["full", "normal"] = "normal"
    join_token: str | None = None
    admin_token: str | None = None

    # timings handed to agents
    poll_hold_s: float = Field(25.0, gt=0, le=300)
    heartbeat_s: float = Field(10.0, gt=0, le=600)
    lease_ttl_s: float = Field(45.0, gt=0, le=3600)
    restart_grace_s: float = Field(60.0, ge=0, le=3600)
    # how long a forming gang may hold the agents it reserved before it lets them go (docs/gangs.md);
    # each window that ends unfilled doubles the next one, up to 16 times this
    gang_reserve_s: float = Field(120.0, gt=0, le=86400)

    # opt-in (single-user hosts): token-less requests from 127.0.0.1/::1 with no proxy header act as admin
    loopback_admin: bool = False
    # refused registrations (bad join token, a known name) one client address may make in a minute, also
    # its burst; then 429 with Retry-After. Behind a TLS proxy every agent shares the proxy's address
    registration_refusals_per_min: int = Field(10, ge=1, le=1_000_000)
    max_body_mb: float = Field(4.0, gt=0, le=1024)
    max_artifact_gb: float = Field(200.0, gt=0)

    # object store (S3-compatible); without a bucket, artifacts live in data_dir/artifacts
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_prefix: str = "mloc/"
    multipart_threshold_mb: int = Field(64, ge=5)
    multipart_part_mb: int = Field(64, ge=5)
    presign_expiry_s: int = Field(3600, ge=60)
    # the model and dataset mirror (docs/models.md): fallback = agents use the hub when they reach it,
    # the mirrored copy when not; first = the mirrored copy whenever there is one; off = never
    model_mirror: Literal["fallback", "first", "off"] = "fallback"

    tls_cert: Path | None = None
    tls_key: Path | None = None

    # scheduling: named priority classes, and the one a task without ``priority_class`` gets
    priority_classes: dict[str, PriorityClass] = Field(default_factory=lambda: dict(DEFAULT_PRIORITY_CLASSES))
    default_priority_class: str = "normal"
    # preemption (docs/scheduling.md): the grace a preempted task gets to checkpoint and exit; how long
    # an attempt runs before it may be preempted; how often one task may be preempted in an hour
    preempt_grace_s: float = Field(120.0, ge=0, le=86400)
    preempt_min_runtime_s: float = Field(300.0, ge=0, le=86400)
    preempt_max_per_hour: int = Field(2, ge=0, le=1000)
    fair_share: FairShareSettings = Field(default_factory=FairShareSettings)
    quotas: QuotaSettings = Field(default_factory=QuotaSettings)

    redis_url: str | None = None  # from the old design: warned about, never used

    @model_validator(mode="after")
    def _timings_make_sense(self) -> CoordinatorSettings:
        if self.heartbeat_s * 2 > self.lease_ttl_s:
            raise ValueError(
                f"lease_ttl_s ({self.lease_ttl_s}) must be at least twice heartbeat_s ({self.heartbeat_s}) "
                "so one lost heartbeat does not expire a lease"
            )
        if self.default_priority_class not in self.priority_classes:
            raise ValueError(f"default_priority_class {self.default_priority_class!r} is not one of "
                             f"priority_classes ({', '.join(sorted(self.priority_classes))})")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        return self

    @property
    def database_path(self) -> str:
        from mloc_server.store.database import sqlite_path_from_url

        if self.database_url:
            return sqlite_path_from_url(self.database_url)
        return str(self.data_dir / "mloc.db")
