"""Running the coordinator: logging, TLS, and the aiohttp runner."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl

from aiohttp import web
from mloc_shared.logging_setup import setup_logging

from mloc_server.app import create_app
from mloc_server.settings import CoordinatorSettings
from mloc_server.state import STATE

# Garbage collection with thousands of agents connected. Each held poll is ~100 tracked objects
# that live ~20 s, so they all age through CPython's generations: a full (generation 2) pass costs
# ~0.8 µs per live object (over a second at 10,000 agents, ~1.4 M objects) and, with the default
# thresholds, ran every ~25 s; a generation-1 pass scanned ten young passes' survivors at once
# (50-150 ms every few seconds at 5,000 agents). Both showed up as heartbeat latency. Now the
# middle generation is collected with every young pass (each one small), and a full pass waits
# for 20,000 of those (tens of minutes). Little garbage needs the full pass: reference cycles that
# survived two young passes (~50 objects a second at 5,000 agents).
GC_THRESHOLDS = (700, 1, 20_000)


async def serve(settings: CoordinatorSettings) -> None:
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    ssl_ctx = None
    if settings.tls_cert and settings.tls_key:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=ssl_ctx, backlog=4096,
                       reuse_address=True)
    await site.start()
    gc.collect()
    gc.freeze()  # what start-up built (modules, the app, the state loaded from SQLite) is never scanned again
    gc.set_threshold(*GC_THRESHOLDS)
    scheme = "https" if ssl_ctx else "http"
    logging.getLogger("mloc.coordinator").info(
        "coordinator listening on %s://%s:%d (database %s)", scheme, settings.host, settings.port,
        settings.database_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    state = app.get(STATE)
    if state is not None:  # held polls and log streams would otherwise delay the stop by a poll hold
        state.polling.release()
        state.logs.release_followers()
    await runner.cleanup()


def main(settings: CoordinatorSettings) -> None:
    setup_logging(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))
