"""The agent's settings: one object, built once (flags > MLOC_* > YAML > defaults)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from mloc_shared.settings import MlocSettings, parse_labels
from pydantic import BaseModel, Field, field_validator
from pydantic_settings import NoDecode

from mloc_agent.modules.sources.path_policy import default_roots


class DeclaredGpu(BaseModel):
    """A GPU declared in config (tests, demos, boxes without NVML): reported as declared."""

    name: str
    memory_gb: float = Field(gt=0)
    compute_capability: str = "8.0"
    uuid: str | None = None


class AgentSettings(MlocSettings):
    coordinator_url: str = "http://127.0.0.1:8000"
    join_token: str | None = None
    agent_name: str = Field(default_factory=socket.gethostname)
    agent_labels: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    declared_gpus: list[DeclaredGpu] | None = None
    data_dir: Path = Path.home() / ".mloc" / "agent"
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    max_tasks: int | None = Field(None, ge=1, le=1024)
    disabled_task_types: Annotated[list[str], NoDecode] = Field(default_factory=list)
    runtimes: dict[str, str] = Field(default_factory=dict)  # task type -> python interpreter
    ca_bundle: str | None = None
    cancel_grace_s: float = Field(10.0, ge=0)
    # SIGTERM with notice (a spot reclaim, a reboot): running tasks checkpoint within this many seconds and
    # their leases are released at once (they resume elsewhere); 0: they finish here first (docs/operations.md)
    stop_deadline_s: float = Field(0.0, ge=0, le=86400)
    log_flush_s: float = Field(0.5, gt=0)
    allow_private_urls: bool = False  # task URLs may reach loopback, link-local and private addresses
    task_path_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)  # besides datasets/, models/
    # gangs (docs/gangs.md): which agents reach each other (unset: the label ``network``, else the address
    # the coordinator sees this agent's polls come from), and the LAN address its ranks listen on
    network: str | None = None
    lan_address: str | None = None
    # image: tasks (containers.py): the runtime whose CLI runs them; None: this agent takes none
    container_runtime: Literal["podman", "docker"] | None = None
    container_pids_limit: int = Field(8192, ge=64)
    container_args: Annotated[list[str], NoDecode] = Field(default_factory=list)  # e.g. --memory=64g --cpus=16
    # warm runtimes (docs/warm-starts.md): hosted Python tasks fork from a template that imported their libraries;
    # lazy: a runtime's template starts with its first hosted task (which starts cold), eager: at agent start
    warm_runtimes: bool = True
    warm_start: Literal["lazy", "eager"] = "lazy"

    @field_validator("agent_labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> dict[str, str]:
        return parse_labels(value)

    @field_validator("disabled_task_types", mode="before")
    @classmethod
    def _types(cls, value: Any) -> list[str]:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return list(value or [])

    @field_validator("container_args", mode="before")
    @classmethod
    def _container_args(cls, value: Any) -> list[str]:
        if isinstance(value, str):
            return value.split()
        return list(value or [])

    @field_validator("task_path_roots", mode="before")
    @classmethod
    def _roots(cls, value: Any) -> list[str]:
        if isinstance(value, str):
            return [p for p in value.split(os.pathsep) if p.strip()]
        return list(value or [])

    @property
    def state_file(self) -> Path:
        return self.data_dir / "agent.json"

    @property
    def task_read_roots(self) -> list[Path]:
        """The folders whose files tasks may name (modules/sources/path_policy.py)."""
        return default_roots(self.data_dir, (p.expanduser() for p in self.task_path_roots))
