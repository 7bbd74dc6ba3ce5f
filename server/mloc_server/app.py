"""The coordinator's app factory and its lifecycle (open the database, load state, run the reaper)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from mloc_server.api import agents as agents_api
from mloc_server.api import artifacts as artifacts_api
from mloc_server.api import metrics as metrics_api
from mloc_server.api import mirror as mirror_api
from mloc_server.api import openapi as openapi_api
from mloc_server.api import pages as pages_api
from mloc_server.api import pipelines as pipelines_api
from mloc_server.api import queue as queue_api
from mloc_server.api import secrets as secrets_api
from mloc_server.api import system as system_api
from mloc_server.api import tasks as tasks_api
from mloc_server.api.middleware import errors
from mloc_server.artifacts.base import ArtifactStore
from mloc_server.artifacts.local import LocalStore
from mloc_server.clock import Clock, SystemClock
from mloc_server.services.agents import Agents
from mloc_server.services.artifacts import Artifacts
from mloc_server.services.auth import Auth
from mloc_server.services.dependencies import Dependencies
from mloc_server.services.fairshare import FairShare, SharePolicy
from mloc_server.services.fleet import Fleet
from mloc_server.services.gangs import Gangs
from mloc_server.services.leasing import Leasing
from mloc_server.services.logs import Logs
from mloc_server.services.mirror import Mirror
from mloc_server.services.pipelines import Pipelines
from mloc_server.services.polling import Polling
from mloc_server.services.queue_admin import QueueAdmin
from mloc_server.services.quotas import Quotas
from mloc_server.services.reaper import Reaper
from mloc_server.services.recovery import load_state
from mloc_server.services.registration import Registration
from mloc_server.services.secrets import TaskSecrets
from mloc_server.services.tasks import Tasks
from mloc_server.settings import CoordinatorSettings
from mloc_server.state import STATE, AppState
from mloc_server.store import SqliteStore

log = logging.getLogger("mloc.coordinator")


def make_store(settings: CoordinatorSettings) -> ArtifactStore:
    if settings.s3_bucket:
        from mloc_server.artifacts.s3 import S3Store

        return S3Store(
            settings.s3_bucket, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
            access_key_id=settings.s3_access_key_id, secret_access_key=settings.s3_secret_access_key,
            prefix=settings.s3_prefix, multipart_threshold=settings.multipart_threshold_mb << 20,
            part_size=settings.multipart_part_mb << 20, expiry_s=settings.presign_expiry_s,
        )
    return LocalStore(settings.data_dir / "artifacts", settings.data_dir / "blob.key", settings.presign_expiry_s)


def create_app(settings: CoordinatorSettings, clock: Clock | None = None) -> web.Application:
    """The coordinator's app; ``clock`` is the real one unless a test brings its own."""
    app = web.Application(middlewares=[errors], client_max_size=int(settings.max_body_mb * (1 << 20)))
    app.add_routes(tasks_api.routes)
    app.add_routes(pipelines_api.routes)
    app.add_routes(agents_api.routes)
    app.add_routes(artifacts_api.routes)
    app.add_routes(system_api.routes)
    app.add_routes(secrets_api.routes)
    app.add_routes(queue_api.routes)
    app.add_routes(mirror_api.routes)
    app.add_routes(pages_api.routes)
    metrics_api.install(app)
    app.add_routes(openapi_api.routes)
    app.cleanup_ctx.append(lambda app: _lifecycle(app, settings, clock or SystemClock()))
    return app


async def open_state(settings: CoordinatorSettings, clock: Clock, resources: contextlib.AsyncExitStack) -> AppState:
    """Open the database and build every service on it from explicit dependencies, the fleet loaded
    from SQLite. ``resources`` closes what was opened (the last progress flushed first). Starts no
    background work: in-process tests build this same state on a ManualClock and run the reaper's
    passes themselves."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new data dir is its owner's alone
    if settings.redis_url:
        log.warning("MLOC_REDIS_URL is set but MLOC has no Redis any more: the coordinator keeps its "
                    "state in SQLite (%s); the setting is ignored", settings.database_path)
    db = SqliteStore.at(settings.database_path, settings.db_synchronous)
    await db.open()
    resources.push_async_callback(db.close)
    store = make_store(settings)
    resources.push_async_callback(store.close)
    auth = Auth(db, settings.loopback_admin, clock)
    await auth.load()
    fleet = Fleet(SharePolicy(FairShare(settings.fair_share, clock), Quotas(settings.quotas)))
    leasing = Leasing(db, fleet, settings, clock, resume_url=store.download_url)
    Gangs(db, fleet, leasing, settings, clock)  # sets itself on leasing (tasks on several agents)
    await load_state(db, fleet, leasing, settings, clock)
    deps = Dependencies(db, fleet, leasing, clock)  # hooks itself on leasing's task ends
    await deps.settle_all()
    secrets = TaskSecrets(db, leasing, settings.data_dir / "secrets.key")
    await secrets.load()
    agents = Agents(db, fleet, settings, clock)
    tasks = Tasks(db, fleet, leasing, secrets, clock)
    st = AppState(
        settings=settings, db=db, auth=auth, fleet=fleet, leasing=leasing,
        polling=Polling(fleet, leasing, settings, clock), tasks=tasks,
        agents=agents, registration=Registration(db, agents, auth, clock, settings.registration_refusals_per_min),
        reaper=Reaper(db, fleet, leasing, settings, clock),
        artifacts=Artifacts(db, leasing, store, int(settings.max_artifact_gb * (1 << 30))), logs=Logs(db, leasing),
        secrets=secrets, artifact_store=store, started_at=clock.time(), clock=clock,
        queue_admin=QueueAdmin(db, fleet, leasing, settings, clock),
        mirror=Mirror(db, leasing, store, clock, settings.model_mirror, int(settings.max_artifact_gb * (1 << 30))),
        dependencies=deps, pipelines=Pipelines(tasks),
    )
    resources.push_async_callback(_flush_quietly, st.reaper)  # runs before the database closes
    return st


async def _flush_quietly(reaper: Reaper) -> None:
    with contextlib.suppress(Exception):  # stopping: the next start reloads what SQLite holds
        await reaper.flush()


async def _lifecycle(app: web.Application, settings: CoordinatorSettings, clock: Clock) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as resources:
        st = await open_state(settings, clock, resources)
        app[STATE] = st
        await _bootstrap_tokens(st)
        reaping = asyncio.create_task(st.reaper.run(), name="mloc-reaper")
        try:
            yield
        finally:
            reaping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaping


async def _bootstrap_tokens(st: AppState) -> None:
    """A join token and an admin token always exist; a first-start join token is printed once (agents
    need it on other hosts), a first-start admin token only has its file named."""
    s = st.settings
    if s.join_token:
        await st.auth.ensure_known("join", s.join_token)
    else:
        path = s.data_dir / "join.token"
        fresh = not path.exists()
        secret = await st.auth.bootstrap_secret("join", path)
        if fresh:
            log.warning("created a join token for agents (kept in %s): %s", path, secret)
        else:
            log.info("agents join with the token in %s", path)
    if s.admin_token:
        await st.auth.ensure_known("user", s.admin_token, user="admin", role="admin")
    else:
        path = s.data_dir / "admin.token"
        fresh = not path.exists()
        await st.auth.bootstrap_secret("user", path, user="admin", role="admin")
        if fresh:  # its path, never the token: logs are read by more people than the data dir
            log.warning("created an admin API token in %s (mode 0600); the mloc CLI on this host reads it, "
                        "curl sends it with -H \"Authorization: Bearer $(cat %s)\"", path, path)
