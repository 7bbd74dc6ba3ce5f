"""The coordinator's ``mloc start --node-type orchestrator``: its flags, registered with the shared
CLI through the ``mloc.node_types`` entry point (the shared package never imports this side)."""

from __future__ import annotations

from pathlib import Path

import typer
from mloc_shared.cli.options import CONFIG, JOIN_TOKEN, LOG_LEVEL
from mloc_shared.settings import load_settings

from mloc_server.serve import main as serve_main
from mloc_server.settings import CoordinatorSettings


def start_coordinator(
    config: Path | None = CONFIG,
    host: str | None = typer.Option(None, help="listen address (MLOC_HOST)"),
    port: int | None = typer.Option(None, help="listen port (MLOC_PORT)"),
    data_dir: Path | None = typer.Option(None, help="SQLite file and artifacts (MLOC_DATA_DIR)"),
    join_token: str | None = JOIN_TOKEN,
    log_level: str | None = LOG_LEVEL,
) -> None:
    """Start a coordinator: REST API, scheduler, leases, status page."""
    serve_main(load_settings(CoordinatorSettings, config, host=host, port=port, data_dir=data_dir,
                             join_token=join_token, log_level=log_level))
