"""The coordinator's typed application state (one object, stored under an aiohttp AppKey)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from mloc_server.artifacts.base import ArtifactStore
from mloc_server.clock import Clock
from mloc_server.services.agents import Agents
from mloc_server.services.artifacts import Artifacts
from mloc_server.services.auth import Auth
from mloc_server.services.dependencies import Dependencies
from mloc_server.services.fleet import Fleet
from mloc_server.services.leasing import Leasing
from mloc_server.services.logs import Logs
from mloc_server.services.mirror import Mirror
from mloc_server.services.pipelines import Pipelines
from mloc_server.services.polling import Polling
from mloc_server.services.queue_admin import QueueAdmin
from mloc_server.services.reaper import Reaper
from mloc_server.services.registration import Registration
from mloc_server.services.secrets import TaskSecrets
from mloc_server.services.tasks import Tasks
from mloc_server.settings import CoordinatorSettings
from mloc_server.store import Store


@dataclass
class AppState:
    settings: CoordinatorSettings
    db: Store
    auth: Auth
    fleet: Fleet
    leasing: Leasing
    polling: Polling
    reaper: Reaper
    tasks: Tasks
    agents: Agents
    registration: Registration  # who may register what (join tokens, credentials, the rate limit)
    artifacts: Artifacts
    logs: Logs
    secrets: TaskSecrets
    artifact_store: ArtifactStore  # blobs (local disk or S3); services.artifacts.Artifacts is the logic
    started_at: float
    clock: Clock  # every service reads the time from it (tests pass a ManualClock)
    queue_admin: QueueAdmin  # the queue's listing with reasons, priority changes
    mirror: Mirror  # hub snapshots in the artifact store (docs/models.md)
    dependencies: Dependencies  # blocked tasks: released or cancelled as the tasks they wait on end
    pipelines: Pipelines  # pipeline files and sweeps: many tasks under one id


STATE = web.AppKey("mloc_state", AppState)
