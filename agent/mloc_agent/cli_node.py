"""The agent's ``mloc start --node-type worker``: its flags, registered with the shared CLI through
the ``mloc.node_types`` entry point (the shared package never imports this side)."""

from __future__ import annotations

from pathlib import Path

import typer
from mloc_shared.cli.options import CONFIG, JOIN_TOKEN, LOG_LEVEL
from mloc_shared.settings import load_settings

from mloc_agent.main import main as agent_main
from mloc_agent.secret_handover import as_settings, reexec_without_secrets, take_handover
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
    flags = {"coordinator_url": coordinator_url, "data_dir": data_dir, "join_token": join_token, "agent_name": name,
             "agent_labels": labels, "log_level": log_level}
    # variables the image before this one took out of the environment rank as variables: below the flags
    handed = as_settings(take_handover(), set(AgentSettings.model_fields))
    settings = load_settings(AgentSettings, config, **{**handed, **{k: v for k, v in flags.items() if v is not None}})
    reexec_without_secrets()  # once the settings are known good; returns when no secret is left in os.environ
    agent_main(settings)
