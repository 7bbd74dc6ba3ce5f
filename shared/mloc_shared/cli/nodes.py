"""The node types ``mloc start`` can start, found through the ``mloc.node_types`` entry-point group.

Each side registers a typer command function that owns its flags (mloc-server the orchestrator,
mloc-agent the worker), so the shared CLI starts either without importing the other, and a box
with one side installed never needs the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:  # typer >= 0.29 carries its own click; the name is only an annotation here
    import click

ENTRY_POINT_GROUP = "mloc.node_types"


@dataclass(frozen=True)
class KnownNodeType:
    """What to tell a user whose box lacks the side a node type needs."""

    role: str
    package: str
    source: str  # the package's folder in a checkout


KNOWN: dict[str, KnownNodeType] = {
    "orchestrator": KnownNodeType("the coordinator", "mloc-server", "./server"),
    "worker": KnownNodeType("the agent", "mloc-agent", "./agent"),
}
ALIASES = {"coordinator": "orchestrator", "server": "orchestrator", "agent": "worker"}


class NodeTypeUnavailable(Exception):
    """The node type is unknown, or the package that provides it is not installed here."""


def canonical(name: str) -> str:
    name = name.lower()
    return ALIASES.get(name, name)


def names(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """The known node types first, then any other a package registers."""
    return list(dict.fromkeys([*KNOWN, *(ep.name for ep in entry_points(group=group))]))


def installed(name: str, group: str = ENTRY_POINT_GROUP) -> bool:
    return bool(entry_points(group=group, name=name))


def command(name: str, group: str = ENTRY_POINT_GROUP) -> click.Command:
    """The click command that starts node type ``name`` (already canonical), with its own flags."""
    found = entry_points(group=group, name=name)
    if not found:
        known = KNOWN.get(name)
        if known is None:
            raise NodeTypeUnavailable(f"--node-type must be {' or '.join(names(group))}, not {name!r}")
        raise NodeTypeUnavailable(f"{known.role} is not installed here: install the {known.package} package "
                                  f"(pip install {known.source})")
    start: Any = next(iter(found)).load()
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(start)
    return typer.main.get_command(app)
