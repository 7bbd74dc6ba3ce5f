"""Flags that more than one ``mloc`` command takes, declared once so they read the same everywhere.

The node types (``mloc_server.cli_node``, ``mloc_agent.cli_node``) reuse the ``start`` ones.
"""

from __future__ import annotations

import typer

CONFIG = typer.Option(None, "--config", "-c", help="YAML settings file (or MLOC_CONFIG)")
JOIN_TOKEN = typer.Option(None, help="join token (MLOC_JOIN_TOKEN)")
LOG_LEVEL = typer.Option(None, help="MLOC_LOG_LEVEL")
