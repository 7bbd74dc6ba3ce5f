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

    tls_cert: Path | None = None
    tls_key: Path | None = None

    # scheduling: named priority classes, and the one a task without ``priority_class`` gets
    priority_classes: dict[str, PriorityClass] = Field(default_factory=lambda: dict(DEFAULT_PRIORITY_CLASSES))
    default_priority_class: str = "normal"

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
