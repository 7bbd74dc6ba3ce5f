"""The agent's ``mloc start --node-type worker``: its flags, registered with the shared CLI through
the ``mloc.node_types`` entry point (the shared package never imports this side)."""

from __future__ import annotations

from pathlib import Path

import typer
from mloc_shared.cli.options import CONFIG, JOIN_TOKEN, LOG_LEVEL
from mloc_shared.settings import load_settings

from mloc_agent.main import main as agent_main
from mloc_agent.settings import AgentSettings


def start_agent(
    config: Path | None = CONFIG,
    coordinator_url: str | None = typer.Option(None, help="coordinator URL (MLOC_COORDINATOR_URL)"),
    data_dir: Path | None = typer.Option(None, help="agent state and work dirs (MLOC_DATA_DIR)"),
    join_token: str | None = JOIN_TOKEN,
    name: str | None = typer.Option(None, help="agent name (MLOC_AGENT_NAME)"),
    labels: str | None = typer.Option(None, help="labels k=v,k=v (MLOC_AGENT_LABELS)"),
    log_level: str | None = LOG_LEVEL,
) -> None:
    """Start an agent: long-polls the coordinator, leases GPUs, runs tasks in child processes."""
    agent_main(load_settings(AgentSettings, config, coordinator_url=coordinator_url, data_dir=data_dir,
                             join_token=join_token, agent_name=name, agent_labels=labels, log_level=log_level))
